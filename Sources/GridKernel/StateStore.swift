import Foundation

/// A task that ran to completion, as the agent reports it.
public struct TaskCompletion: Sendable, Hashable {
    /// The task.
    public var id: TaskID
    /// The run that completed (``TaskRecord/attempt``); only the task's current attempt is finished.
    public var attempt: Int
    /// The output when it is small enough to keep in the task record; `nil` when it was written to
    /// the payload store under ``PayloadKey/output(_:attempt:)``.
    public var output: [UInt8]?

    /// Creates a completion.
    public init(id: TaskID, attempt: Int, output: [UInt8]?) {
        self.id = id
        self.attempt = attempt
        self.output = output
    }
}

/// A failed run, as the agent reports it (or a dead letter, for ``StateStore/forceFail(_:at:)``).
public struct TaskFailure: Sendable, Hashable {
    /// The task.
    public var id: TaskID
    /// The run that failed (``TaskRecord/attempt``); ``StateStore/forceFail(_:at:)`` ignores it.
    public var attempt: Int
    /// The error text to keep (the handler's error, the tail of a process' stderr, …).
    public var message: String
    /// Whether another run may succeed. A retryable failure of a task whose retries are below its
    /// maximum puts it back to `pending`; otherwise the task is `failed`.
    public var retryable: Bool

    /// Creates a failure.
    public init(id: TaskID, attempt: Int = 0, message: String, retryable: Bool = true) {
        self.id = id
        self.attempt = attempt
        self.message = message
        self.retryable = retryable
    }
}

/// The durable truth about sessions, submissions and tasks; every transition is conditional and atomic.
///
/// Implementing: each transition is one conditional write per task (a `WHERE state = … AND owner = …
/// AND attempt = …` update, a Lua script, a DynamoDB `ConditionExpression`), batched per call where the
/// technology allows. What each transition requires and writes is stated once, by the functions of
/// ``TaskRecord`` in TaskRules.swift (``TaskRecord/claimed(by:token:leaseExpiry:now:)``,
/// ``TaskRecord/finished(by:attempt:output:at:)``, ``TaskRecord/afterFailure(message:retryable:at:)``, …)
/// and, for submissions, by those of ``SubmissionRecord``: translate them, and run ``StateConformance``
/// (module `GridKernelConformance`), which checks the translation against those functions.
public protocol StateStore: Sendable {
    /// Creates a session.
    ///
    /// - Throws: ``GridError/Code/conflict`` if it exists; ``GridError/Code/unavailable``.
    func createSession(_ session: SessionRecord) async throws

    /// Reads a session.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    func session(_ id: SessionID) async throws -> SessionRecord

    /// Lists sessions in id order, `limit` at a time, starting after the cursor of the previous page.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a malformed cursor; ``GridError/Code/unavailable``.
    func sessions(after cursor: String?, limit: Int) async throws -> Page<SessionRecord>

    /// Begins a submission: atomically reserves `submission.count` consecutive task indices in its
    /// session (the session's ``SessionRecord/taskCount`` grows by as many) and stores the submission
    /// with ``SubmissionRecord/first`` set to the first of them, every other field as given (see
    /// ``SubmissionRecord/begin(session:key:count:at:)``). When the session already has a submission
    /// with the same key, nothing is reserved and that submission is returned as it is stored, whatever
    /// its count and state (the caller compares).
    ///
    /// - Returns: the stored submission.
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/conflict`` if the
    ///   session was cancelled (and has no submission with this key); ``GridError/Code/invalidArgument``
    ///   for a negative count; ``GridError/Code/unavailable``.
    func beginSubmission(_ submission: SubmissionRecord) async throws -> SubmissionRecord

    /// Replaces the stored submission with the same session and key by `submission` (its `sent`,
    /// `state`, `version` and `updatedAt`), if the stored one's ``SubmissionRecord/version`` is
    /// `expectedVersion`.
    ///
    /// - Returns: whether it was replaced; `false` when the version differs or the submission is gone.
    /// - Throws: ``GridError/Code/unavailable``.
    func updateSubmission(_ submission: SubmissionRecord, expectedVersion: Int) async throws -> Bool

    /// Finds up to `limit` submissions that are open or being repaired and whose `updatedAt` is before
    /// `date`, oldest first, without reading every submission (complete ones cost nothing here).
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func stalledSubmissions(before date: Date, limit: Int) async throws -> [SubmissionRecord]

    /// Creates task records. Idempotent: a task that already exists is left as it is, so a submission
    /// that failed half-way can be repeated.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func createTasks(_ tasks: [TaskRecord]) async throws

