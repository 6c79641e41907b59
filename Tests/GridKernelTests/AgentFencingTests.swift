import Foundation
import GridKernel
import GridKernelConformance
import Synchronization
import Testing

/// Faults for an ``InterceptingStateStore``: claims or finishes whose reply is lost (applied, then
/// `unavailable`), heartbeats that cannot get through.
final class StateFaults: Sendable {
    private let faults = Mutex<(lostClaimReplies: Int, lostFinishReplies: Int, heartbeatsFail: Bool)>((0, 0, false))

    func loseClaimReplies(_ count: Int) { faults.withLock { $0.lostClaimReplies = count } }
    func loseFinishReplies(_ count: Int) { faults.withLock { $0.lostFinishReplies = count } }
    func failHeartbeats(_ failing: Bool) { faults.withLock { $0.heartbeatsFail = failing } }

    /// `base` with these faults.
    func wrap(_ base: any StateStore) -> any StateStore {
        InterceptingStateStore(base) { point in
            try self.faults.withLock { faults in
                switch (point.operation, point.applied) {
                case ("claim", true) where faults.lostClaimReplies > 0:
                    faults.lostClaimReplies -= 1
                    throw GridError.unavailable("the reply of the claim was lost")
                case ("finish", true) where faults.lostFinishReplies > 0:
                    faults.lostFinishReplies -= 1
                    throw GridError.unavailable("the reply of the finish was lost")
                case ("heartbeat", false) where faults.heartbeatsFail:
                    throw GridError.unavailable("the state store cannot be reached")
                default:
                    return
                }
            }
        }
    }
}

/// A queue whose lease extensions can be made to fail, and that remembers the highest delivery count.
final class QueueProxy: TaskQueue, Sendable {
    let base: any TaskQueue
    private let state = Mutex<(extendsFail: Bool, maxDelivery: Int)>((false, 0))

    init(_ base: any TaskQueue) { self.base = base }

    func failExtends(_ failing: Bool) { state.withLock { $0.extendsFail = failing } }
    var maxDeliveryCount: Int { state.withLock { $0.maxDelivery } }

    func enqueue(_ tasks: [QueuedTask]) async throws { try await base.enqueue(tasks) }
    func lease(max: Int, duration: Duration, order: PriorityOrder, wait: Duration) async throws -> [Lease] {
        let leases = try await base.lease(max: max, duration: duration, order: order, wait: wait)
        state.withLock { state in state.maxDelivery = leases.map(\.deliveryCount).reduce(state.maxDelivery, Swift.max) }
        return leases
    }
    func extend(_ leases: [Lease], duration: Duration) async throws -> [Lease] {
        if state.withLock({ $0.extendsFail }) { throw GridError.unavailable("the queue cannot be reached") }
        return try await base.extend(leases, duration: duration)
    }
    func acknowledge(_ leases: [Lease]) async throws { try await base.acknowledge(leases) }
    func release(_ leases: [Lease], delay: Duration) async throws { try await base.release(leases, delay: delay) }
    func depth() async throws -> [Int: QueueDepth] { try await base.depth() }
}

/// A payload store whose reads can be made to fail.
final class PayloadProxy: PayloadStore, Sendable {
    let base: any PayloadStore
    private let failing = Mutex(0)

    init(_ base: any PayloadStore) { self.base = base }

    func failReads(_ count: Int) { failing.withLock { $0 = count } }
    var maxPayloadBytes: Int? { base.maxPayloadBytes }
    func put(_ items: [PayloadItem]) async throws { try await base.put(items) }
    func get(_ keys: [String]) async throws -> [String: [UInt8]] {
        if failing.withLock({ count in defer { count -= 1 }; return count > 0 }) { throw GridError.unavailable("the payload store cannot be reached") }
        return try await base.get(keys)
    }
    func delete(_ keys: [String]) async throws { try await base.delete(keys) }
}

/// Attempt fencing and the consistency of claims, messages and errors, through whole agents.
@Suite struct AgentFencingTests {
    private func big(_ text: String) -> [UInt8] { Array(String(repeating: text, count: 2_000).utf8) }

