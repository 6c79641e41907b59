import Foundation
import GridKernel

/// A ``TaskQueue`` on Redis: ready messages in one sorted set per priority (scored by a sequence
/// number, so FIFO within a priority), leases in a sorted set scored by expiry, each message a hash.
///
/// Every operation on a batch is one Lua script call (see ``RedisScripts``); enqueue splits very large
/// batches into chunks that travel in one pipelined write, so 10,000 tasks cost one round trip. All
/// keys share the hash tag `{prefix:queue}`. Lease times come from the injected clock.
///
/// A handle is `<message id>:<token>`; the token changes on every delivery, so a handle never acts
/// on a later delivery of the same message.
///
/// A lease call with a positive `wait` is woken by the channel `{prefix:queue}:arrivals`, on which
/// enqueue and release publish (see ``RedisSubscriber``): it returns within a millisecond of a
/// message made ready by any process. It also looks again when the earliest leased or delayed
/// message becomes due, and at least every `pollInterval` (the fallback when the subscriber
/// connection is down).
public struct RedisTaskQueue: TaskQueue {
    let client: RedisClient
    private let clock: any GridClock
    private let base: String
    /// The longest pause of a waiting lease call between two looks (real time).
    private let pollInterval: Duration

    /// Creates a queue under the client's key prefix; a waiting lease call looks at least every
    /// `pollInterval` even when nothing is published.
    public init(client: RedisClient, clock: any GridClock = SystemClock(), pollInterval: Duration = .milliseconds(250)) {
        self.client = client
        self.clock = clock
        self.base = RedisKeys.queue(prefix: client.settings.prefix)
        self.pollInterval = pollInterval
    }

    /// The channel enqueue and release publish on.
    var arrivals: String { base + ":arrivals" }