    /// Claims tasks for `owner`, by ``TaskRecord/claimed(by:token:leaseExpiry:now:)``: each task that is
    /// `pending` and unowned starts a new attempt. Exactly one of several concurrent claimers of a task
    /// wins; the same call sent again (same owner and token) wins what it had won, unchanged.
    ///
    /// - Returns: the records of the tasks this call won, as they are after the claim.
    /// - Throws: ``GridError/Code/unavailable``.
    func claim(_ ids: [TaskID], owner: AgentID, token: ClaimToken, leaseExpiry: Date, now: Date) async throws -> [TaskRecord]

    /// Moves the lease expiry of the attempts that are current and owned by `owner`
    /// (``TaskRecord/heartbeated(by:attempt:leaseExpiry:)``).
    ///
    /// - Returns: the tasks still held; the others were cancelled, reaped, or belong to a newer attempt.
    /// - Throws: ``GridError/Code/unavailable``.
    func heartbeat(_ attempts: [TaskAttempt], owner: AgentID, leaseExpiry: Date) async throws -> Set<TaskID>

    /// Marks tasks `finished` if the completed attempt is current and owned by `owner`, storing inline
    /// outputs (``TaskRecord/finished(by:attempt:output:at:)``).
    ///
    /// - Returns: the tasks that were finished; the others were no longer held and their output must
    ///   be discarded.
    /// - Throws: ``GridError/Code/unavailable``.
    func finish(_ completions: [TaskCompletion], owner: AgentID, at: Date) async throws -> Set<TaskID>

    /// Records failed runs of attempts that are current and owned by `owner`, by the retry rule
    /// (``TaskRecord/failed(by:attempt:message:retryable:at:)``).
    ///
    /// - Returns: the new state (`pending` or `failed`) of each task that was still held.
    /// - Throws: ``GridError/Code/unavailable``.
    func fail(_ failures: [TaskFailure], owner: AgentID, at: Date) async throws -> [TaskID: TaskState]

    /// Gives tasks back unrun: each attempt that is current and owned by `owner` goes back to `pending`
    /// with no retry charged (``TaskRecord/released(by:attempt:)``).
    ///
    /// - Returns: the tasks released.
    /// - Throws: ``GridError/Code/unavailable``.
    func release(_ attempts: [TaskAttempt], owner: AgentID) async throws -> Set<TaskID>

    /// Reaps tasks whose lease expired before `now` (``TaskRecord/expired(now:)``): back to `pending` with
    /// `retries + 1` and the error "lease expired", or `failed` once retries reached the maximum.
    ///
    /// - Returns: the new state of each task that was reaped; a task whose lease was renewed meanwhile
    ///   is left out.
    /// - Throws: ``GridError/Code/unavailable``.
    func expire(_ ids: [TaskID], now: Date) async throws -> [TaskID: TaskState]

    /// Marks tasks `failed` whatever their owner, unless they are terminal
    /// (``TaskRecord/forceFailed(message:at:)``): a dead-lettered message, a task an interrupted
    /// submission left without its input.
    ///
    /// - Returns: the tasks that were failed.
    /// - Throws: ``GridError/Code/unavailable``.
    func forceFail(_ failures: [TaskFailure], at: Date) async throws -> Set<TaskID>

    /// Cancels tasks that are not terminal (``TaskRecord/cancelled(at:)``).
    ///
    /// - Returns: how many were pending and how many processing.
    /// - Throws: ``GridError/Code/unavailable``.
    func cancel(_ ids: [TaskID], at: Date) async throws -> CancelCounts

    /// Marks a session cancelled (later submissions are refused) and cancels all its non-terminal tasks.
    ///
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/unavailable``.
    func cancelSession(_ id: SessionID, at: Date) async throws -> CancelCounts

    /// Removes a session's record, all of its task records whatever their states, and its submissions,
    /// and returns how many task records were removed. Callers cancel the session first; transitions
    /// on a deleted task later fail as if the lease were lost (heartbeat, finish and fail leave it out
    /// of their results).
    ///
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/unavailable``.
    func deleteSession(_ id: SessionID) async throws -> Int

    /// Reads one task.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    func task(_ id: TaskID) async throws -> TaskRecord

    /// Reads the tasks that exist among `ids` (in any order; unknown ones are left out), in as few
    /// round trips as the technology allows.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func tasks(_ ids: [TaskID]) async throws -> [TaskRecord]

    /// Counts a session's tasks by state, from counters the store keeps with the transitions: the cost
    /// does not grow with the number of tasks (no scan), and the counts are exact after every
    /// transition, whatever crashed or was retried.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func counts(_ session: SessionID) async throws -> StateCounts