    /// Agent A stalls past its lease (its heartbeats cannot get through, as when it is stopped), the
    /// reaper hands the task to agent B, which finishes it; then A's run ends and A stores its output,
    /// over the inline limit: B's output stays the task's, and A's is removed.
    @Test func aStaleAttemptNeverReplacesTheCommittedOutput() async throws {
        let memory = memoryBackends()
        let stateA = StateFaults()
        let backendsA = GridBackends(queue: memory.queue, state: stateA.wrap(memory.state), payloads: memory.payloads)
        let client = GridClient(backends: memory)
        let session = try await client.createSession(SessionOptions(maxRetries: 3))
        let id = try await client.submit(session.id, inputs: [[1]])[0]
        let gate = Gate()
        var configurationA = fastAgent("agent-a", concurrency: 1)
        configurationA.leaseDuration = .seconds(1)
        configurationA.heartbeatInterval = .milliseconds(100)
        configurationA.inlineOutputLimit = 16
        let agentA = try Agent(
            backends: backendsA, handler: ClosureHandler { _, _ in await gate.wait(); return self.big("A") }, configuration: configurationA)
        var configurationB = fastAgent("agent-b", concurrency: 1)
        configurationB.inlineOutputLimit = 16
        let agentB = try Agent(backends: memory, handler: ClosureHandler { _, _ in self.big("B") }, configuration: configurationB)
        try await withAgent(agentA) {
            try await waitUntil("agent A runs the task") { agentA.ownedCount == 1 }
            stateA.failHeartbeats(true)
            let reaper = Reaper(backends: memory)
            try await waitUntil("the reaper takes the task from agent A") { try await reaper.runOnce().requeued == 1 }
            try await withAgent(agentB) {
                try await waitUntil("agent B finished the task") { try await client.task(id).state == .finished }
            }
            #expect(try await client.output(id) == big("B"))
            gate.open()
            try await waitUntil("agent A let go of its stale run") { agentA.ownedCount == 0 }
        }
        let record = try await client.task(id)
        #expect(record.attempt == 2)
        #expect(record.retries == 1)
        #expect(try await client.output(id) == big("B"), "the stale attempt's output must not replace the committed one")
        #expect(try await memory.payloads.get([PayloadKey.output(id, attempt: 1)]).isEmpty, "the stale attempt's output is removed")
    }

