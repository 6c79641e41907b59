import Foundation
import GridKernel
import NIOCore
import PostgresNIO

/// The state store in PostgreSQL: sessions in the `session` table, submissions in the `submission`
/// table, tasks in the `task` table (see `PostgresSchema.swift`).
///
/// Every transition is one conditional statement for the whole batch,
/// `UPDATE task … FROM unnest(sessions, indices, attempts, …) WHERE <expected state, owner and
/// attempt> RETURNING …`: one round trip and one transaction per call. Each statement translates one
/// rule of the kernel's TaskRules.swift (named in its doc comment). Exactly one of several concurrent
/// claimers wins a task because PostgreSQL re-checks the `WHERE` clause on the newest row version once
/// the other writer commits. Batches are sorted by task id, so concurrent batches lock rows in the same
/// order; a batch naming a task twice is reduced to one entry per task first, as the kernel's rules
/// apply once per task.
public struct PostgresStateStore: StateStore {
    /// The database holding the state.
    public let database: PostgresDatabase

    /// Creates a state store on `database`.
    public init(database: PostgresDatabase) {
        self.database = database
    }

    var backend: String { PostgresDatabase.backendName }
    var sessionTable: String { database.table("session") }
    private var taskTable: String { database.table("task") }
    var submissionTable: String { database.table("submission") }

    // MARK: - Sessions

    /// Creates a session.
    ///
    /// - Throws: ``GridKernel/GridError/Code/conflict`` if a session with this id exists;
    ///   ``GridKernel/GridError/Code/unavailable``.
    public func createSession(_ session: SessionRecord) async throws {
        let labels = try Self.encodeLabels(session.options.labels)
        let created = try await database.collect(
            "createSession",
            """
            INSERT INTO \(unescaped: sessionTable) (id, priority, max_retries, task_timeout, labels, created_at, task_count, cancelled)
            VALUES (\(session.id.rawValue), \(session.options.priority), \(session.options.maxRetries),
                    \(session.options.taskTimeout?.timeInterval), \(labels), \(session.createdAt.timeIntervalSince1970),
                    \(session.taskCount), \(session.cancelled))
            ON CONFLICT (id) DO NOTHING RETURNING id
            """
        ) { _ in true }
        guard !created.isEmpty else {
            throw GridError(.conflict, "session \(session.id) already exists; pick another id", backend: backend)
        }
    }

    /// Reads a session.
    ///
    /// - Throws: ``GridKernel/GridError/Code/notFound``; ``GridKernel/GridError/Code/unavailable``.
    public func session(_ id: SessionID) async throws -> SessionRecord {
        let records = try await database.collect(
            "session", "SELECT \(unescaped: Self.sessionColumns) FROM \(unescaped: sessionTable) WHERE id = \(id.rawValue)",
            Self.decodeSession)
        guard let record = records.first else { throw GridError.notFound("session \(id) does not exist", backend: backend) }
        return record
    }

    /// Lists sessions in id order; the cursor is the id of the last session of the previous page.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a malformed cursor or a `limit`
    ///   below 1; ``GridKernel/GridError/Code/unavailable``.
    public func sessions(after cursor: String?, limit: Int) async throws -> Page<SessionRecord> {
        try Self.checkLimit(limit)
        let after = try SessionCursor.parse(cursor, backend: PostgresDatabase.backendName)?.rawValue
        let records = try await database.collect(
            "sessions",
            """
            SELECT \(unescaped: Self.sessionColumns) FROM \(unescaped: sessionTable) WHERE id > \(after ?? "") ORDER BY id LIMIT \(limit + 1)
            """,
            Self.decodeSession)
        guard records.count > limit else { return Page(items: records, next: nil) }
        let items = Array(records.prefix(limit))
        return Page(items: items, next: items.last?.id.rawValue)
    }

