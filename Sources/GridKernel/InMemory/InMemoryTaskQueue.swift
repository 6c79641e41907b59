import Foundation

/// The reference ``TaskQueue``: SQS-style leases over messages kept in memory.
///
/// Every lease, extension and release is measured on the injected clock, so tests drive expiry with
/// ``ManualClock`` instead of sleeping. Messages of one priority are served in enqueue order; a
/// message that becomes visible again (expired lease, release) keeps its original place.
///
/// Each delivery gets its own handle (`<sequence>:<delivery>`), so a handle from an earlier delivery
/// never extends, releases or acknowledges a message that was delivered again since. A handle stays
/// current until the message is delivered again, even after its lease expired (as an SQS receipt
/// handle does).
///
/// `lease(max:duration:order:wait:)` never waits: an empty queue answers at once whatever `wait` is,
/// and callers back off on their own.
///
/// Costs: lease, acknowledge, extend and release are O(log n) per message; depth is O(priorities).
public actor InMemoryTaskQueue: DeadLetteringTaskQueue {
    private enum Visibility {
        /// Can be leased.
        case visible
        /// Leased until the date.
        case leased(until: Date)
        /// Released with a delay; visible again at the date.
        case delayed(until: Date)

        var isLeased: Bool {
            if case .leased = self { true } else { false }
        }
    }

    private struct Message {
        let sequence: UInt64
        let task: QueuedTask
        var deliveries: Int
        var visibility: Visibility
        /// Bumped on every visibility change; heap entries of an older generation are stale.
        var generation: UInt64
    }

    /// A visible message in its priority's heap: the lowest sequence is served first.
    private struct ReadyEntry: Comparable {
        let sequence: UInt64
        let generation: UInt64
        static func < (lhs: ReadyEntry, rhs: ReadyEntry) -> Bool { lhs.sequence < rhs.sequence }
    }

    /// A leased or delayed message in the timer heap: the earliest date is due first.
    private struct TimerEntry: Comparable {
        let due: Date
        let sequence: UInt64
        let generation: UInt64
        static func < (lhs: TimerEntry, rhs: TimerEntry) -> Bool { (lhs.due, lhs.sequence) < (rhs.due, rhs.sequence) }
    }

    private struct Tally {
        var total = 0
        var inFlight = 0
    }

    private let clock: any GridClock
    private let maxDeliveries: Int?
    private var nextSequence: UInt64 = 0
    private var messages: [UInt64: Message] = [:]
    /// Visible messages per priority; entries may be stale and are skipped when popped.
    private var ready: [Int: MinHeap<ReadyEntry>] = [:]
    /// The priorities that have a `ready` heap, ascending.
    private var priorities: [Int] = []
    /// Leased and delayed messages by the date they become visible; entries may be stale.
    private var timers = MinHeap<TimerEntry>()
    private var tallies: [Int: Tally] = [:]
    private var deadLetters: [DeadLetter] = []

    /// Creates an empty queue.
    ///
    /// - Parameters:
    ///   - clock: the time leases and delays are measured on.
    ///   - maxDeliveries: when set, a message that would be delivered a `maxDeliveries + 1`-th time is
    ///     moved to the dead letters instead (see ``drainDeadLetters(max:)``); `nil` redelivers forever.
    ///     Must be at least 1.
    public init(clock: any GridClock = SystemClock(), maxDeliveries: Int? = nil) {
        precondition(maxDeliveries.map { $0 >= 1 } ?? true, "maxDeliveries must be at least 1")
        self.clock = clock
        self.maxDeliveries = maxDeliveries
    }

    /// Adds the tasks, in order, as visible messages. Never throws.
    public func enqueue(_ tasks: [QueuedTask]) async throws {
        for task in tasks {
            nextSequence += 1
            messages[nextSequence] = Message(
                sequence: nextSequence, task: task, deliveries: 0, visibility: .visible, generation: 0
            )
            tallies[task.priority, default: Tally()].total += 1
            pushReady(sequence: nextSequence, generation: 0, priority: task.priority)
        }
    }

    /// Leases up to `max` visible messages for `duration`, in `order` of priority, FIFO within a
    /// priority. Returns at once, with no messages when none is visible. Never throws.
    public func lease(max: Int, duration: Duration, order: PriorityOrder, wait: Duration) async throws -> [Lease] {
        let now = clock.now
        promoteDue(now: now)
        var leases: [Lease] = []
        guard max > 0 else { return leases }
        let until = now.addingTimeInterval(duration.timeInterval)
        let served = order == .highestFirst ? Array(priorities.reversed()) : priorities
        for priority in served {
            while leases.count < max, let entry = ready[priority]?.popMin() {
                guard var message = messages[entry.sequence], message.generation == entry.generation,
                    case .visible = message.visibility
                else { continue }
                message.deliveries += 1
                messages[entry.sequence] = message
                setVisibility(of: entry.sequence, to: .leased(until: until))
                leases.append(
                    Lease(
                        id: message.task.id, priority: priority, payload: message.task.payload,
                        handle: Self.handle(sequence: entry.sequence, delivery: message.deliveries),
                        deliveryCount: message.deliveries
                    )
                )
            }
            if ready[priority]?.isEmpty ?? false { dropReadyHeap(priority) }
            if leases.count == max { break }
        }
        return leases
    }

    /// Extends the leases whose handle is current (the message was not delivered again and not
    /// acknowledged) to `duration` from now, and returns them. Never throws.
    public func extend(_ leases: [Lease], duration: Duration) async throws -> [Lease] {
        let now = clock.now
        promoteDue(now: now)
        let until = now.addingTimeInterval(duration.timeInterval)
        var extended: [Lease] = []
        for lease in leases {
            guard let sequence = currentSequence(of: lease) else { continue }
            setVisibility(of: sequence, to: .leased(until: until))
            extended.append(lease)
        }
        return extended
    }

    /// Removes the messages whose handle is current; stale handles are ignored. Never throws.
    public func acknowledge(_ leases: [Lease]) async throws {
        promoteDue(now: clock.now)
        for lease in leases {
            guard let sequence = currentSequence(of: lease) else { continue }
            remove(sequence)
        }
    }

    /// Makes the messages whose handle is current visible again after `delay`; stale handles are
    /// ignored. Never throws.
    public func release(_ leases: [Lease], delay: Duration) async throws {
        let now = clock.now
        promoteDue(now: now)
        for lease in leases {
            guard let sequence = currentSequence(of: lease) else { continue }
            if delay <= .zero {
                makeVisible(sequence)
            } else {
                setVisibility(of: sequence, to: .delayed(until: now.addingTimeInterval(delay.timeInterval)))
            }
        }
    }

    /// Exact counts per priority: `inFlight` are messages under a lease that has not expired,
    /// `waiting` all others (visible or released with a delay). Priorities without messages are absent.
    /// Never throws.
    public func depth() async throws -> [Int: QueueDepth] {
        promoteDue(now: clock.now)
        var depths: [Int: QueueDepth] = [:]
        for (priority, tally) in tallies where tally.total > 0 {
            depths[priority] = QueueDepth(waiting: tally.total - tally.inFlight, inFlight: tally.inFlight)
        }
        return depths
    }

    /// Removes and returns up to `max` dead letters, oldest first. Never throws.
    ///
    /// A message is dead-lettered when it becomes visible again (its lease expired or it was released)
    /// after `maxDeliveries` deliveries.
    public func drainDeadLetters(max: Int) async throws -> [DeadLetter] {
        promoteDue(now: clock.now)
        let count = Swift.min(Swift.max(max, 0), deadLetters.count)
        let drained = Array(deadLetters.prefix(count))
        deadLetters.removeFirst(count)
        return drained
    }

    // MARK: - Bookkeeping

    private static func handle(sequence: UInt64, delivery: Int) -> String { "\(sequence):\(delivery)" }

    /// The message a lease's handle designates, if that delivery is still the message's latest.
    private func currentSequence(of lease: Lease) -> UInt64? {
        let parts = lease.handle.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let sequence = UInt64(parts[0]), let delivery = Int(parts[1]),
            let message = messages[sequence], message.deliveries == delivery
        else { return nil }
        return sequence
    }

    /// Makes every leased or delayed message whose date has come visible again.
    private func promoteDue(now: Date) {
        while let entry = timers.min, entry.due <= now {
            _ = timers.popMin()
            guard let message = messages[entry.sequence], message.generation == entry.generation else { continue }
            makeVisible(entry.sequence)
        }
    }

    /// Puts a message back in its priority's line, or among the dead letters once it was delivered
    /// `maxDeliveries` times.
    private func makeVisible(_ sequence: UInt64) {
        guard let message = messages[sequence] else { return }
        if let maxDeliveries, message.deliveries >= maxDeliveries {
            remove(sequence)
            deadLetters.append(
                DeadLetter(
                    id: message.task.id,
                    reason: "message was delivered \(message.deliveries) times; the queue's redrive limit is \(maxDeliveries)"
                )
            )
        } else {
            setVisibility(of: sequence, to: .visible)
        }
    }

    private func setVisibility(of sequence: UInt64, to visibility: Visibility) {
        guard var message = messages[sequence] else { return }
        let priority = message.task.priority
        if message.visibility.isLeased { tallies[priority, default: Tally()].inFlight -= 1 }
        if visibility.isLeased { tallies[priority, default: Tally()].inFlight += 1 }
        message.generation += 1
        message.visibility = visibility
        messages[sequence] = message
        switch visibility {
        case .visible:
            pushReady(sequence: sequence, generation: message.generation, priority: priority)
        case .leased(let until), .delayed(let until):
            timers.push(TimerEntry(due: until, sequence: sequence, generation: message.generation))
        }
    }

    private func remove(_ sequence: UInt64) {
        guard let message = messages.removeValue(forKey: sequence) else { return }
        let priority = message.task.priority
        tallies[priority, default: Tally()].total -= 1
        if message.visibility.isLeased { tallies[priority, default: Tally()].inFlight -= 1 }
        if tallies[priority]?.total == 0 { tallies[priority] = nil }
    }

    private func pushReady(sequence: UInt64, generation: UInt64, priority: Int) {
        if ready[priority] == nil {
            let position = priorities.firstIndex { $0 > priority } ?? priorities.endIndex
            priorities.insert(priority, at: position)
        }
        ready[priority, default: MinHeap()].push(ReadyEntry(sequence: sequence, generation: generation))
    }

    private func dropReadyHeap(_ priority: Int) {
        ready[priority] = nil
        priorities.removeAll { $0 == priority }
    }
}

/// A binary min-heap.
private struct MinHeap<Element: Comparable> {
    private var storage: [Element] = []

    var isEmpty: Bool { storage.isEmpty }
    var min: Element? { storage.first }

    mutating func push(_ element: Element) {
        storage.append(element)
        var child = storage.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard storage[child] < storage[parent] else { break }
            storage.swapAt(child, parent)
            child = parent
        }
    }

    mutating func popMin() -> Element? {
        guard !storage.isEmpty else { return nil }
        storage.swapAt(0, storage.count - 1)
        let smallest = storage.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var candidate = parent
            if left < storage.count, storage[left] < storage[candidate] { candidate = left }
            if right < storage.count, storage[right] < storage[candidate] { candidate = right }
            guard candidate != parent else { break }
            storage.swapAt(parent, candidate)
            parent = candidate
        }
        return smallest
    }
}