    /// Enqueues the tasks, in chunks of 1,000 per script call, all in one pipelined write.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func enqueue(_ tasks: [QueuedTask]) async throws {
        guard !tasks.isEmpty else { return }
        var calls: [RedisScriptCall] = []
        for start in stride(from: 0, to: tasks.count, by: 1_000) {
            let chunk = tasks[start..<min(start + 1_000, tasks.count)]
            var arguments: [[UInt8]] = [RedisKeys.bytes(chunk.count)]
            arguments.reserveCapacity(1 + chunk.count * 4)
            for task in chunk {
                arguments.append(Array(task.id.rawValue.utf8))
                arguments.append(RedisKeys.bytes(task.priority))
                arguments.append(task.payload == nil ? [UInt8(ascii: "0")] : [UInt8(ascii: "1")])
                arguments.append(task.payload ?? [])
            }
            calls.append(RedisScriptCall(script: RedisScripts.enqueue, keys: [base], arguments: arguments))
        }
        _ = try await client.run(calls, idempotent: true)  // a repeated message is a harmless duplicate delivery
    }

    /// Leases up to `max` messages; with a positive `wait` (real time), waits until something is ready
    /// or `wait` has passed: woken by a publish on the arrivals channel, when a leased or delayed
    /// message becomes due, and at least every `pollInterval`.
    ///
    /// - Throws: ``GridError/Code/unavailable``; `CancellationError` as soon as it is cancelled while waiting.
    public func lease(max: Int, duration: Duration, order: PriorityOrder, wait: Duration) async throws -> [Lease] {
        guard max > 0 else { return [] }
        let found = try await client.subscriber.wait(on: arrivals, timeout: wait, poll: pollInterval) { () async throws -> (found: [Lease]?, again: Duration?) in
            let (leases, due) = try await leaseOnce(max: max, duration: Swift.max(duration, .zero), order: order)
            return (leases.isEmpty ? nil : leases, due.map { Duration(timeInterval: $0.timeIntervalSince(clock.now)) })
        }
        return found ?? []
    }

    /// One lease script call: the leases, or when there is none, the time the earliest leased or
    /// delayed message becomes due (if any).
    private func leaseOnce(max: Int, duration: Duration, order: PriorityOrder) async throws -> ([Lease], due: Date?) {
        let now = clock.now
        let token = String(UInt64.random(in: 0...UInt64.max), radix: 36) + "."
        let arguments: [[UInt8]] = [
            RedisKeys.bytes(now), RedisKeys.bytes(now.addingTimeInterval(duration.timeInterval)), RedisKeys.bytes(max),
            Array((order == .highestFirst ? "h" : "l").utf8), Array(token.utf8),
        ]
        let reply = try await client.run([RedisScriptCall(script: RedisScripts.lease, keys: [base], arguments: arguments)], idempotent: true)[0]
        let items = reply.elements
        if items.count == 1 { return ([], RedisKeys.date(items[0].string)) }
        var leases: [Lease] = []
        leases.reserveCapacity(items.count / 6)
        for start in stride(from: 0, to: items.count - 5, by: 6) {
            guard let message = items[start].string, let task = items[start + 1].string, let priority = items[start + 2].int,
                let deliveries = items[start + 4].int, let token = items[start + 5].string
            else {
                throw GridError(.internalError, "the lease script returned a malformed message", backend: "redis")
            }
            leases.append(
                Lease(
                    id: try TaskID(task), priority: priority, payload: items[start + 3].bytes, handle: "\(message):\(token)",
                    deliveryCount: deliveries
                )
            )
        }
        return (leases, nil)
    }

    /// Extends the leases that are still current.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func extend(_ leases: [Lease], duration: Duration) async throws -> [Lease] {
        guard !leases.isEmpty else { return [] }
        let expiry = clock.now.addingTimeInterval(duration.timeInterval)
        let reply = try await client.run([
            RedisScriptCall(script: RedisScripts.extend, keys: [base], arguments: [RedisKeys.bytes(expiry)] + handles(leases))
        ], idempotent: true)[0]
        return reply.elements.compactMap { $0.int }.compactMap { $0 >= 1 && $0 <= leases.count ? leases[$0 - 1] : nil }
    }

    /// Deletes the messages whose current lease these are; stale leases are ignored.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func acknowledge(_ leases: [Lease]) async throws {
        guard !leases.isEmpty else { return }
        _ = try await client.run([RedisScriptCall(script: RedisScripts.acknowledge, keys: [base], arguments: handles(leases))], idempotent: true)
    }

    /// Makes the messages visible again after `delay`; stale leases are ignored.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func release(_ leases: [Lease], delay: Duration) async throws {
        guard !leases.isEmpty else { return }
        let visibleAt = delay > .zero ? RedisKeys.bytes(clock.now.addingTimeInterval(delay.timeInterval)) : []
        _ = try await client.run([
            RedisScriptCall(script: RedisScripts.release, keys: [base], arguments: [visibleAt] + handles(leases))
        ], idempotent: true)
    }

    /// Waiting (ready or delayed) and leased messages per priority; priorities without messages are absent.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func depth() async throws -> [Int: QueueDepth] {
        let reply = try await client.run([RedisScriptCall(script: RedisScripts.depth, keys: [base], arguments: [])], idempotent: true)[0]
        let items = reply.elements
        var depth: [Int: QueueDepth] = [:]
        for start in stride(from: 0, to: items.count - 2, by: 3) {
            guard let priority = items[start].int, let waiting = items[start + 1].int, let inFlight = items[start + 2].int else { continue }
            if waiting + inFlight > 0 { depth[priority] = QueueDepth(waiting: waiting, inFlight: inFlight) }
        }
        return depth
    }

    /// `(message id, token)` pairs of the handles; malformed handles are skipped.
    private func handles(_ leases: [Lease]) -> [[UInt8]] {
        var arguments: [[UInt8]] = []
        arguments.reserveCapacity(leases.count * 2)
        for lease in leases {
            guard let colon = lease.handle.firstIndex(of: ":") else { continue }
            arguments.append(Array(lease.handle[..<colon].utf8))
            arguments.append(Array(lease.handle[lease.handle.index(after: colon)...].utf8))
        }
        return arguments
    }
}