    /// The same agent claims the task again after its lease was reaped while the first run hung: the
    /// first run is stopped, and even when it returns, only the second attempt's output is stored.
    @Test func theSameAgentsOldRunCannotFinishItsNewAttempt() async throws {
        let memory = memoryBackends()
        let state = StateFaults()
        let backends = GridBackends(queue: memory.queue, state: state.wrap(memory.state), payloads: memory.payloads)
        let client = GridClient(backends: memory)
        let session = try await client.createSession(SessionOptions(maxRetries: 3))
        let id = try await client.submit(session.id, inputs: [[1]])[0]
        let firstRun = StubbornGate()
        let secondRun = Gate()
        var configuration = fastAgent("agent-a", concurrency: 2)
        configuration.leaseDuration = .seconds(1)
        configuration.heartbeatInterval = .milliseconds(100)
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { _, context in
                // The first run ignores being stopped, as a stuck worker would, and returns late.
                if context.attempt == 1 { await firstRun.wait() } else { await secondRun.wait() }
                return Array("run \(context.attempt)".utf8)
            },
            configuration: configuration)
        try await withAgent(agent) {
            try await waitUntil("the first run started") { try await client.task(id).attempt == 1 }
            state.failHeartbeats(true)
            let reaper = Reaper(backends: memory)
            try await waitUntil("the reaper took the task back") { try await reaper.runOnce().requeued == 1 }
            state.failHeartbeats(false)
            try await waitUntil("the agent claimed the task again") { try await client.task(id).attempt == 2 }
            firstRun.open()
            secondRun.open()
            try await waitUntil("the task finished") { try await client.task(id).state == .finished }
        }
        #expect(try await client.output(id) == Array("run 2".utf8))
    }

    /// The inputs of claimed tasks cannot be read: the tasks go back to pending at once, with no retry
    /// charged, and run once the store answers again.
    @Test func anInputReadFailureReleasesTheClaimedTasks() async throws {
        let memory = memoryBackends()
        let payloads = PayloadProxy(memory.payloads)
        let backends = GridBackends(queue: memory.queue, state: memory.state, payloads: payloads)
        let client = GridClient(backends: memory, configuration: ClientConfiguration(inlinePayloadLimit: 4))
        let session = try await client.createSession()
        let ids = try await client.submit(session.id, inputs: (0..<5).map { Array("input \($0)".utf8) })
        payloads.failReads(1)
        var configuration = fastAgent(concurrency: 8)
        configuration.leaseDuration = .seconds(60)
        let agent = try Agent(backends: backends, handler: ClosureHandler { input, _ in input }, configuration: configuration)
        try await withAgent(agent) {
            try await waitUntil("every task finished") { try await client.counts(session.id)[.finished] == 5 }
        }
        for id in ids {
            let record = try await client.task(id)
            #expect(record.retries == 0, "a released task is not charged a retry")
            #expect(record.attempt == 2, "released after its first claim, finished in its second")
            #expect(try await client.output(id) == Array("input \(id.index)".utf8))
        }
    }

    /// Agent A's message lease lapses (its extensions fail) while its task runs on a live state lease;
    /// agent B receives the message again. B keeps it leased instead of handing it back every
    /// heartbeat (each delivery counts toward the dead-letter limit, and a dead letter would fail the
    /// healthy run), and acknowledges it once A finished.
    @Test func aMessageOfATaskRunningElsewhereIsWatchedNotCirculated() async throws {
        let memory = memoryBackends(maxDeliveries: 3)
        let queueA = QueueProxy(memory.queue)
        let queueB = QueueProxy(memory.queue)
        let client = GridClient(backends: memory)
        let session = try await client.createSession()
        let id = try await client.submit(session.id, inputs: [[7]])[0]
        let gate = Gate()
        // Leases with seconds to spare at each renewal, so a slow machine cannot let them expire.
        var configurationA = fastAgent("agent-a", concurrency: 1)
        configurationA.leaseDuration = .seconds(6)
        configurationA.heartbeatInterval = .seconds(1)
        let agentA = try Agent(
            backends: GridBackends(queue: queueA, state: memory.state, payloads: memory.payloads),
            handler: ClosureHandler { input, _ in await gate.wait(); return input }, configuration: configurationA)
        var configurationB = fastAgent("agent-b", concurrency: 1)
        configurationB.leaseDuration = .seconds(2)
        configurationB.heartbeatInterval = .milliseconds(200)
        let agentB = try Agent(
            backends: GridBackends(queue: queueB, state: memory.state, payloads: memory.payloads),
            handler: ClosureHandler { input, _ in input }, configuration: configurationB)
        try await withAgent(agentA) {
            try await waitUntil("agent A runs the task") { agentA.ownedCount == 1 }
            queueA.failExtends(true)
            try await withAgent(agentB) {
                try await waitUntil("agent B watches the message") { agentB.watchedCount == 1 }
                // Three seconds, fifteen of B's heartbeats: handed back at each, the message would be
                // delivered over and over, and dead-lettered at its third delivery.
                let reaper = Reaper(backends: memory)
                let start = ContinuousClock.now
                while ContinuousClock.now < start + .seconds(3) {
                    let report = try await reaper.runOnce()
                    let record = try await client.task(id)
                    #expect(report == ReaperReport(), "\(report); task \(record); max delivery \(queueB.maxDeliveryCount)")
                    try await Task.sleep(for: .milliseconds(200))
                }
                #expect(queueB.maxDeliveryCount == 2, "delivered once to A and once to B")
                #expect(try await client.task(id).state == .processing)
                gate.open()
                try await waitUntil("the task finished") { try await client.task(id).state == .finished }
                try await waitUntil("agent B let go of the message") { agentB.watchedCount == 0 }
            }
        }
        #expect(try await client.output(id) == [7])
        #expect(try await memory.queue.depth().values.reduce(0) { $0 + $1.waiting + $1.inFlight } == 0, "no message is left")
    }

    /// An agent whose watched messages cannot be looked at (its queue's extensions fail) still renews
    /// the state leases of the tasks it runs itself: none of them is reaped.
    @Test func aFailingWatchDoesNotStopTheAgentRenewingItsOwnLeases() async throws {
        let memory = memoryBackends()
        let queue = QueueProxy(memory.queue)
        let client = GridClient(backends: memory)
        let session = try await client.createSession()
        try await client.submit(session.id, inputs: [[1]])
        let gate = Gate()
        var configuration = fastAgent("agent-b", concurrency: 2)
        // Renewals come 1.5 s (three intervals) before expiry, so a loaded machine (the whole suite runs
        // in parallel) renews in time; a few lease durations still fit in the test.
        configuration.leaseDuration = .seconds(2)
        configuration.heartbeatInterval = .milliseconds(500)
        let agent = try Agent(
            backends: GridBackends(queue: queue, state: memory.state, payloads: memory.payloads),
            handler: ClosureHandler { input, _ in await gate.wait(); return input }, configuration: configuration)
        try await withAgent(agent) {
            try await waitUntil("the agent runs one task") { agent.ownedCount == 1 }
            // Another task, held by someone else, whose message reaches the agent: it watches it.
            let other = try await memory.state.beginSubmission(.begin(session: session.id, key: .random(), count: 1, at: Date())).taskIDs[0]
            try await memory.state.createTasks([
                TaskRecord(id: other, state: .processing, owner: AgentID("elsewhere"), leaseExpiry: Date().addingTimeInterval(600), submittedAt: Date(), attempt: 1)
            ])
            try await memory.queue.enqueue([QueuedTask(id: other, priority: 0)])
            try await waitUntil("the agent watches the other task's message") { agent.watchedCount >= 1 }
            queue.failExtends(true)
            // Two and a half lease durations: without renewals the agent's own lease would be reaped.
            let reaper = Reaper(backends: memory)
            let start = ContinuousClock.now
            while ContinuousClock.now < start + .seconds(5) {
                #expect(try await reaper.runOnce().requeued == 0, "the agent's own task was reaped")
                try await Task.sleep(for: .milliseconds(200))
            }
            queue.failExtends(false)
            gate.open()
        }
    }

    /// The reply of a claim is lost: the agent sends the claim again with the same token, wins the
    /// same attempt, and runs the task at once, with no retry charged.
    @Test func aClaimWhoseReplyWasLostIsSentAgainWithItsToken() async throws {
        let memory = memoryBackends()
        let state = StateFaults()
        let client = GridClient(backends: memory)
        let session = try await client.createSession()
        let ids = try await client.submit(session.id, inputs: (0..<3).map { [UInt8($0)] })
        state.loseClaimReplies(1)
        var configuration = fastAgent(concurrency: 4)
        configuration.leaseDuration = .seconds(60)
        let agent = try Agent(
            backends: GridBackends(queue: memory.queue, state: state.wrap(memory.state), payloads: memory.payloads), handler: ClosureHandler { input, _ in input },
            configuration: configuration)
        try await withAgent(agent) {
            try await waitUntil("every task finished") { try await client.counts(session.id)[.finished] == 3 }
        }
        for id in ids {
            let record = try await client.task(id)
            #expect(record.attempt == 1)
            #expect(record.retries == 0)
        }
    }

    /// The reply of a finish is lost: the agent's retry finds the task finished by that very attempt,
    /// acknowledges its message and keeps its output.
    @Test func aFinishWhoseReplyWasLostStillCounts() async throws {
        let memory = memoryBackends()
        let state = StateFaults()
        let client = GridClient(backends: memory)
        let session = try await client.createSession()
        let id = try await client.submit(session.id, inputs: [[9]])[0]
        state.loseFinishReplies(1)
        var configuration = fastAgent(concurrency: 1)
        configuration.inlineOutputLimit = 16
        let agent = try Agent(
            backends: GridBackends(queue: memory.queue, state: state.wrap(memory.state), payloads: memory.payloads),
            handler: ClosureHandler { _, _ in self.big("X") }, configuration: configuration)
        try await withAgent(agent) {
            try await waitUntil("the task finished and its message is gone") {
                let depth = try await memory.queue.depth().values.reduce(0) { $0 + $1.waiting + $1.inFlight }
                return try await client.task(id).state == .finished && depth == 0
            }
        }
        #expect(try await client.output(id) == big("X"))
    }
}

/// A gate that ignores cancellation: what a stuck worker looks like to the agent.
final class StubbornGate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { continuation in
            let resume = state.withLock { state -> Bool in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if resume { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}