    /// Removes a session's record, its submissions and all of its task records, whatever their
    /// states, in one statement.
    ///
    /// - Returns: how many task records were removed.
    /// - Throws: ``GridKernel/GridError/Code/notFound`` when the session does not exist;
    ///   ``GridKernel/GridError/Code/unavailable``.
    public func deleteSession(_ id: SessionID) async throws -> Int {
        let rows = try await database.collect(
            "deleteSession",
            """
            WITH gone AS (DELETE FROM \(unescaped: sessionTable) WHERE id = \(id.rawValue) RETURNING id),
                 submissions AS (DELETE FROM \(unescaped: submissionTable) WHERE session = \(id.rawValue)),
                 tasks AS (DELETE FROM \(unescaped: taskTable) WHERE session = \(id.rawValue) RETURNING 1)
            SELECT (SELECT count(*) FROM gone)::int8, (SELECT count(*) FROM tasks)::int8
            """
        ) { row in try row.decode((Int, Int).self) }
        guard let (sessions, tasks) = rows.first, sessions > 0 else {
            throw GridError.notFound("session \(id) does not exist", backend: backend)
        }
        return tasks
    }

    // MARK: - Tasks

    /// Inserts task records, leaving existing ones as they are (`ON CONFLICT DO NOTHING`), in one statement.
    ///
    /// A submission's records differ only in their index: such a batch sends one record and the list
    /// of indices; other batches send one array per column.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func createTasks(_ tasks: [TaskRecord]) async throws {
        guard let first = tasks.first else { return }
        let uniform = tasks.allSatisfy { task in
            var twin = task
            twin.id = first.id
            return twin == first && task.id.session == first.id.session
        }
        if uniform && first.output == nil {
            try await database.execute(
                "createTasks",
                """
                INSERT INTO \(unescaped: taskTable) (\(unescaped: Self.taskColumns))
                SELECT \(first.id.session.rawValue), i, \(first.state.rawValue), \(first.owner?.rawValue),
                       \(first.leaseExpiry?.timeIntervalSince1970), \(first.retries), \(first.maxRetries), \(first.priority),
                       \(first.timeout?.timeInterval), \(first.submittedAt.timeIntervalSince1970),
                       \(first.startedAt?.timeIntervalSince1970), \(first.completedAt?.timeIntervalSince1970), \(first.lastError), NULL::bytea,
                       \(first.attempt), \(first.claimToken?.rawValue)
                FROM unnest(\(tasks.map(\.id.index))::int8[]) AS i
                ON CONFLICT DO NOTHING
                """)
            if tasks.count >= Self.analyzeThreshold { try await database.refreshStatistics() }
            return
        }
        // Arrays cannot hold NULL through the driver: NaN stands for a missing date or timeout, and
        // flags for missing texts and outputs.
        func seconds(_ value: Date?) -> Double { value?.timeIntervalSince1970 ?? .nan }
        let sessions: [String] = tasks.map(\.id.session.rawValue)
        let indices: [Int] = tasks.map(\.id.index)
        let states: [String] = tasks.map(\.state.rawValue)
        let hasOwner: [Bool] = tasks.map { $0.owner != nil }
        let owners: [String] = tasks.map { $0.owner?.rawValue ?? "" }
        let leaseExpiries: [Double] = tasks.map { seconds($0.leaseExpiry) }
        let retries: [Int] = tasks.map(\.retries)
        let maxRetries: [Int] = tasks.map(\.maxRetries)
        let priorities: [Int] = tasks.map(\.priority)
        let timeouts: [Double] = tasks.map { $0.timeout?.timeInterval ?? .nan }
        let submitted: [Double] = tasks.map { $0.submittedAt.timeIntervalSince1970 }
        let started: [Double] = tasks.map { seconds($0.startedAt) }
        let completed: [Double] = tasks.map { seconds($0.completedAt) }
        let hasError: [Bool] = tasks.map { $0.lastError != nil }
        let errors: [String] = tasks.map { $0.lastError ?? "" }
        let hasOutput: [Bool] = tasks.map { $0.output != nil }
        let outputs: [ByteBuffer] = tasks.map { ByteBuffer(bytes: $0.output ?? []) }
        let attempts: [Int] = tasks.map(\.attempt)
        let hasToken: [Bool] = tasks.map { $0.claimToken != nil }
        let tokens: [String] = tasks.map { $0.claimToken?.rawValue ?? "" }
        try await database.execute(
            "createTasks",
            """
            INSERT INTO \(unescaped: taskTable) (\(unescaped: Self.taskColumns))
            SELECT s, i, st, CASE WHEN ho THEN o END, NULLIF(le, 'NaN'), r, mr, p, NULLIF(t, 'NaN'), sub,
                   NULLIF(sa, 'NaN'), NULLIF(ca, 'NaN'), CASE WHEN he THEN e END, CASE WHEN hop THEN op END, a, CASE WHEN ht THEN tk END
            FROM unnest(
                \(sessions)::text[], \(indices)::int8[], \(states)::text[], \(hasOwner)::bool[], \(owners)::text[],
                \(leaseExpiries)::float8[], \(retries)::int8[], \(maxRetries)::int8[], \(priorities)::int8[], \(timeouts)::float8[],
                \(submitted)::float8[], \(started)::float8[], \(completed)::float8[], \(hasError)::bool[], \(errors)::text[],
                \(hasOutput)::bool[], \(outputs)::bytea[], \(attempts)::int8[], \(hasToken)::bool[], \(tokens)::text[]
            ) AS j(s, i, st, ho, o, le, r, mr, p, t, sub, sa, ca, he, e, hop, op, a, ht, tk)
            ON CONFLICT DO NOTHING
            """)
        if tasks.count >= Self.analyzeThreshold { try await database.refreshStatistics() }
    }

    /// A submission at least this large refreshes the planner's statistics (``PostgresDatabase/refreshStatistics()``).
    static let analyzeThreshold = 1_000

    /// Claims tasks for `owner` by ``GridKernel/TaskRecord/claimed(by:token:leaseExpiry:now:)``: the
    /// pending, unowned tasks among `ids` start a new attempt (`attempt + 1`, this call's token), and
    /// those that are processing under this owner and token (this call, sent again) are returned as
    /// they are, in the same statement.
    ///
    /// - Returns: the records of the tasks won, in the order of `ids`.
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func claim(_ ids: [TaskID], owner: AgentID, token: ClaimToken, leaseExpiry: Date, now: Date) async throws -> [TaskRecord] {
        guard !ids.isEmpty else { return [] }
        let keys = Self.keys(ids)
        let records = try await database.collect(
            "claim",
            """
            WITH won AS (
                UPDATE \(unescaped: taskTable) AS t
                SET state = 'processing', owner = \(owner.rawValue), lease_expiry = \(leaseExpiry.timeIntervalSince1970),
                    started_at = \(now.timeIntervalSince1970), attempt = t.attempt + 1, claim_token = \(token.rawValue)
                FROM unnest(\(keys.sessions)::text[], \(keys.indices)::int8[]) AS j(s, i)
                WHERE t.session = j.s AND t.idx = j.i AND t.state = 'pending' AND t.owner IS NULL
                RETURNING \(unescaped: Self.taskColumns(prefix: "t."))
            ),
            again AS (
                SELECT \(unescaped: Self.taskColumns(prefix: "t.")) FROM \(unescaped: taskTable) AS t
                JOIN unnest(\(keys.sessions)::text[], \(keys.indices)::int8[]) AS j(s, i) ON t.session = j.s AND t.idx = j.i
                WHERE t.state = 'processing' AND t.owner = \(owner.rawValue) AND t.claim_token = \(token.rawValue)
            )
            SELECT * FROM won UNION ALL SELECT * FROM again
            """,
            Self.decodeTask)
        // RETURNING yields rows in no particular order: answer in the order asked.
        var won = Dictionary(records.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        return ids.compactMap { won.removeValue(forKey: $0) }
    }

    /// Moves the lease expiry of the current attempts `owner` runs, by
    /// ``GridKernel/TaskRecord/heartbeated(by:attempt:leaseExpiry:)``.
    ///
    /// - Returns: the tasks still held.
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func heartbeat(_ attempts: [TaskAttempt], owner: AgentID, leaseExpiry: Date) async throws -> Set<TaskID> {
        guard !attempts.isEmpty else { return [] }
        let sorted = Self.oncePerTask(attempts, id: \.id, keep: .last)
        return Set(
            try await database.collect(
                "heartbeat",
                """
                UPDATE \(unescaped: taskTable) AS t SET lease_expiry = \(leaseExpiry.timeIntervalSince1970)
                FROM unnest(\(sorted.map(\.id.session.rawValue))::text[], \(sorted.map(\.id.index))::int8[], \(sorted.map(\.attempt))::int8[])
                    AS j(s, i, a)
                WHERE t.session = j.s AND t.idx = j.i AND t.state = 'processing' AND t.owner = \(owner.rawValue) AND t.attempt = j.a
                RETURNING t.session, t.idx
                """,
                Self.decodeID))
    }

    /// Finishes the current attempts `owner` runs, storing inline outputs and clearing the last
    /// error, by ``GridKernel/TaskRecord/finished(by:attempt:output:at:)``.
    ///
    /// - Returns: the tasks that were finished.
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func finish(_ completions: [TaskCompletion], owner: AgentID, at: Date) async throws -> Set<TaskID> {
        guard !completions.isEmpty else { return [] }
        let sorted = Self.oncePerTask(completions, id: \.id, keep: .first)
        return Set(
            try await database.collect(
                "finish",
                """
                UPDATE \(unescaped: taskTable) AS t
                SET state = 'finished', \(unescaped: Self.unheld), completed_at = \(at.timeIntervalSince1970),
                    last_error = NULL, output = CASE WHEN j.h THEN j.o END
                FROM unnest(
                    \(sorted.map(\.id.session.rawValue))::text[], \(sorted.map(\.id.index))::int8[], \(sorted.map(\.attempt))::int8[],
                    \(sorted.map { $0.output != nil })::bool[], \(sorted.map { ByteBuffer(bytes: $0.output ?? []) })::bytea[]
                ) AS j(s, i, a, h, o)
                WHERE t.session = j.s AND t.idx = j.i AND t.state = 'processing' AND t.owner = \(owner.rawValue) AND t.attempt = j.a
                RETURNING t.session, t.idx
                """,
                Self.decodeID))
    }

    /// Records failed runs of the current attempts `owner` runs, by the retry rule
    /// (``GridKernel/TaskRecord/failed(by:attempt:message:retryable:at:)``), evaluated in SQL.
    ///
    /// - Returns: the new state of each task that was still held.
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func fail(_ failures: [TaskFailure], owner: AgentID, at: Date) async throws -> [TaskID: TaskState] {
        guard !failures.isEmpty else { return [:] }
        let sorted = Self.oncePerTask(failures, id: \.id, keep: .first)
        return try await applyRetryRule(
            "fail", sessions: sorted.map(\.id.session.rawValue), indices: sorted.map(\.id.index), attempts: sorted.map(\.attempt),
            retryable: sorted.map(\.retryable), messages: sorted.map(\.message), at: at,
            condition: "t.state = 'processing' AND t.owner = \(Self.literal(owner.rawValue)) AND t.attempt = j.a")
    }

    /// Gives back the current attempts `owner` runs, unrun, by
    /// ``GridKernel/TaskRecord/released(by:attempt:)``: pending again, owner and lease cleared, no
    /// retry charged.
    ///
    /// - Returns: the tasks released.
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func release(_ attempts: [TaskAttempt], owner: AgentID) async throws -> Set<TaskID> {
        guard !attempts.isEmpty else { return [] }
        let sorted = Self.oncePerTask(attempts, id: \.id, keep: .last)
        return Set(
            try await database.collect(
                "release",
                """
                UPDATE \(unescaped: taskTable) AS t SET state = 'pending', \(unescaped: Self.unheld)
                FROM unnest(\(sorted.map(\.id.session.rawValue))::text[], \(sorted.map(\.id.index))::int8[], \(sorted.map(\.attempt))::int8[])
                    AS j(s, i, a)
                WHERE t.session = j.s AND t.idx = j.i AND t.state = 'processing' AND t.owner = \(owner.rawValue) AND t.attempt = j.a
                RETURNING t.session, t.idx
                """,
                Self.decodeID))
    }

    /// Reaps the tasks among `ids` that are processing with a lease expiry before `now`, by the retry
    /// rule with the error "lease expired" (``GridKernel/TaskRecord/expired(now:)``).
    ///
    /// - Returns: the new state of each task reaped.
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func expire(_ ids: [TaskID], now: Date) async throws -> [TaskID: TaskState] {
        guard !ids.isEmpty else { return [:] }
        let keys = Self.keys(ids)
        return try await applyRetryRule(
            "expire", sessions: keys.sessions, indices: keys.indices, attempts: keys.indices.map { _ in 0 },
            retryable: keys.indices.map { _ in true }, messages: keys.indices.map { _ in TaskRecord.leaseExpiredMessage }, at: now,
            condition: "t.state = 'processing' AND t.lease_expiry < \(now.timeIntervalSince1970.description)")
    }

    /// The retry rule of ``GridKernel/TaskRecord/afterFailure(message:retryable:at:)`` in SQL: every
    /// `SET` expression sees the row as it was, so all of them read the same `retries`. `condition` is
    /// trusted SQL (a quoted owner, a number, `j.a`: the attempt named).
    private func applyRetryRule(
        _ operation: String, sessions: [String], indices: [Int], attempts: [Int], retryable: [Bool], messages: [String], at: Date,
        condition: String
    ) async throws -> [TaskID: TaskState] {
        let rows = try await database.collect(
            operation,
            """
            UPDATE \(unescaped: taskTable) AS t SET
                state = CASE WHEN j.r AND t.retries < t.max_retries THEN 'pending' ELSE 'failed' END,
                retries = t.retries + CASE WHEN j.r AND t.retries < t.max_retries THEN 1 ELSE 0 END,
                completed_at = CASE WHEN j.r AND t.retries < t.max_retries THEN t.completed_at ELSE \(at.timeIntervalSince1970) END,
                \(unescaped: Self.unheld), last_error = j.m
            FROM unnest(\(sessions)::text[], \(indices)::int8[], \(attempts)::int8[], \(retryable)::bool[], \(messages)::text[])
                AS j(s, i, a, r, m)
            WHERE t.session = j.s AND t.idx = j.i AND \(unescaped: condition)
            RETURNING t.session, t.idx, t.state
            """
        ) { row in
            let (session, index, state) = try row.decode((String, Int, String).self)
            return (TaskID(session: try SessionID(session), index: index), TaskState(rawValue: state) ?? .failed)
        }
        return Dictionary(rows, uniquingKeysWith: { first, _ in first })
    }

    /// Fails the tasks that are not terminal, whatever their owner or attempt, by
    /// ``GridKernel/TaskRecord/forceFailed(message:at:)``.
    ///
    /// - Returns: the tasks that were failed.
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func forceFail(_ failures: [TaskFailure], at: Date) async throws -> Set<TaskID> {
        guard !failures.isEmpty else { return [] }
        let sorted = Self.oncePerTask(failures, id: \.id, keep: .first)
        return Set(
            try await database.collect(
                "forceFail",
                """
                UPDATE \(unescaped: taskTable) AS t
                SET state = 'failed', \(unescaped: Self.unheld), last_error = j.m, completed_at = \(at.timeIntervalSince1970)
                FROM unnest(\(sorted.map(\.id.session.rawValue))::text[], \(sorted.map(\.id.index))::int8[], \(sorted.map(\.message))::text[])
                    AS j(s, i, m)
                WHERE t.session = j.s AND t.idx = j.i AND t.state IN ('pending', 'processing')
                RETURNING t.session, t.idx
                """,
                Self.decodeID))
    }

    /// Cancels the tasks among `ids` that are not terminal (owner and lease cleared), by
    /// ``GridKernel/TaskRecord/cancelled(at:)``.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func cancel(_ ids: [TaskID], at: Date) async throws -> CancelCounts {
        guard !ids.isEmpty else { return CancelCounts() }
        let keys = Self.keys(ids)
        return try await cancelRows(
            "cancel",
            """
            SELECT t.session, t.idx, t.state FROM \(unescaped: taskTable) AS t
            JOIN unnest(\(keys.sessions)::text[], \(keys.indices)::int8[]) AS j(s, i) ON t.session = j.s AND t.idx = j.i
            WHERE t.state IN ('pending', 'processing')
            ORDER BY t.session, t.idx FOR UPDATE OF t
            """,
            at: at, sessionCheck: nil)
    }

    /// Marks a session cancelled and cancels its non-terminal tasks, in one statement.
    ///
    /// - Throws: ``GridKernel/GridError/Code/notFound`` for an unknown session; ``GridKernel/GridError/Code/unavailable``.
    public func cancelSession(_ id: SessionID, at: Date) async throws -> CancelCounts {
        try await cancelRows(
            "cancelSession",
            """
            SELECT t.session, t.idx, t.state FROM \(unescaped: taskTable) AS t
            WHERE t.session = \(id.rawValue) AND t.state IN ('pending', 'processing')
            ORDER BY t.idx FOR UPDATE OF t
            """,
            at: at, sessionCheck: id)
    }

    /// Cancels the rows `select` locks (it returns session, idx and the state before), counting them by
    /// their state before; with `sessionCheck`, also marks that session cancelled.
    private func cancelRows(_ operation: String, _ select: PostgresQuery, at: Date, sessionCheck: SessionID?) async throws -> CancelCounts {
        let markSession = sessionCheck.map {
            "UPDATE \(sessionTable) SET cancelled = true WHERE id = \(Self.literal($0.rawValue)) RETURNING 1"
        } ?? "SELECT 1"
        var query = PostgresQuery(
            unsafeSQL: """
                WITH marked AS (\(markSession)),
                     old AS (\(select.sql)),
                     done AS (
                         UPDATE \(taskTable) AS t SET state = 'cancelled', \(Self.unheld), completed_at = $\(select.binds.count + 1)
                         FROM old WHERE t.session = old.session AND t.idx = old.idx
                         RETURNING old.state
                     )
                SELECT (SELECT count(*) FROM marked)::int8,
                       (SELECT count(*) FROM done WHERE state = 'pending')::int8,
                       (SELECT count(*) FROM done WHERE state = 'processing')::int8
                """,
            binds: select.binds)
        query.binds.append(at.timeIntervalSince1970)
        let rows = try await database.collect(operation, query) { row in try row.decode((Int, Int, Int).self) }
        guard let (marked, pending, processing) = rows.first else {
            throw GridError.unavailable("no reply to \(operation)", backend: backend)
        }
        if let sessionCheck, marked == 0 {
            throw GridError.notFound("session \(sessionCheck) does not exist", backend: backend)
        }
        return CancelCounts(pending: pending, processing: processing)
    }

    // MARK: - Reads

    /// Reads one task.
    ///
    /// - Throws: ``GridKernel/GridError/Code/notFound``; ``GridKernel/GridError/Code/unavailable``.
    public func task(_ id: TaskID) async throws -> TaskRecord {
        let records = try await database.collect(
            "task",
            "SELECT \(unescaped: Self.taskColumns) FROM \(unescaped: taskTable) WHERE session = \(id.session.rawValue) AND idx = \(id.index)",
            Self.decodeTask)
        guard let record = records.first else { throw GridError.notFound("task \(id) does not exist", backend: backend) }
        return record
    }

    /// Reads the tasks that exist among `ids`, in one statement.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func tasks(_ ids: [TaskID]) async throws -> [TaskRecord] {
        guard !ids.isEmpty else { return [] }
        let keys = Self.keys(ids)
        return try await database.collect(
            "tasks",
            """
            SELECT \(unescaped: Self.taskColumns(prefix: "t.")) FROM \(unescaped: taskTable) AS t
            JOIN unnest(\(keys.sessions)::text[], \(keys.indices)::int8[]) AS j(s, i) ON t.session = j.s AND t.idx = j.i
            """,
            Self.decodeTask)
    }

    /// Counts a session's tasks by state (an index-only scan of `task_by_state` when the table is vacuumed).
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func counts(_ session: SessionID) async throws -> StateCounts {
        let rows = try await database.collect(
            "counts", "SELECT state, count(*)::int8 FROM \(unescaped: taskTable) WHERE session = \(session.rawValue) GROUP BY state"
        ) { row in try row.decode((String, Int).self) }
        var counts = StateCounts()
        for (state, count) in rows {
            if let state = TaskState(rawValue: state) { counts[state] = count }
        }
        return counts
    }

    /// Pages through a session's tasks in one state in index order; the cursor is the last index.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a malformed cursor or a `limit`
    ///   below 1; ``GridKernel/GridError/Code/unavailable``.
    public func tasks(_ session: SessionID, state: TaskState, after cursor: String?, limit: Int) async throws -> Page<TaskRecord> {
        try Self.checkLimit(limit)
        let after = try IntegerCursor.parse(cursor) ?? -1
        let records = try await database.collect(
            "tasks",
            """
            SELECT \(unescaped: Self.taskColumns) FROM \(unescaped: taskTable)
            WHERE session = \(session.rawValue) AND state = \(state.rawValue) AND idx > \(after) ORDER BY idx LIMIT \(limit + 1)
            """,
            Self.decodeTask)
        guard records.count > limit else { return Page(items: records, next: nil) }
        let items = Array(records.prefix(limit))
        return Page(items: items, next: items.last.map { IntegerCursor.make($0.id.index) })
    }

    /// Finds up to `limit` processing tasks whose lease expired before `now`, oldest expiry first,
    /// through the partial index `task_lease`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    // ISSUE14-STUB: replaced by the backend's own completion order on its branch; never merged to main.
    public func completions(_ session: SessionID, after sequence: Int, limit: Int) async throws -> [TaskRecord] {
        throw GridError(.internalError, "completion order not implemented yet")
    }

    public func expiredLeases(now: Date, limit: Int) async throws -> [TaskRecord] {
        guard limit > 0 else { return [] }
        return try await database.collect(
            "expiredLeases",
            """
            SELECT \(unescaped: Self.taskColumns) FROM \(unescaped: taskTable)
            WHERE state = 'processing' AND lease_expiry < \(now.timeIntervalSince1970)
            ORDER BY lease_expiry, session, idx LIMIT \(limit)
            """,
            Self.decodeTask)
    }

    // MARK: - Rows

    /// The ids once each, sorted (the lock order of every batch), split into two arrays for `unnest`.
    static func keys(_ ids: [TaskID]) -> (sessions: [String], indices: [Int]) {
        let sorted = Set(ids).sorted()
        return (sorted.map(\.session.rawValue), sorted.map(\.index))
    }

    /// Which entry of a batch counts when it names a task twice.
    enum Repeated {
        case first, last
    }

    /// One entry per task (the first or the last of those naming it, as the kernel's reference store
    /// takes them), sorted by task id: the lock order of every batch.
    static func oncePerTask<Entry>(_ entries: [Entry], id: (Entry) -> TaskID, keep: Repeated) -> [Entry] {
        var byID: [TaskID: Entry] = [:]
        for entry in entries {
            let key = id(entry)
            if keep == .last || byID[key] == nil { byID[key] = entry }
        }
        return byID.sorted { $0.key < $1.key }.map(\.value)
    }

    /// A string as an SQL literal (for the few values written into SQL text rather than bound).
    static func literal(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "'", with: "''") + "'"
    }

    static let taskColumns = taskColumns(prefix: "")

    static func taskColumns(prefix: String) -> String {
        [
            "session", "idx", "state", "owner", "lease_expiry", "retries", "max_retries", "priority", "timeout",
            "submitted_at", "started_at", "completed_at", "last_error", "output", "attempt", "claim_token",
        ].map { prefix + $0 }.joined(separator: ", ")
    }

    private static func decodeID(_ row: PostgresRow) throws -> TaskID {
        let (session, index) = try row.decode((String, Int).self)
        return TaskID(session: try SessionID(session), index: index)
    }

    private static func decodeTask(_ row: PostgresRow) throws -> TaskRecord {
        let (
            session, index, state, owner, leaseExpiry, retries, maxRetries, priority, timeout, submitted, started, completed, error, output,
            attempt, token
        ) =
            try row.decode(
                (String, Int, String, String?, Double?, Int, Int, Int, Double?, Double, Double?, Double?, String?, ByteBuffer?, Int, String?)
                    .self)
        return TaskRecord(
            id: TaskID(session: try SessionID(session), index: index),
            state: TaskState(rawValue: state) ?? .failed,
            owner: owner.map(AgentID.init),
            leaseExpiry: leaseExpiry.map(Date.init(timeIntervalSince1970:)),
            retries: retries,
            maxRetries: maxRetries,
            priority: priority,
            timeout: timeout.map(Duration.init(timeInterval:)),
            submittedAt: Date(timeIntervalSince1970: submitted),
            startedAt: started.map(Date.init(timeIntervalSince1970:)),
            completedAt: completed.map(Date.init(timeIntervalSince1970:)),
            lastError: error,
            output: output.map { Array($0.readableBytesView) },
            attempt: attempt,
            claimToken: try token.map(ClaimToken.init)
        )
    }

    private static let sessionColumns = "id, priority, max_retries, task_timeout, labels, created_at, task_count, cancelled"

    /// What every transition out of `processing` clears (``GridKernel/TaskRecord``'s rules): owner,
    /// lease, claim token.
    static let unheld = "owner = NULL, lease_expiry = NULL, claim_token = NULL"

    private static func decodeSession(_ row: PostgresRow) throws -> SessionRecord {
        let (id, priority, maxRetries, timeout, labelsText, created, taskCount, cancelled) =
            try row.decode((String, Int, Int, Double?, String, Double, Int, Bool).self)
        let labels = (try? JSONDecoder().decode([String: String].self, from: Data(labelsText.utf8))) ?? [:]
        return SessionRecord(
            id: try SessionID(id),
            options: SessionOptions(
                priority: priority, maxRetries: maxRetries, taskTimeout: timeout.map(Duration.init(timeInterval:)), labels: labels),
            createdAt: Date(timeIntervalSince1970: created),
            taskCount: taskCount,
            cancelled: cancelled
        )
    }

    private static func encodeLabels(_ labels: [String: String]) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return String(decoding: try encoder.encode(labels), as: UTF8.self)
    }

    private static func checkLimit(_ limit: Int) throws {
        guard limit > 0 else {
            throw GridError.invalidArgument("limit is \(limit); it must be at least 1", backend: PostgresDatabase.backendName)
        }
    }
}