    /// Reads a session's terminal tasks in completion order: those whose
    /// ``TaskRecord/completionSequence`` is `sequence + 1`, `sequence + 2`, … in that order, at most
    /// `limit` of them. The answer is a contiguous run of numbers: a store whose indexes may lag its
    /// writes stops before the first number it cannot read yet, so a reader that passes the last number
    /// it got never misses nor repeats a task. An unknown (or deleted) session has none.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a negative `sequence` or a `limit` below 1;
    ///   ``GridError/Code/unavailable``.
    func completions(_ session: SessionID, after sequence: Int, limit: Int) async throws -> [TaskRecord]

    /// Waits until the session has a terminal task numbered above `sequence` (its count of terminal
    /// tasks passed `sequence`), or `timeout` has passed. Stores that can be told of completions (a
    /// Redis channel, PostgreSQL's NOTIFY, a wake-up socket) implement it so that a waiter wakes within
    /// a millisecond; the default looks at ``counts(_:)`` every few milliseconds.
    ///
    /// - Returns: `true` when such a task exists; `false` when the timeout passed first.
    /// - Throws: `CancellationError` when the waiting task is cancelled; ``GridError/Code/unavailable``.
    func waitForCompletions(_ session: SessionID, after sequence: Int, timeout: Duration) async throws -> Bool

    /// Pages through a session's tasks in one state, in index order. Cursors are ``IntegerCursor``s of
    /// the last index returned: clients end a page early and resume after any task of it.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a malformed cursor; ``GridError/Code/unavailable``.
    func tasks(_ session: SessionID, state: TaskState, after cursor: String?, limit: Int) async throws -> Page<TaskRecord>

    /// Finds up to `limit` tasks that are `processing` with a lease expiry before `now`, without
    /// scanning every task (an index on the lease expiry).
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func expiredLeases(now: Date, limit: Int) async throws -> [TaskRecord]
}

extension StateStore {
    /// Looks at the session's count of terminal tasks after 1 ms, then at growing intervals up to
    /// 50 ms, until it passes `sequence` or `timeout` (real, monotonic time) has passed.
    public func waitForCompletions(_ session: SessionID, after sequence: Int, timeout: Duration) async throws -> Bool {
        try await CompletionPolling.wait(timeout: timeout) { try await counts(session).terminal > sequence }
    }
}

/// The polling loop behind the default ``StateStore/waitForCompletions(_:after:timeout:)``, for
/// stores that fall back to it (e.g. when their notification channel is down).
public enum CompletionPolling {
    /// The first and the longest pause between two looks.
    public static let interval: ClosedRange<Duration> = .milliseconds(1) ... .milliseconds(50)

    /// Calls `done` at once and then after growing pauses, until it returns `true` (then `true`) or
    /// `timeout` has passed (then `false`).
    ///
    /// - Throws: what `done` throws; `CancellationError` when cancelled.
    public static func wait(timeout: Duration, until done: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var pause = interval.lowerBound
        while true {
            if try await done() { return true }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { return false }
            try await Task.sleep(for: min(pause, remaining))
            pause = min(pause * 2, interval.upperBound)
        }
    }

    /// Checks the arguments of ``StateStore/completions(_:after:limit:)``.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a negative `sequence` or a `limit` below 1.
    public static func check(after sequence: Int, limit: Int, backend: String? = nil) throws {
        guard sequence >= 0 else {
            throw GridError.invalidArgument("completion cursor is \(sequence); it must not be negative", backend: backend)
        }
        guard limit >= 1 else {
            throw GridError.invalidArgument("limit is \(limit); it must be at least 1", backend: backend)
        }
    }
}

/// The cursor of session listings, shared by every backend: the id of the last session of the
/// previous page.
public enum SessionCursor {
    /// Parses a cursor (a session id); `nil` gives `nil`.
    ///
    /// - Parameter backend: the backend named in the error, if any.
    /// - Throws: ``GridError/Code/invalidArgument`` if the cursor is not a session id.
    public static func parse(_ cursor: String?, backend: String? = nil) throws -> SessionID? {
        guard let cursor else { return nil }
        guard let id = try? SessionID(cursor) else {
            throw GridError.invalidArgument("cursor '\(cursor)' is malformed; pass the 'next' value of the previous page", backend: backend)
        }
        return id
    }
}

/// Cursor helpers shared by backends whose cursors are integers (task index, offset).
public enum IntegerCursor {
    /// Parses a cursor made by ``make(_:)``; `nil` gives `nil`.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` if the cursor is not an integer.
    /// - Parameter backend: the backend named in the error, if any.
    public static func parse(_ cursor: String?, backend: String? = nil) throws -> Int? {
        guard let cursor else { return nil }
        guard let value = Int(cursor) else {
            throw GridError.invalidArgument("cursor '\(cursor)' is malformed; pass the 'next' value of the previous page", backend: backend)
        }
        return value
    }

    /// Makes a cursor from an integer.
    public static func make(_ value: Int) -> String { String(value) }
}
