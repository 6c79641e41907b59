import Foundation
import GridKernel
import NIOCore
import PostgresNIO

/// The state store in PostgreSQL: sessions in the `session` table, submissions in the `submission`
/// table, tasks in the `task` table (see `PostgresSchema.swift`).
///
/// Every transition is one conditional statement for the whole batch: one round trip and one
/// transaction per call. It locks the tasks that meet the rule's condition (`SELECT … FROM task JOIN
/// unnest(sessions, indices, attempts, …) WHERE <expected state, owner and attempt> FOR UPDATE`),
/// numbers those that become terminal in their session's completion order, updates them, and adds the
/// moves between states to the counters, all in data-modifying CTEs (see
/// `PostgresStateStore+Completions.swift`). Each statement translates one rule of the kernel's
/// TaskRules.swift (named in its doc comment). Exactly one of several concurrent claimers wins a task
/// because PostgreSQL re-checks the condition on the newest row version once the other writer
/// commits. Batches are sorted by task id, so concurrent batches lock rows in the same order, and every
/// statement takes its locks in the order tasks, completion counter, state counters; a batch naming a
/// task twice is reduced to one entry per task first, as the kernel's rules apply once per task.
public struct PostgresStateStore: StateStore {
    /// The database holding the state.
    public let database: PostgresDatabase

    /// Creates a state store on `database`.
    public init(database: PostgresDatabase) {
        self.database = database
    }

    var backend: String { PostgresDatabase.backendName }
    var sessionTable: String { database.table("session") }
    var taskTable: String { database.table("task") }
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

