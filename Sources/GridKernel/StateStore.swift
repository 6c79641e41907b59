import Foundation

/// A task that ran to completion, as the agent reports it.
public struct TaskCompletion: Sendable, Hashable {
    /// The task.
    public var id: TaskID
    /// The output when it is small enough to keep in the task record; `nil` when it was written to
    /// the payload store under ``PayloadKey/output(_:)``.
    public var output: [UInt8]?

    /// Creates a completion.
    public init(id: TaskID, output: [UInt8]?) {
        self.id = id
        self.output = output
    }
}

/// A failed run, as the agent reports it.
public struct TaskFailure: Sendable, Hashable {
    /// The task.
    public var id: TaskID
    /// The error text to keep (the handler's error, the tail of a process' stderr, …).
    public var message: String
    /// Whether another run may succeed. A retryable failure of a task whose retries are below its
    /// maximum puts it back to `pending`; otherwise the task is `failed`.
    public var retryable: Bool

    /// Creates a failure.
    public init(id: TaskID, message: String, retryable: Bool = true) {
        self.id = id
        self.message = message
        self.retryable = retryable
    }
}

/// The durable truth about sessions and tasks; every transition is conditional and atomic.
///
/// Implementing: each transition is one conditional write per task (a `WHERE state = … AND owner = …`
/// update, a Lua script, a DynamoDB `ConditionExpression`), batched per call where the technology
/// allows. The retry rule is fixed: a task that fails or whose lease expires goes back to `pending` with
/// `retries + 1` while `retries < maxRetries`, and is `failed` otherwise; ``TaskRecord/afterFailure(message:retryable:at:)``
/// computes it. Run ``StateConformance`` against the backend.
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

    /// Atomically reserves `count` consecutive task indices in a session and returns them.
    ///
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/conflict`` if the
    ///   session was cancelled; ``GridError/Code/unavailable``.
    func reserveTaskIndices(_ session: SessionID, count: Int) async throws -> Range<Int>

    /// Creates task records. Idempotent: a task that already exists is left as it is, so a submission
    /// that failed half-way can be repeated.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func createTasks(_ tasks: [TaskRecord]) async throws

    /// Claims tasks for `owner`: each task that is `pending` and unowned becomes `processing`, owned by
    /// `owner`, with `startedAt = now` and the given lease expiry. Exactly one of several concurrent
    /// claimers of a task wins.
    ///
    /// - Returns: the records of the tasks this call won, as they are after the claim.
    /// - Throws: ``GridError/Code/unavailable``.
    func claim(_ ids: [TaskID], owner: AgentID, leaseExpiry: Date, now: Date) async throws -> [TaskRecord]

    /// Moves the lease expiry of tasks that are `processing` and owned by `owner`.
    ///
    /// - Returns: the tasks still owned; the others were cancelled or their lease was reaped.
    /// - Throws: ``GridError/Code/unavailable``.
    func heartbeat(_ ids: [TaskID], owner: AgentID, leaseExpiry: Date) async throws -> Set<TaskID>

    /// Marks tasks `finished` if they are `processing` and owned by `owner`, storing inline outputs.
    ///
    /// - Returns: the tasks that were finished; the others were no longer owned and their output must
    ///   be discarded.
    /// - Throws: ``GridError/Code/unavailable``.
    func finish(_ completions: [TaskCompletion], owner: AgentID, at: Date) async throws -> Set<TaskID>

    /// Records failed runs of tasks that are `processing` and owned by `owner`, applying the retry rule.
    ///
    /// - Returns: the new state (`pending` or `failed`) of each task that was still owned.
    /// - Throws: ``GridError/Code/unavailable``.
    func fail(_ failures: [TaskFailure], owner: AgentID, at: Date) async throws -> [TaskID: TaskState]

    /// Reaps tasks whose lease expired: each task that is `processing` with a lease expiry before `now`
    /// goes back to `pending` (owner cleared, `retries + 1`, last error "lease expired") or, once its
    /// retries reached the maximum, to `failed`.
    ///
    /// - Returns: the new state of each task that was reaped; a task whose lease was renewed meanwhile
    ///   is left out.
    /// - Throws: ``GridError/Code/unavailable``.
    func expire(_ ids: [TaskID], now: Date) async throws -> [TaskID: TaskState]

    /// Marks tasks `failed` whatever their owner, unless they are terminal (used when the queue
    /// dead-letters a message).
    ///
    /// - Returns: the tasks that were failed.
    /// - Throws: ``GridError/Code/unavailable``.
    func forceFail(_ failures: [TaskFailure], at: Date) async throws -> Set<TaskID>

    /// Cancels tasks that are not terminal (owner cleared).
    ///
    /// - Returns: how many were pending and how many processing.
    /// - Throws: ``GridError/Code/unavailable``.
    func cancel(_ ids: [TaskID], at: Date) async throws -> CancelCounts

    /// Marks a session cancelled (later submissions are refused) and cancels all its non-terminal tasks.
    ///
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/unavailable``.
    func cancelSession(_ id: SessionID, at: Date) async throws -> CancelCounts

    /// Removes a session's record and all of its task records, whatever their states, and returns how
    /// many task records were removed. Callers cancel the session first; transitions on a deleted task
    /// later fail as if the lease were lost (heartbeat, finish and fail leave it out of their results).
    ///
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/unavailable``.
    func deleteSession(_ id: SessionID) async throws -> Int

    /// Reads one task.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    func task(_ id: TaskID) async throws -> TaskRecord

    /// Counts a session's tasks by state.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func counts(_ session: SessionID) async throws -> StateCounts

    /// Pages through a session's tasks in one state, in index order.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a malformed cursor; ``GridError/Code/unavailable``.
    func tasks(_ session: SessionID, state: TaskState, after cursor: String?, limit: Int) async throws -> Page<TaskRecord>

    /// Finds up to `limit` tasks that are `processing` with a lease expiry before `now`, without
    /// scanning every task (an index on the lease expiry).
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func expiredLeases(now: Date, limit: Int) async throws -> [TaskRecord]
}

extension TaskRecord {
    /// The record after a failed run or an expired lease, by the grid's one retry rule: back to
    /// `pending` with `retries + 1` while `retries < maxRetries` and the failure is retryable,
    /// otherwise `failed`.
    public func afterFailure(message: String, retryable: Bool, at date: Date) -> TaskRecord {
        var next = self
        next.owner = nil
        next.leaseExpiry = nil
        next.lastError = message
        if retryable && retries < maxRetries {
            next.state = .pending
            next.retries += 1
        } else {
            next.state = .failed
            next.completedAt = date
        }
        return next
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
