import Foundation

/// A task to put on the queue.
public struct QueuedTask: Sendable, Hashable {
    /// The task.
    public var id: TaskID
    /// Its priority; higher is served first.
    public var priority: Int
    /// The task's input when it is small enough to travel in the message (see
    /// ``ClientConfiguration/inlinePayloadLimit``); `nil` when it is in the payload store.
    public var payload: [UInt8]?

    /// Creates a queue entry.
    public init(id: TaskID, priority: Int, payload: [UInt8]? = nil) {
        self.id = id
        self.priority = priority
        self.payload = payload
    }
}

/// A message leased from the queue: hidden from other consumers until it expires, is extended,
/// acknowledged or released.
public struct Lease: Sendable, Hashable {
    /// The task the message carries.
    public var id: TaskID
    /// The priority it was enqueued with.
    public var priority: Int
    /// The inline input, if the message carries one.
    public var payload: [UInt8]?
    /// The backend's receipt for this delivery (SQS receipt handle, a row token, …). Opaque to the kernel.
    public var handle: String
    /// How many times the message has been delivered, this delivery included.
    public var deliveryCount: Int

    /// Creates a lease.
    public init(id: TaskID, priority: Int, payload: [UInt8]?, handle: String, deliveryCount: Int) {
        self.id = id
        self.priority = priority
        self.payload = payload
        self.handle = handle
        self.deliveryCount = deliveryCount
    }
}

/// Which end of the priority range a lease call serves first.
///
/// The agent asks for ``lowestFirst`` on a configurable share of its calls, which keeps a steady
/// stream of high-priority work from starving lower priorities (see ``AgentConfiguration/starvationGuard``).
public enum PriorityOrder: Sendable, Hashable {
    /// Higher priorities first (the normal order).
    case highestFirst
    /// Lower priorities first.
    case lowestFirst
}

/// How many messages wait and how many are leased, for one priority.
public struct QueueDepth: Sendable, Hashable, Codable {
    /// Messages visible to consumers.
    public var waiting: Int
    /// Messages leased and not yet acknowledged.
    public var inFlight: Int

    /// Creates a depth.
    public init(waiting: Int, inFlight: Int) {
        self.waiting = waiting
        self.inFlight = inFlight
    }
}

/// An at-least-once task queue with leases (SQS-style visibility).
///
/// The queue is a delivery hint; the ``StateStore`` is the truth. The engine claims a task in the state
/// store after leasing its message, so duplicate deliveries are harmless, and it acknowledges a message
/// only once the task is terminal, so a message is never lost while its task still needs to run.
///
/// Implementing: every method works on batches; make each one a single round trip or transaction where
/// the technology allows. Run ``QueueConformance`` (module `GridKernelConformance`) against the backend.
public protocol TaskQueue: Sendable {
    /// Adds tasks to the queue, each with its own priority. All or nothing is not required, but a
    /// call that returns has enqueued every task.
    ///
    /// - Throws: ``GridError/Code/unavailable`` when the backend cannot be reached;
    ///   ``GridError/Code/payloadTooLarge`` when an inline payload exceeds the backend's message limit.
    func enqueue(_ tasks: [QueuedTask]) async throws

    /// Leases up to `max` visible messages for `duration`, in priority order, FIFO within a priority.
    ///
    /// A leased message is invisible to other consumers until the lease expires, after which it is
    /// delivered again with a higher ``Lease/deliveryCount``. May return fewer than `max`, or none,
    /// possibly after waiting up to `wait` for messages to arrive.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func lease(max: Int, duration: Duration, order: PriorityOrder, wait: Duration) async throws -> [Lease]

    /// Extends leases to `duration` from now.
    ///
    /// - Returns: the leases that were still held and are now extended; a lease that had already expired
    ///   and been redelivered is left out.
    /// - Throws: ``GridError/Code/unavailable``.
    func extend(_ leases: [Lease], duration: Duration) async throws -> [Lease]

    /// Removes leased messages for good. Acknowledging a stale lease is not an error.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func acknowledge(_ leases: [Lease]) async throws

    /// Ends leases early: the messages become visible again after `delay`.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func release(_ leases: [Lease], delay: Duration) async throws

    /// Approximate counts of waiting and leased messages, per priority.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func depth() async throws -> [Int: QueueDepth]
}

/// A message the queue gave up on (dead-lettered) after too many deliveries.
public struct DeadLetter: Sendable, Hashable {
    /// The task the message carried.
    public var id: TaskID
    /// Why the queue gave up, for the task's error text.
    public var reason: String

    /// Creates a dead letter.
    public init(id: TaskID, reason: String) {
        self.id = id
        self.reason = reason
    }
}

/// A queue that can move messages aside after too many deliveries (SQS redrive to a dead-letter queue).
///
/// The reaper drains dead letters and marks their tasks `failed` with the reason, so a redrive never
/// strands a task in `pending` (HTC-Grid's bug, see docs/architecture.md).
public protocol DeadLetteringTaskQueue: TaskQueue {
    /// Removes and returns up to `max` dead-lettered messages.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func drainDeadLetters(max: Int) async throws -> [DeadLetter]
}