    /// Removes a session's record, its submissions, all of its task records, whatever their states,
    /// its counters and its completion order, in one statement.
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
                 tasks AS (DELETE FROM \(unescaped: taskTable) WHERE session = \(id.rawValue) RETURNING 1),
                 -- Run after the main query, hence after the tasks are locked: the order of every transition.
                 completed AS (DELETE FROM \(unescaped: completedTable) WHERE session = \(id.rawValue)),
                 counters AS (DELETE FROM \(unescaped: countsTable) WHERE session = \(id.rawValue))
            SELECT (SELECT count(*) FROM gone)::int8, (SELECT count(*) FROM tasks)::int8
            """
        ) { row in try row.decode((Int, Int).self) }
        guard let (sessions, tasks) = rows.first, sessions > 0 else {
            throw GridError.notFound("session \(id) does not exist", backend: backend)
        }
        return tasks
    }

    // MARK: - Tasks

    /// Inserts task records, leaving existing ones as they are (`ON CONFLICT DO NOTHING`), and adds
    /// the records it inserted to the counters, in one statement.
    ///
    /// A submission's records differ only in their index: such a batch sends one record and the list
    /// of indices; other batches send one array per column. A batch with terminal records (the
    /// reaper's, for tasks never written) numbers those it inserted in their session's completion
    /// order with a second statement of the same transaction: only the insert tells which they are.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func createTasks(_ tasks: [TaskRecord]) async throws {
        guard let first = tasks.first else { return }
        let insert = insertion(tasks, first: first)
        if tasks.contains(where: \.state.isTerminal) {
            try await database.transaction("createTasks") { connection in
                let ended = try await PostgresDatabase.collect(
                    try await connection.query(insert, logger: database.logger), Self.decodeID)
                guard !ended.isEmpty else { return }
                let keys = Self.keys(ended)
                let numbering = transition(
                    """
                    SELECT \(unescaped: Self.lockedColumns), t.state FROM \(unescaped: taskTable) AS t
                    JOIN unnest(\(keys.sessions)::text[], \(keys.indices)::int8[]) AS j(s, i) ON t.session = j.s AND t.idx = j.i
                    WHERE t.state IN \(unescaped: PostgresSchema.terminal) AND t.completion_seq IS NULL
                    """)
                _ = try await PostgresDatabase.collect(try await connection.query(numbering, logger: database.logger)) { _ in () }
            }
        } else {
            try await database.execute("createTasks", insert)
        }
        if tasks.count >= Self.analyzeThreshold { try await database.refreshStatistics() }
    }

    /// The statement of ``createTasks(_:)`` without its numbering: inserts, counts what it inserted,
    /// and returns the inserted records that are terminal.
    private func insertion(_ tasks: [TaskRecord], first: TaskRecord) -> PostgresQuery {
        let uniform = tasks.allSatisfy { task in
            var twin = task
            twin.id = first.id
            return twin == first && task.id.session == first.id.session
        }
        let counting = Self.counting("inserted", into: countsTable)
        let terminal = PostgresSchema.terminal
        if uniform && first.output == nil {
            return """
                WITH inserted AS (
                    INSERT INTO \(unescaped: taskTable) (\(unescaped: Self.taskColumns))
                    SELECT \(first.id.session.rawValue), i, \(first.state.rawValue), \(first.owner?.rawValue),
                           \(first.leaseExpiry?.timeIntervalSince1970), \(first.retries), \(first.maxRetries), \(first.priority),
                           \(first.timeout?.timeInterval), \(first.submittedAt.timeIntervalSince1970),
                           \(first.startedAt?.timeIntervalSince1970), \(first.completedAt?.timeIntervalSince1970), \(first.lastError), NULL::bytea,
                           \(first.attempt), \(first.claimToken?.rawValue), NULL::int8
                    FROM unnest(\(tasks.map(\.id.index))::int8[]) AS i
                    ON CONFLICT DO NOTHING
                    RETURNING session, idx, NULL::text AS was, state
                ),
                \(unescaped: counting)
                SELECT session, idx FROM inserted WHERE state IN \(unescaped: terminal)
                """
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
        return """
            WITH inserted AS (
                INSERT INTO \(unescaped: taskTable) (\(unescaped: Self.taskColumns))
                SELECT s, i, st, CASE WHEN ho THEN o END, NULLIF(le, 'NaN'), r, mr, p, NULLIF(t, 'NaN'), sub,
                       NULLIF(sa, 'NaN'), NULLIF(ca, 'NaN'), CASE WHEN he THEN e END, CASE WHEN hop THEN op END, a, CASE WHEN ht THEN tk END,
                       NULL::int8
                FROM unnest(
                    \(sessions)::text[], \(indices)::int8[], \(states)::text[], \(hasOwner)::bool[], \(owners)::text[],
                    \(leaseExpiries)::float8[], \(retries)::int8[], \(maxRetries)::int8[], \(priorities)::int8[], \(timeouts)::float8[],
                    \(submitted)::float8[], \(started)::float8[], \(completed)::float8[], \(hasError)::bool[], \(errors)::text[],
                    \(hasOutput)::bool[], \(outputs)::bytea[], \(attempts)::int8[], \(hasToken)::bool[], \(tokens)::text[]
                ) AS j(s, i, st, ho, o, le, r, mr, p, t, sub, sa, ca, he, e, hop, op, a, ht, tk)
                ON CONFLICT DO NOTHING
                RETURNING session, idx, NULL::text AS was, state
            ),
            \(unescaped: counting)
            SELECT session, idx FROM inserted WHERE state IN \(unescaped: terminal)
            """
    }

    /// A submission at least this large refreshes the planner's statistics (``PostgresDatabase/refreshStatistics()``).
    static let analyzeThreshold = 1_000

    /// Claims tasks for `owner` by ``GridKernel/TaskRecord/claimed(by:token:leaseExpiry:now:)``: the
    /// pending, unowned tasks among `ids` start a new attempt (`attempt + 1`, this call's token), and
    /// those that are processing under this owner and token (this call, sent again) are returned as
    /// they are, in the same statement, which also moves the tasks won from `pending` to `processing`
    /// in the counters.
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
                RETURNING \(unescaped: Self.taskColumns(prefix: "t.")), 'pending'::text AS was
            ),
            again AS (
                SELECT \(unescaped: Self.taskColumns(prefix: "t.")) FROM \(unescaped: taskTable) AS t
                JOIN unnest(\(keys.sessions)::text[], \(keys.indices)::int8[]) AS j(s, i) ON t.session = j.s AND t.idx = j.i
                WHERE t.state = 'processing' AND t.owner = \(owner.rawValue) AND t.claim_token = \(token.rawValue)
            ),
            \(unescaped: Self.counting("won", into: countsTable))
            SELECT \(unescaped: Self.taskColumns) FROM won UNION ALL SELECT * FROM again
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
    /// error, by ``GridKernel/TaskRecord/finished(by:attempt:output:at:)``, numbering them in completion
    /// order.
    ///
    /// - Returns: the tasks that were finished.
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func finish(_ completions: [TaskCompletion], owner: AgentID, at: Date) async throws -> Set<TaskID> {
        guard !completions.isEmpty else { return [] }
        let sorted = Self.oncePerTask(completions, id: \.id, keep: .first)
        let changes = try await transition(
            "finish",
            """
            SELECT \(unescaped: Self.lockedColumns), 'finished'::text AS state, j.h, j.o, \(at.timeIntervalSince1970)::float8 AS at
            FROM \(unescaped: taskTable) AS t JOIN unnest(
                \(sorted.map(\.id.session.rawValue))::text[], \(sorted.map(\.id.index))::int8[], \(sorted.map(\.attempt))::int8[],
                \(sorted.map { $0.output != nil })::bool[], \(sorted.map { ByteBuffer(bytes: $0.output ?? []) })::bytea[]
            ) AS j(s, i, a, h, o) ON t.session = j.s AND t.idx = j.i
            WHERE t.state = 'processing' AND t.owner = \(owner.rawValue) AND t.attempt = j.a
            """,
            set: "\(Self.unheld), completed_at = o.at, last_error = NULL, output = CASE WHEN o.h THEN o.o END")
        return Set(changes.map(\.id))
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
        let changes = try await transition(
            "release",
            """
            SELECT \(unescaped: Self.lockedColumns), 'pending'::text AS state FROM \(unescaped: taskTable) AS t
            JOIN unnest(\(sorted.map(\.id.session.rawValue))::text[], \(sorted.map(\.id.index))::int8[], \(sorted.map(\.attempt))::int8[])
                AS j(s, i, a) ON t.session = j.s AND t.idx = j.i
            WHERE t.state = 'processing' AND t.owner = \(owner.rawValue) AND t.attempt = j.a
            """,
            set: Self.unheld)
        return Set(changes.map(\.id))
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

    /// The retry rule of ``GridKernel/TaskRecord/afterFailure(message:retryable:at:)`` in SQL, the new
    /// state decided on the locked row. `condition` is trusted SQL (a quoted owner, a number, `j.a`:
    /// the attempt named).
    private func applyRetryRule(
        _ operation: String, sessions: [String], indices: [Int], attempts: [Int], retryable: [Bool], messages: [String], at: Date,
        condition: String
    ) async throws -> [TaskID: TaskState] {
        let changes = try await transition(
            operation,
            """
            SELECT \(unescaped: Self.lockedColumns), CASE WHEN j.r AND t.retries < t.max_retries THEN 'pending' ELSE 'failed' END AS state,
                   j.m, \(at.timeIntervalSince1970)::float8 AS at
            FROM \(unescaped: taskTable) AS t
            JOIN unnest(\(sessions)::text[], \(indices)::int8[], \(attempts)::int8[], \(retryable)::bool[], \(messages)::text[])
                AS j(s, i, a, r, m) ON t.session = j.s AND t.idx = j.i
            WHERE \(unescaped: condition)
            """,
            set: """
                retries = t.retries + CASE WHEN o.state = 'pending' THEN 1 ELSE 0 END,
                completed_at = CASE WHEN o.state = 'pending' THEN t.completed_at ELSE o.at END, \(Self.unheld), last_error = o.m
                """)
        return Dictionary(changes.map { ($0.id, $0.state) }, uniquingKeysWith: { first, _ in first })
    }

    /// Fails the tasks that are not terminal, whatever their owner or attempt, by
    /// ``GridKernel/TaskRecord/forceFailed(message:at:)``.
    ///
    /// - Returns: the tasks that were failed.
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func forceFail(_ failures: [TaskFailure], at: Date) async throws -> Set<TaskID> {
        guard !failures.isEmpty else { return [] }
        let sorted = Self.oncePerTask(failures, id: \.id, keep: .first)
        let changes = try await transition(
            "forceFail",
            """
            SELECT \(unescaped: Self.lockedColumns), 'failed'::text AS state, j.m, \(at.timeIntervalSince1970)::float8 AS at
            FROM \(unescaped: taskTable) AS t
            JOIN unnest(\(sorted.map(\.id.session.rawValue))::text[], \(sorted.map(\.id.index))::int8[], \(sorted.map(\.message))::text[])
                AS j(s, i, m) ON t.session = j.s AND t.idx = j.i
            WHERE t.state IN ('pending', 'processing')
            """,
            set: "\(Self.unheld), last_error = o.m, completed_at = o.at")
        return Set(changes.map(\.id))
    }

    /// Cancels the tasks among `ids` that are not terminal (owner and lease cleared), by
    /// ``GridKernel/TaskRecord/cancelled(at:)``.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func cancel(_ ids: [TaskID], at: Date) async throws -> CancelCounts {
        guard !ids.isEmpty else { return CancelCounts() }
        let keys = Self.keys(ids)
        let changes = try await transition(
            "cancel",
            """
            SELECT \(unescaped: Self.lockedColumns), 'cancelled'::text AS state, \(at.timeIntervalSince1970)::float8 AS at
            FROM \(unescaped: taskTable) AS t
            JOIN unnest(\(keys.sessions)::text[], \(keys.indices)::int8[]) AS j(s, i) ON t.session = j.s AND t.idx = j.i
            WHERE t.state IN ('pending', 'processing')
            """,
            set: "\(Self.unheld), completed_at = o.at")
        return Self.cancelCounts(changes)
    }

    /// Marks a session cancelled and cancels its non-terminal tasks, in one statement.
    ///
    /// - Throws: ``GridKernel/GridError/Code/notFound`` for an unknown session; ``GridKernel/GridError/Code/unavailable``.
    public func cancelSession(_ id: SessionID, at: Date) async throws -> CancelCounts {
        var marked = false
        let changes = try await transition(
            "cancelSession",
            """
            SELECT \(unescaped: Self.lockedColumns), 'cancelled'::text AS state, \(at.timeIntervalSince1970)::float8 AS at
            FROM \(unescaped: taskTable) AS t WHERE t.session = \(id.rawValue) AND t.state IN ('pending', 'processing')
            """,
            set: "\(Self.unheld), completed_at = o.at",
            marking: "UPDATE \(sessionTable) SET cancelled = true WHERE id = \(Self.literal(id.rawValue)) RETURNING 1",
            marked: &marked)
        guard marked else { throw GridError.notFound("session \(id) does not exist", backend: backend) }
        return Self.cancelCounts(changes)
    }

    private static func cancelCounts(_ changes: [Change]) -> CancelCounts {
        CancelCounts(pending: changes.count(where: { $0.was == .pending }), processing: changes.count(where: { $0.was == .processing }))
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
            "submitted_at", "started_at", "completed_at", "last_error", "output", "attempt", "claim_token", "completion_seq",
        ].map { prefix + $0 }.joined(separator: ", ")
    }

    static func decodeID(_ row: PostgresRow) throws -> TaskID {
        let (session, index) = try row.decode((String, Int).self)
        return TaskID(session: try SessionID(session), index: index)
    }

    static func decodeTask(_ row: PostgresRow) throws -> TaskRecord {
        let (
            session, index, state, owner, leaseExpiry, retries, maxRetries, priority, timeout, submitted, started, completed, error, output,
            attempt, token, sequence
        ) =
            try row.decode(
                (
                    String, Int, String, String?, Double?, Int, Int, Int, Double?, Double, Double?, Double?, String?, ByteBuffer?, Int, String?,
                    Int?
                ).self)
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
            claimToken: try token.map(ClaimToken.init),
            completionSequence: sequence
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
