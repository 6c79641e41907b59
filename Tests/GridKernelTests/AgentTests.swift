import Foundation
import GridKernel
import Synchronization
import Testing

@Suite struct AgentTests {
    @Test func runsEveryTaskOnceAndStoresOutputs() async throws {
        let backends = memoryBackends()
        let client = GridClient(backends: backends, configuration: ClientConfiguration(inlinePayloadLimit: 16, submitBatchSize: 64))
        let session = try await client.createSession()
        // Half the inputs are small (inline in the message), half large (payload store).
        let inputs = (0..<300).map { index in Array("task \(index)".utf8) + (index.isMultiple(of: 2) ? [UInt8](repeating: 7, count: 100) : []) }
        let ids = try await client.submit(session.id, inputs: inputs)
        #expect(ids.map(\.index) == Array(0..<300))

        let runs = Mutex<[TaskID: Int]>([:])
        var configuration = fastAgent(concurrency: 16)
        configuration.inlineOutputLimit = 50
        configuration.onRunsCompleted = { ids in runs.withLock { for id in ids { $0[id, default: 0] += 1 } } }
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { input, _ in input.reversed() },
            configuration: configuration
        )
        try await withAgent(agent) {
            try await waitUntil("all tasks finished") { try await client.counts(session.id)[.finished] == 300 }
        }
        var seen = 0
        var cursor: String?
        repeat {
            let page = try await client.results(session.id, state: .finished, after: cursor, limit: 70)
            for result in page.items {
                #expect(result.output == inputs[result.record.id.index].reversed())
                seen += 1
            }
            cursor = page.next
        } while cursor != nil
        #expect(seen == 300)
        #expect(runs.withLock { $0.count == 300 && $0.values.allSatisfy { $0 == 1 } })
        #expect(try await backends.queue.depth().values.reduce(0) { $0 + $1.waiting + $1.inFlight } == 0)
    }

    /// An output the payload store refuses (over its limit) fails its own task, at once and for good,
    /// with the store's reason; the other tasks of the same flush batch are stored. (The agent used to
    /// retry the whole batch for ever, leaving its tasks `processing`.)
    @Test func anOutputThePayloadStoreRefusesFailsOnlyItsOwnTask() async throws {
        let memory = memoryBackends()
        let backends = GridBackends(queue: memory.queue, state: memory.state, payloads: InMemoryPayloadStore(maxPayloadBytes: 1_000))
        let client = GridClient(backends: backends)
        let session = try await client.createSession(SessionOptions(maxRetries: 3))
        let ids = try await client.submit(session.id, inputs: (0..<100).map { [UInt8($0)] })
        var configuration = fastAgent(concurrency: 16)
        configuration.inlineOutputLimit = 10
        let agent = try Agent(
            backends: backends,
            // Task 7's output is 5,000 bytes; the others' 100, all stored in the payload store.
            handler: ClosureHandler { input, _ in [UInt8](repeating: input[0], count: input[0] == 7 ? 5_000 : 100) },
            configuration: configuration)
        try await withAgent(agent) {
            try await waitUntil("every task ended") {
                let counts = try await client.counts(session.id)
                return counts[.finished] + counts[.failed] == 100
            }
        }
        let refused = try await client.task(ids[7])
        #expect(refused.state == .failed)
        #expect(refused.retries == 0, "an output over the limit is over it on every attempt")
        #expect(refused.lastError?.contains("the task's output could not be stored") == true, "\(refused.lastError ?? "no error")")
        #expect(refused.lastError?.contains("the limit is 1000 B") == true, "\(refused.lastError ?? "no error")")
        for id in ids where id != ids[7] {
            #expect(try await client.output(id) == [UInt8](repeating: UInt8(id.index), count: 100))
        }
    }

    @Test func failingHandlerIsRetriedThenFailedWithItsError() async throws {
        let backends = memoryBackends()
        let client = GridClient(backends: backends)
        let session = try await client.createSession(SessionOptions(maxRetries: 2))
        let attempts = Mutex<[Int]>([])
        try await client.submit(session.id, inputs: [[1]])
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { _, context in
                attempts.withLock { $0.append(context.attempt) }
                throw ExampleError(text: "boom on attempt \(context.attempt)")
            },
            configuration: fastAgent()
        )
        try await withAgent(agent) {
            try await waitUntil("the task failed") { try await client.counts(session.id)[.failed] == 1 }
        }
        let record = try await client.task(TaskID(session: session.id, index: 0))
        #expect(record.state == .failed)
        #expect(record.retries == 2)
        #expect(record.lastError == "boom on attempt 3")
        #expect(attempts.withLock { $0 } == [1, 2, 3])
    }

    @Test func permanentErrorFailsWithoutRetry() async throws {
        let backends = memoryBackends()
        let client = GridClient(backends: backends)
        let session = try await client.createSession()
        try await client.submit(session.id, inputs: [[1]])
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { _, _ in throw TaskHandlerError.permanent("bad input") },
            configuration: fastAgent()
        )
        try await withAgent(agent) {
            try await waitUntil("the task failed") { try await client.counts(session.id)[.failed] == 1 }
        }
        let record = try await client.task(TaskID(session: session.id, index: 0))
        #expect(record.retries == 0)
        #expect(record.lastError == "bad input")
    }

    @Test func cancellingARunningTaskStopsItsHandlerAndDiscardsItsOutput() async throws {
        let backends = memoryBackends()
        let client = GridClient(backends: backends)
        let session = try await client.createSession()
        try await client.submit(session.id, inputs: [[1], [2]])
        let started = Mutex(0)
        let stopped = Mutex(0)
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { input, _ in
                started.withLock { $0 += 1 }
                do {
                    try await Task.sleep(for: .seconds(3600))
                } catch {
                    stopped.withLock { $0 += 1 }
                    // A handler that ignores cancellation and returns anyway: its output must be discarded.
                    return input
                }
                return input
            },
            configuration: fastAgent()
        )
        try await withAgent(agent) {
            try await waitUntil("both tasks run") { started.withLock { $0 } == 2 }
            let counts = try await client.cancel(session.id)
            #expect(counts == CancelCounts(pending: 0, processing: 2))
            try await waitUntil("the handlers were cancelled") { stopped.withLock { $0 } == 2 }
            try await waitUntil("the agent let go of the tasks") { agent.ownedCount == 0 }
        }
        #expect(try await client.counts(session.id)[.cancelled] == 2)
        #expect(try await client.counts(session.id)[.finished] == 0)
        // Their messages were acknowledged: nothing waits or is leased.
        #expect(try await backends.queue.depth().values.reduce(0) { $0 + $1.waiting + $1.inFlight } == 0)
    }

    @Test func cancelledPendingTasksNeverRun() async throws {
        let backends = memoryBackends()
        let client = GridClient(backends: backends)
        let session = try await client.createSession()
        try await client.submit(session.id, inputs: (0..<50).map { [UInt8($0)] })
        #expect(try await client.cancel(session.id) == CancelCounts(pending: 50, processing: 0))
        let ran = Mutex(0)
        let agent = try Agent(backends: backends, handler: ClosureHandler { input, _ in ran.withLock { $0 += 1 }; return input }, configuration: fastAgent())
        try await withAgent(agent) {
            try await waitUntil("the queue is drained") {
                try await backends.queue.depth().values.reduce(0) { $0 + $1.waiting + $1.inFlight } == 0
            }
        }
        #expect(ran.withLock { $0 } == 0)
        await #expect(throws: GridError.self) { try await client.submit(session.id, inputs: [[1]]) }
    }

    @Test func taskLongerThanItsTimeLimitIsStoppedAndFailed() async throws {
        let clock = ManualClock()
        let backends = memoryBackends(clock: clock)
        let client = GridClient(backends: backends, clock: clock)
        let session = try await client.createSession(SessionOptions(maxRetries: 0, taskTimeout: .seconds(10)))
        try await client.submit(session.id, inputs: [[1]])
        let started = Mutex(false)
        var configuration = fastAgent(concurrency: 1)
        configuration.heartbeatInterval = .seconds(100)
        configuration.leaseDuration = .seconds(1000)
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { input, _ in
                started.withLock { $0 = true }
                try await Task.sleep(for: .seconds(3600))
                return input
            },
            configuration: configuration,
            clock: clock
        )
        try await withAgent(agent) {
            // The idle back-off sleeps on the manual clock too: nudge it until the task starts.
            try await waitUntil("the task started") {
                clock.advance(by: .milliseconds(5))
                return started.withLock { $0 }
            }
            try await waitUntil("the time limit is armed") { clock.sleeperCount >= 2 }
            clock.advance(by: .seconds(11))
            try await waitUntil("the task failed") { try await client.counts(session.id)[.failed] == 1 }
        }
        let record = try await client.task(TaskID(session: session.id, index: 0))
        #expect(record.lastError?.contains("time limit") == true)
    }

    @Test func gracefulStopLetsRunningTasksFinish() async throws {
        let backends = memoryBackends()
        let client = GridClient(backends: backends)
        let session = try await client.createSession()
        try await client.submit(session.id, inputs: [[9]])
        let gate = Gate()
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { input, _ in
                await gate.wait()
                return input
            },
            configuration: fastAgent()
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await agent.run() }
            try await waitUntil("the task runs") { agent.ownedCount == 1 }
            agent.stop()
            gate.open()
            try await group.waitForAll()
        }
        #expect(try await client.output(TaskID(session: session.id, index: 0)) == [9])
    }

    @Test func drainTimeoutHandsBackTasksThatDoNotFinish() async throws {
        let clock = ManualClock()
        let backends = memoryBackends(clock: clock)
        let client = GridClient(backends: backends, clock: clock)
        let session = try await client.createSession()
        let id = try await client.submit(session.id, inputs: [[5]])[0]
        var configuration = fastAgent(concurrency: 1)
        configuration.heartbeatInterval = .seconds(100)
        configuration.leaseDuration = .seconds(1000)
        configuration.drainTimeout = .seconds(30)
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { input, _ in
                try await Task.sleep(for: .seconds(3600))
                return input
            },
            configuration: configuration,
            clock: clock
        )
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await agent.run() }
            try await waitUntil("the task runs") {
                clock.advance(by: .milliseconds(5))
                return agent.ownedCount == 1
            }
            agent.stop()
            // The heartbeat loop and the drain timer sleep on the clock.
            try await waitUntil("the drain timer is armed") { clock.sleeperCount == 2 }
            clock.advance(by: .seconds(29))
            #expect(agent.ownedCount == 1, "the task keeps running within the drain timeout")
            clock.advance(by: .seconds(2))
            try await group.waitForAll()
        }
        let record = try await client.task(id)
        #expect(record.state == .pending)
        #expect(record.retries == 1)
        #expect(record.lastError?.contains("stopped before the task finished") == true)
        #expect(try await backends.queue.depth()[0]?.waiting == 1, "its message is back in the queue")
    }

    @Test func heartbeatsKeepALongTaskOwnedAndItsMessageHidden() async throws {
        let clock = ManualClock()
        let backends = memoryBackends(clock: clock)
        let client = GridClient(backends: backends, clock: clock)
        let session = try await client.createSession()
        let id = try await client.submit(session.id, inputs: [[3]])[0]
        var configuration = fastAgent(concurrency: 1)
        configuration.leaseDuration = .seconds(10)
        configuration.heartbeatInterval = .seconds(2)
        let gate = Gate()
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { input, _ in
                await gate.wait()
                return input
            },
            configuration: configuration,
            clock: clock
        )
        let reaper = Reaper(backends: backends, clock: clock)
        try await withAgent(agent) {
            try await waitUntil("the task runs") {
                clock.advance(by: .milliseconds(5))
                return agent.ownedCount == 1
            }
            // Six lease durations pass, one heartbeat interval at a time. A lease is renewed once it is
            // older than renewAfter (10 − 3 × 2 = 4 s), so at every tick at least two intervals are left.
            #expect(configuration.renewAfter == .seconds(4))
            var leases: Set<Date> = []
            for tick in 1...30 {
                try await waitUntil("the heartbeat loop sleeps") { clock.sleeperCount == 1 }
                clock.advance(by: .seconds(2))
                try await waitUntil("heartbeat pass \(tick) ended") { agent.heartbeatPasses == tick }
                let lease = try #require(try await client.task(id).leaseExpiry)
                leases.insert(lease)
                #expect(lease.timeIntervalSince(clock.now) >= 4, "tick \(tick): the lease must keep two intervals to spare")
                #expect(try await reaper.runOnce() == ReaperReport())
                #expect(try await backends.queue.lease(max: 1, duration: .seconds(1), order: .highestFirst, wait: .zero).isEmpty)
            }
            // Renewed every second or third tick, not at every one: young leases cost no writes.
            #expect((10...16).contains(leases.count), "\(leases.count) distinct leases in 30 ticks")
            gate.open()
            try await waitUntil("the task finished") { try await client.task(id).state == .finished }
        }
        let record = try await client.task(id)
        #expect(record.retries == 0)
        #expect(try await client.output(id) == [3])
    }

    /// A young task (lease not yet due for renewal) is not written by heartbeats, yet when its session
    /// is cancelled its handler stops at the next heartbeat pass.
    @Test func aYoungTaskIsNotRenewedButStopsWhenItsSessionIsCancelled() async throws {
        let clock = ManualClock()
        let backends = memoryBackends(clock: clock)
        let client = GridClient(backends: backends, clock: clock)
        let session = try await client.createSession()
        let id = try await client.submit(session.id, inputs: [[7]])[0]
        var configuration = fastAgent(concurrency: 1)
        configuration.leaseDuration = .seconds(30)
        configuration.heartbeatInterval = .seconds(5)
        let stopped = Mutex(false)
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { input, _ in
                do {
                    try await Task.sleep(for: .seconds(3600))
                } catch {
                    stopped.withLock { $0 = true }
                }
                return input
            },
            configuration: configuration,
            clock: clock
        )
        try await withAgent(agent) {
            try await waitUntil("the task runs") {
                clock.advance(by: .milliseconds(5))
                return agent.ownedCount == 1
            }
            let claimedLease = try await client.task(id).leaseExpiry
            try await waitUntil("the heartbeat loop sleeps") { clock.sleeperCount == 1 }
            clock.advance(by: .seconds(5))
            try await waitUntil("heartbeat pass 1 ended") { agent.heartbeatPasses == 1 }
            #expect(try await client.task(id).leaseExpiry == claimedLease, "a 5-second-old lease is not renewed (renewAfter 15 s)")
            #expect(!stopped.withLock { $0 })
            _ = try await client.cancel(session.id)
            try await waitUntil("the heartbeat loop sleeps") { clock.sleeperCount == 1 }
            clock.advance(by: .seconds(5))
            try await waitUntil("heartbeat pass 2 ended") { agent.heartbeatPasses == 2 }
            try await waitUntil("the handler was stopped by the session check") { stopped.withLock { $0 } }
        }
        #expect(try await client.task(id).state == .cancelled)
    }

    /// Runs one low-priority task and `high` high-priority tasks on one slot; returns the sessions in
    /// the order their tasks ran.
    private func runOrder(starvationGuard: Int, high count: Int) async throws -> (order: [SessionID], low: SessionID) {
        let backends = memoryBackends()
        let client = GridClient(backends: backends)
        let low = try await client.createSession(SessionOptions(priority: 0))
        let high = try await client.createSession(SessionOptions(priority: 5))
        try await client.submit(low.id, inputs: [[0]])
        try await client.submit(high.id, inputs: (0..<count).map { [UInt8($0)] })
        let order = Mutex<[SessionID]>([])
        var configuration = fastAgent(concurrency: 1)
        configuration.starvationGuard = starvationGuard
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { input, context in
                order.withLock { $0.append(context.id.session) }
                return input
            },
            configuration: configuration
        )
        try await withAgent(agent) {
            try await waitUntil("all tasks finished") {
                let lowDone = try await client.counts(low.id)[.finished] == 1
                let highDone = try await client.counts(high.id)[.finished] == count
                return lowDone && highDone
            }
        }
        return (order.withLock { $0 }, low.id)
    }

    @Test func starvationGuardServesLowPriorityWork() async throws {
        let (order, low) = try await runOrder(starvationGuard: 4, high: 40)
        // Strict priority would run it last (position 40); the guard lets it in by the fourth lease.
        let position = try #require(order.firstIndex(of: low))
        #expect(position < 4)
    }

    @Test func withoutTheGuardHigherPriorityRunsFirst() async throws {
        let (order, low) = try await runOrder(starvationGuard: 0, high: 10)
        #expect(order.count == 11)
        #expect(order.last == low)
    }
}

struct ExampleError: Error, CustomStringConvertible {
    let text: String
    var description: String { text }
}

/// A one-shot gate a handler can wait on; a cancelled waiter is let through, so a failing test ends
/// instead of hanging.
final class Gate: Sendable {
    private struct State {
        var open = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var next: UInt64 = 0
    }

    private let state = Mutex(State())

    func wait() async {
        let id = state.withLock { state -> UInt64 in
            state.next += 1
            return state.next
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resume = state.withLock { state -> Bool in
                    if state.open || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resume { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }

    func open() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.open = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }
}
