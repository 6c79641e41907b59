import Foundation
import GridKernel
import Synchronization

/// Which calls of a wrapped backend fail: the numbers (from 1) of the calls that throw
/// ``GridKernel/GridError/Code/unavailable``, as a dropped connection would.
final class Faults: Sendable {
    private let state = Mutex<(calls: Int, failing: Set<Int>)>((0, []))

    /// Makes calls number `numbers` (counted from now) fail.
    func fail(calls numbers: Set<Int>) {
        state.withLock { $0 = (0, numbers) }
    }

    /// Stops injecting failures.
    func heal() { fail(calls: []) }

    /// Counts a call and throws if it is one of the failing ones.
    func check(_ what: String) throws {
        let failing = state.withLock { state -> Bool in
            state.calls += 1
            return state.failing.contains(state.calls)
        }
        if failing { throw GridError.unavailable("injected failure of \(what)", backend: "conformance") }
    }
}

/// A queue whose `enqueue` fails on the calls ``Faults`` names.
struct FaultyQueue: TaskQueue {
    let base: any TaskQueue
    let faults: Faults

    func enqueue(_ tasks: [QueuedTask]) async throws {
        try faults.check("enqueue")
        try await base.enqueue(tasks)
    }

    func lease(max: Int, duration: Duration, order: PriorityOrder, wait: Duration) async throws -> [Lease] {
        try await base.lease(max: max, duration: duration, order: order, wait: wait)
    }

    func extend(_ leases: [Lease], duration: Duration) async throws -> [Lease] { try await base.extend(leases, duration: duration) }
    func acknowledge(_ leases: [Lease]) async throws { try await base.acknowledge(leases) }
    func release(_ leases: [Lease], delay: Duration) async throws { try await base.release(leases, delay: delay) }
    func depth() async throws -> [Int: QueueDepth] { try await base.depth() }
}

/// A state store that forwards every call to another and lets a test break single calls: `intercept`
/// runs before each call (`applied` false) and after it returned (`applied` true, the call took
/// effect), with the operation's name (`claim`, `heartbeat`, `finish`, `createTasks`, …); what it throws,
/// the call throws. Throwing after the call is a lost reply; before it, a call that never arrived.
public struct InterceptingStateStore: StateStore {
    /// One point a call passes.
    public struct Interception: Sendable {
        /// The protocol requirement, e.g. `claim`.
        public var operation: String
        /// Whether the base store has carried the call out.
        public var applied: Bool
    }

    private let base: any StateStore
    private let intercept: @Sendable (Interception) throws -> Void

    /// Wraps `base`.
    public init(_ base: any StateStore, intercept: @escaping @Sendable (Interception) throws -> Void) {
        self.base = base
        self.intercept = intercept
    }

    private func call<T>(_ operation: String, _ body: () async throws -> T) async throws -> T {
        try intercept(Interception(operation: operation, applied: false))
        let result = try await body()
        try intercept(Interception(operation: operation, applied: true))
        return result
    }

    public func createSession(_ session: SessionRecord) async throws { try await call("createSession") { try await base.createSession(session) } }
    public func session(_ id: SessionID) async throws -> SessionRecord { try await call("session") { try await base.session(id) } }
    public func sessions(after cursor: String?, limit: Int) async throws -> Page<SessionRecord> {
        try await call("sessions") { try await base.sessions(after: cursor, limit: limit) }
    }
    public func beginSubmission(_ submission: SubmissionRecord) async throws -> SubmissionRecord {
        try await call("beginSubmission") { try await base.beginSubmission(submission) }
    }
    public func updateSubmission(_ submission: SubmissionRecord, expectedVersion: Int) async throws -> Bool {
        try await call("updateSubmission") { try await base.updateSubmission(submission, expectedVersion: expectedVersion) }
    }
    public func stalledSubmissions(before date: Date, limit: Int) async throws -> [SubmissionRecord] {
        try await call("stalledSubmissions") { try await base.stalledSubmissions(before: date, limit: limit) }
    }
    public func createTasks(_ tasks: [TaskRecord]) async throws { try await call("createTasks") { try await base.createTasks(tasks) } }
    public func claim(_ ids: [TaskID], owner: AgentID, token: ClaimToken, leaseExpiry: Date, now: Date) async throws -> [TaskRecord] {
        try await call("claim") { try await base.claim(ids, owner: owner, token: token, leaseExpiry: leaseExpiry, now: now) }
    }
    public func heartbeat(_ attempts: [TaskAttempt], owner: AgentID, leaseExpiry: Date) async throws -> Set<TaskID> {
        try await call("heartbeat") { try await base.heartbeat(attempts, owner: owner, leaseExpiry: leaseExpiry) }
    }
    public func finish(_ completions: [TaskCompletion], owner: AgentID, at: Date) async throws -> Set<TaskID> {
        try await call("finish") { try await base.finish(completions, owner: owner, at: at) }
    }
    public func fail(_ failures: [TaskFailure], owner: AgentID, at: Date) async throws -> [TaskID: TaskState] {
        try await call("fail") { try await base.fail(failures, owner: owner, at: at) }
    }
    public func release(_ attempts: [TaskAttempt], owner: AgentID) async throws -> Set<TaskID> {
        try await call("release") { try await base.release(attempts, owner: owner) }
    }
    public func expire(_ ids: [TaskID], now: Date) async throws -> [TaskID: TaskState] { try await call("expire") { try await base.expire(ids, now: now) } }
    public func forceFail(_ failures: [TaskFailure], at: Date) async throws -> Set<TaskID> {
        try await call("forceFail") { try await base.forceFail(failures, at: at) }
    }
    public func cancel(_ ids: [TaskID], at: Date) async throws -> CancelCounts { try await call("cancel") { try await base.cancel(ids, at: at) } }
    public func cancelSession(_ id: SessionID, at: Date) async throws -> CancelCounts {
        try await call("cancelSession") { try await base.cancelSession(id, at: at) }
    }
    public func deleteSession(_ id: SessionID) async throws -> Int { try await call("deleteSession") { try await base.deleteSession(id) } }
    public func task(_ id: TaskID) async throws -> TaskRecord { try await call("task") { try await base.task(id) } }
    public func tasks(_ ids: [TaskID]) async throws -> [TaskRecord] { try await call("tasks") { try await base.tasks(ids) } }
    public func counts(_ session: SessionID) async throws -> StateCounts { try await call("counts") { try await base.counts(session) } }
    public func tasks(_ session: SessionID, state: TaskState, after cursor: String?, limit: Int) async throws -> Page<TaskRecord> {
        try await call("tasks") { try await base.tasks(session, state: state, after: cursor, limit: limit) }
    }
    public func expiredLeases(now: Date, limit: Int) async throws -> [TaskRecord] {
        try await call("expiredLeases") { try await base.expiredLeases(now: now, limit: limit) }
    }
    public func completions(_ session: SessionID, after sequence: Int, limit: Int) async throws -> [TaskRecord] {
        try await call("completions") { try await base.completions(session, after: sequence, limit: limit) }
    }
    public func waitForCompletions(_ session: SessionID, after sequence: Int, timeout: Duration) async throws -> Bool {
        try await call("waitForCompletions") { try await base.waitForCompletions(session, after: sequence, timeout: timeout) }
    }
}
