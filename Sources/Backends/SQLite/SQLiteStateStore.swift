import Foundation
import GRDB
import GridKernel

/// The state store in an SQLite file: sessions in the `session` table, tasks in the `task` table.
///
/// Every transition is a conditional `UPDATE … WHERE <expected state and owner>` run for each task
/// of the batch through one cached prepared statement, all in one `BEGIN IMMEDIATE` transaction, so
/// a batch of N tasks costs one transaction and N index lookups. Exactly one of several concurrent
/// claimers (threads or processes) wins a task because SQLite serialises the write transactions.
public struct SQLiteStateStore: StateStore {
    /// The database holding the state.
    public let database: SQLiteDatabase

    /// Creates a state store on `database`.
    public init(database: SQLiteDatabase) {
        self.database = database
    }

    private var backend: String { SQLiteDatabase.backendName }

    // MARK: - Sessions

    /// Creates a session.
    ///
    /// - Throws: ``GridError/Code/conflict`` if a session with this id exists;
    ///   ``GridError/Code/invalidArgument`` if its labels cannot be encoded; ``GridError/Code/unavailable``.
    public func createSession(_ session: SessionRecord) async throws {
        let labels = try Self.encodeLabels(session.options.labels)
        let backend = self.backend
        try await database.write("createSession") { db in
            try db.cachedStatement(
                sql: """
                    INSERT INTO session (id, priority, max_retries, task_timeout, labels, created_at, task_count, cancelled)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING
                    """
            ).execute(arguments: [
                session.id.rawValue, session.options.priority, session.options.maxRetries,
                session.options.taskTimeout?.timeInterval, labels, session.createdAt.timeIntervalSince1970,
                session.taskCount, session.cancelled,
            ])
            guard db.changesCount > 0 else {
                throw GridError(.conflict, "session \(session.id) already exists; pick another id", backend: backend)
            }
        }
    }

    /// Reads a session.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    public func session(_ id: SessionID) async throws -> SessionRecord {
        let record = try await database.read("session") { db in
            try Row.fetchOne(db.cachedStatement(sql: "SELECT \(Self.sessionColumns) FROM session WHERE id = ?"), arguments: [id.rawValue])
                .map(Self.decodeSession)
        }
        guard let record else { throw GridError.notFound("session \(id) does not exist", backend: backend) }
        return record
    }

    /// Lists sessions in id order; the cursor is the id of the last session of the previous page.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a malformed cursor or a `limit` below 1;
    ///   ``GridError/Code/unavailable``.
    public func sessions(after cursor: String?, limit: Int) async throws -> Page<SessionRecord> {
        try Self.checkLimit(limit)
        let after = try SessionCursor.parse(cursor, backend: SQLiteDatabase.backendName)?.rawValue
        let records = try await database.read("sessions") { db in
            try Row.fetchAll(
                db.cachedStatement(sql: "SELECT \(Self.sessionColumns) FROM session WHERE id > ? ORDER BY id LIMIT ?"),
                arguments: [after ?? "", limit + 1]
            ).map(Self.decodeSession)
        }
        guard records.count > limit else { return Page(items: records, next: nil) }
        let items = Array(records.prefix(limit))
        return Page(items: items, next: items.last?.id.rawValue)
    }

    /// Begins a submission in one write transaction: returns the session's submission with the same
    /// key if there is one, else reserves the indices with one `UPDATE … RETURNING` and inserts the
    /// submission.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a negative count; ``GridError/Code/notFound``
    ///   for an unknown session; ``GridError/Code/conflict`` if it was cancelled; ``GridError/Code/unavailable``.
    public func beginSubmission(_ submission: SubmissionRecord) async throws -> SubmissionRecord {
        guard submission.count >= 0 else {
            throw GridError.invalidArgument("count is \(submission.count); it must not be negative", backend: backend)
        }
        let backend = self.backend
        return try await database.write("beginSubmission") { db in
            if let existing = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT \(Self.submissionColumns) FROM submission WHERE session = ? AND key = ?"),
                arguments: [submission.session.rawValue, submission.key.rawValue])
            {
                return try Self.decodeSubmission(existing)
            }
            let end = try Int.fetchOne(
                db.cachedStatement(
                    sql: "UPDATE session SET task_count = task_count + ? WHERE id = ? AND cancelled = 0 RETURNING task_count"),
                arguments: [submission.count, submission.session.rawValue])
            guard let end else {
                let exists = try Bool.fetchOne(
                    db.cachedStatement(sql: "SELECT EXISTS (SELECT 1 FROM session WHERE id = ?)"), arguments: [submission.session.rawValue]) ?? false
                if exists {
                    throw GridError(.conflict, "session \(submission.session) was cancelled; submit to a new session", backend: backend)
                }
                throw GridError.notFound("session \(submission.session) does not exist; create it first", backend: backend)
            }
            var stored = submission
            stored.first = end - submission.count
            try db.cachedStatement(
                sql: "INSERT INTO submission (\(Self.submissionColumns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ).execute(arguments: Self.submissionArguments(stored))
            return stored
        }
    }

    /// Replaces a submission's progress if its stored version is `expectedVersion`.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func updateSubmission(_ submission: SubmissionRecord, expectedVersion: Int) async throws -> Bool {
        try await database.write("updateSubmission") { db in
            try db.cachedStatement(
                sql: """
                    UPDATE submission SET sent = ?, state = ?, version = ?, updated_at = ?
                    WHERE session = ? AND key = ? AND version = ?
                    """
            ).execute(arguments: [
                submission.sent, submission.state.rawValue, submission.version, submission.updatedAt.timeIntervalSince1970,
                submission.session.rawValue, submission.key.rawValue, expectedVersion,
            ])
            return db.changesCount > 0
        }
    }

    /// The open and repairing submissions last updated before `date`, oldest first, through the
    /// partial index `submission_active`.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func stalledSubmissions(before date: Date, limit: Int) async throws -> [SubmissionRecord] {
        guard limit > 0 else { return [] }
        return try await database.read("stalledSubmissions") { db in
            try Row.fetchAll(
                db.cachedStatement(
                    sql: """
                        SELECT \(Self.submissionColumns) FROM submission
                        WHERE state IN ('open', 'repairing') AND updated_at < ? ORDER BY updated_at, session, key LIMIT ?
                        """),
                arguments: [date.timeIntervalSince1970, limit]
            ).map(Self.decodeSubmission)
        }
    }

    // MARK: - Tasks

    /// Inserts task records, leaving existing ones as they are (`INSERT OR IGNORE`), in one transaction.
    ///
    /// A submission's records differ only in their index: such a batch is inserted by one statement
    /// over the list of indices; other batches row by row.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func createTasks(_ tasks: [TaskRecord]) async throws {
        guard let first = tasks.first else { return }
        let uniform = tasks.allSatisfy { task in
            var twin = task
            twin.id = TaskID(session: first.id.session, index: first.id.index)
            return twin == first && task.id.session == first.id.session
        }
        if uniform && first.output == nil {
            let indices = Self.jsonArray(tasks.map(\.id.index))
            try await database.write("createTasks") { db in
                try db.cachedStatement(
                    sql: """
                        INSERT OR IGNORE INTO task (\(Self.taskColumns))
                        SELECT ?, value, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ? FROM json_each(?)
                        """
                ).execute(arguments: [
                    first.id.session.rawValue, first.state.rawValue, first.owner?.rawValue,
                    first.leaseExpiry?.timeIntervalSince1970, first.retries, first.maxRetries, first.priority,
                    first.timeout?.timeInterval, first.submittedAt.timeIntervalSince1970,
                    first.startedAt?.timeIntervalSince1970, first.completedAt?.timeIntervalSince1970, first.lastError,
                    first.attempt, Self.stored(first.claimToken), indices,
                ])
            }
            return
        }
        try await database.write("createTasks") { db in
            let insert = try db.cachedStatement(
                sql: "INSERT OR IGNORE INTO task (\(Self.taskColumns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS BLOB), ?, ?)")
            for task in tasks {
                try insert.execute(arguments: [
                    task.id.session.rawValue, task.id.index, task.state.rawValue, task.owner?.rawValue,
                    task.leaseExpiry?.timeIntervalSince1970, task.retries, task.maxRetries, task.priority,
                    task.timeout?.timeInterval, task.submittedAt.timeIntervalSince1970,
                    task.startedAt?.timeIntervalSince1970, task.completedAt?.timeIntervalSince1970, task.lastError,
                    DatabaseValue.blob(task.output), task.attempt, Self.stored(task.claimToken),
                ])
            }
        }
    }

    /// Claims the pending, unowned tasks among `ids` for `owner`, each starting a new attempt; tasks
    /// this very call (`owner` and `token`) already claimed are returned as they are.
    ///
    /// - Returns: the records of the tasks won, in the order of `ids`.
    /// - Throws: ``GridError/Code/unavailable``.
    public func claim(_ ids: [TaskID], owner: AgentID, token: ClaimToken, leaseExpiry: Date, now: Date) async throws -> [TaskRecord] {
        guard !ids.isEmpty else { return [] }
        return try await database.write("claim") { db in
            // One statement per session in the batch (usually one): the indices travel as a JSON array.
            let update = try db.cachedStatement(
                sql: """
                    UPDATE task SET state = 'processing', owner = ?, lease_expiry = ?, started_at = ?, attempt = attempt + 1,
                        claim_token = ?
                    WHERE session = ? AND idx IN (SELECT value FROM json_each(?)) AND state = 'pending' AND owner IS NULL
                    RETURNING \(Self.taskColumns)
                    """)
            let repeated = try db.cachedStatement(
                sql: """
                    SELECT \(Self.taskColumns) FROM task
                    WHERE session = ? AND idx IN (SELECT value FROM json_each(?)) AND state = 'processing' AND owner = ?
                        AND claim_token = ?
                    """)
            let expiry = leaseExpiry.timeIntervalSince1970
            let started = now.timeIntervalSince1970
            var won: [TaskID: TaskRecord] = [:]
            for (session, indices) in Self.bySession(ids) {
                let rows = try Row.fetchCursor(
                    update, arguments: [owner.rawValue, expiry, started, Self.stored(token), session.rawValue, Self.jsonArray(indices)])
                while let row = try rows.next() {
                    let id = TaskID(session: session, index: row[1])
                    won[id] = try Self.decodeTask(row, id: id)
                }
                // The same call sent again after a lost reply: what it won before is still its own. Only
                // the tasks this update did not win are looked at, so a first call costs nothing more.
                let rest = indices.filter { won[TaskID(session: session, index: $0)] == nil }
                guard !rest.isEmpty else { continue }
                let again = try Row.fetchCursor(repeated, arguments: [session.rawValue, Self.jsonArray(rest), owner.rawValue, Self.stored(token)])
                while let row = try again.next() {
                    let id = TaskID(session: session, index: row[1])
                    won[id] = try Self.decodeTask(row, id: id)
                }
            }
            // RETURNING yields rows in no particular order: answer in the order asked.
            return ids.compactMap { won.removeValue(forKey: $0) }
        }
    }

    /// Moves the lease expiry of the current attempts `owner` holds.
    ///
    /// - Returns: the tasks still held.
    /// - Throws: ``GridError/Code/unavailable``.
    public func heartbeat(_ attempts: [TaskAttempt], owner: AgentID, leaseExpiry: Date) async throws -> Set<TaskID> {
        try await attemptTransition("heartbeat", attempts, owner: owner, set: "lease_expiry = ?4", leaseExpiry.timeIntervalSince1970)
    }

    /// Gives back the current attempts `owner` holds: pending again, owner and lease cleared, no retry.
    ///
    /// - Returns: the tasks released.
    /// - Throws: ``GridError/Code/unavailable``.
    public func release(_ attempts: [TaskAttempt], owner: AgentID) async throws -> Set<TaskID> {
        try await attemptTransition("release", attempts, owner: owner, set: "state = 'pending', \(Self.unheld)", nil)
    }

    /// One `UPDATE … SET <set>` of the attempts among `attempts` that are current and owned by `owner`,
    /// per session; the (index, attempt) pairs travel as a JSON array. `?4` is `value`.
    private func attemptTransition(
        _ operation: String, _ attempts: [TaskAttempt], owner: AgentID, set: String, _ value: Double?
    ) async throws -> Set<TaskID> {
        guard !attempts.isEmpty else { return [] }
        let groups = Self.bySession(attempts)
        return try await database.write(operation) { db in
            let update = try db.cachedStatement(
                sql: """
                    WITH j(i, a) AS MATERIALIZED (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
                    UPDATE task SET \(set)
                    FROM j
                    WHERE task.session = ?2 AND task.idx = j.i AND task.attempt = j.a AND task.state = 'processing' AND task.owner = ?3
                    RETURNING task.idx
                    """)
            var held = Set<TaskID>(minimumCapacity: attempts.count)
            for (session, batch) in groups {
                var arguments: StatementArguments = [batch.text, session.rawValue, owner.rawValue]
                if let value { arguments += [value] }
                let rows = try Int.fetchCursor(update, arguments: arguments)
                while let index = try rows.next() { held.insert(TaskID(session: session, index: index)) }
            }
            return held
        }
    }

    /// Marks the current attempts `owner` holds finished, storing inline outputs and clearing the
    /// last error.
    ///
    /// - Returns: the tasks that were finished.
    /// - Throws: ``GridError/Code/unavailable``.
    public func finish(_ completions: [TaskCompletion], owner: AgentID, at: Date) async throws -> Set<TaskID> {
        guard !completions.isEmpty else { return [] }
        // Per session: the indices, attempts and outputs (packed into one blob) travel in one statement.
        let groups = Self.batches(completions, id: \.id) { batch, completion in
            batch.bytes(completion.output)
            batch.int(completion.attempt)
        }
        return try await database.write("finish") { [groups] db in
            // The materialised list drives the join, so each completion is one primary-key lookup.
            let update = try db.cachedStatement(
                sql: """
                    WITH j(i, o, l, a) AS MATERIALIZED (SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1))
                    UPDATE task SET state = 'finished', \(Self.unheld), completed_at = ?2, last_error = NULL,
                        output = CASE WHEN j.l < 0 THEN NULL WHEN j.l = 0 THEN x'' ELSE substr(CAST(?3 AS BLOB), j.o, j.l) END
                    FROM j
                    WHERE task.session = ?4 AND task.idx = j.i AND task.attempt = j.a AND task.state = 'processing' AND task.owner = ?5
                    RETURNING task.idx
                    """)
            var finished = Set<TaskID>(minimumCapacity: completions.count)
            let completed = at.timeIntervalSince1970
            for (session, batch) in groups {
                let rows = try Int.fetchCursor(
                    update, arguments: [batch.text, completed, batch.blob, session.rawValue, owner.rawValue])
                while let index = try rows.next() { finished.insert(TaskID(session: session, index: index)) }
            }
            return finished
        }
    }

    /// Records failed runs of the current attempts `owner` holds, by the retry rule of
    /// ``TaskRecord/afterFailure(message:retryable:at:)``, evaluated in SQL.
    ///
    /// - Returns: the new state of each task that was still held.
    /// - Throws: ``GridError/Code/unavailable``.
    public func fail(_ failures: [TaskFailure], owner: AgentID, at: Date) async throws -> [TaskID: TaskState] {
        guard !failures.isEmpty else { return [:] }
        return try await database.write("fail") { db in
            let update = try db.cachedStatement(
                sql: Self.failSQL(where: "session = ?5 AND idx = ?6 AND state = 'processing' AND owner = ?4 AND attempt = ?7"))
            var states: [TaskID: TaskState] = [:]
            let date = at.timeIntervalSince1970
            for failure in failures where states[failure.id] == nil {
                let arguments: StatementArguments = [
                    failure.retryable, date, failure.message, owner.rawValue, failure.id.session.rawValue, failure.id.index, failure.attempt,
                ]
                let rows = try Row.fetchCursor(update, arguments: arguments)
                while let row = try rows.next() {
                    if let state = TaskState(rawValue: row[1]) { states[failure.id] = state }
                }
            }
            return states
        }
    }

    /// Reaps the tasks among `ids` that are processing with a lease expiry before `now`, by the retry
    /// rule with the error "lease expired".
    ///
    /// - Returns: the new state of each task reaped.
    /// - Throws: ``GridError/Code/unavailable``.
    public func expire(_ ids: [TaskID], now: Date) async throws -> [TaskID: TaskState] {
        guard !ids.isEmpty else { return [:] }
        let groups = Self.bySession(ids)
        return try await database.write("expire") { db in
            let update = try db.cachedStatement(
                sql: Self.failSQL(
                    where: "session = ?5 AND idx IN (SELECT value FROM json_each(?6)) AND state = 'processing' AND lease_expiry < ?4"))
            var states: [TaskID: TaskState] = [:]
            let date = now.timeIntervalSince1970
            for (session, indices) in groups {
                let arguments: StatementArguments = [true, date, "lease expired", date, session.rawValue, Self.jsonArray(indices)]
                let rows = try Row.fetchCursor(update, arguments: arguments)
                while let row = try rows.next() {
                    if let state = TaskState(rawValue: row[1]) { states[TaskID(session: session, index: row[0])] = state }
                }
            }
            return states
        }
    }

    /// What every transition out of `processing` clears (``TaskRecord``'s rules): owner, lease, token.
    static let unheld = "owner = NULL, lease_expiry = NULL, claim_token = NULL"

    /// The retry rule in SQL. Parameters: ?1 retryable, ?2 date, ?3 message, ?4 owner or now,
    /// ?5 session, ?6 index or indices. SQLite evaluates every SET expression on the row as it was, so
    /// all of them see the same `retries`.
    private static func failSQL(where condition: String) -> String {
        """
        UPDATE task SET
            state = CASE WHEN ?1 AND retries < max_retries THEN 'pending' ELSE 'failed' END,
            retries = retries + (?1 AND retries < max_retries),
            completed_at = CASE WHEN ?1 AND retries < max_retries THEN completed_at ELSE ?2 END,
            \(Self.unheld), last_error = ?3
        WHERE \(condition)
        RETURNING idx, state
        """
    }

    /// Fails the tasks that are not terminal, whatever their owner.
    ///
    /// - Returns: the tasks that were failed.
    /// - Throws: ``GridError/Code/unavailable``.
    public func forceFail(_ failures: [TaskFailure], at: Date) async throws -> Set<TaskID> {
        guard !failures.isEmpty else { return [] }
        return try await database.write("forceFail") { db in
            let update = try db.cachedStatement(
                sql: """
                    UPDATE task SET state = 'failed', \(Self.unheld), last_error = ?, completed_at = ?
                    WHERE session = ? AND idx = ? AND state IN ('pending', 'processing')
                    """)
            var failed = Set<TaskID>(minimumCapacity: failures.count)
            let date = at.timeIntervalSince1970
            for failure in failures where !failed.contains(failure.id) {
                try update.execute(arguments: [failure.message, date, failure.id.session.rawValue, failure.id.index])
                if db.changesCount > 0 { failed.insert(failure.id) }
            }
            return failed
        }
    }

    /// Cancels the tasks among `ids` that are not terminal (owner cleared).
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func cancel(_ ids: [TaskID], at: Date) async throws -> CancelCounts {
        guard !ids.isEmpty else { return CancelCounts() }
        return try await database.write("cancel") { db in
            let update = try db.cachedStatement(sql: Self.cancelSQL(scope: "session = ? AND idx = ?"))
            var counts = CancelCounts()
            let date = at.timeIntervalSince1970
            for id in Self.unique(ids) {
                try update.execute(arguments: [date, id.session.rawValue, id.index, TaskState.pending.rawValue])
                if db.changesCount > 0 {
                    counts.pending += 1
                    continue
                }
                try update.execute(arguments: [date, id.session.rawValue, id.index, TaskState.processing.rawValue])
                counts.processing += db.changesCount
            }
            return counts
        }
    }

    /// Marks a session cancelled and cancels its non-terminal tasks, in one transaction.
    ///
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/unavailable``.
    public func cancelSession(_ id: SessionID, at: Date) async throws -> CancelCounts {
        let backend = self.backend
        return try await database.write("cancelSession") { db in
            try db.cachedStatement(sql: "UPDATE session SET cancelled = 1 WHERE id = ?").execute(arguments: [id.rawValue])
            guard db.changesCount > 0 else {
                throw GridError.notFound("session \(id) does not exist", backend: backend)
            }
            let update = try db.cachedStatement(sql: Self.cancelSQL(scope: "session = ?"))
            let date = at.timeIntervalSince1970
            try update.execute(arguments: [date, id.rawValue, TaskState.pending.rawValue])
            let pending = db.changesCount
            try update.execute(arguments: [date, id.rawValue, TaskState.processing.rawValue])
            return CancelCounts(pending: pending, processing: db.changesCount)
        }
    }

    /// Removes a session and all its task records, in one transaction.
    ///
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/unavailable``.
    public func deleteSession(_ id: SessionID) async throws -> Int {
        let backend = self.backend
        return try await database.write("deleteSession") { db in
            try db.cachedStatement(sql: "DELETE FROM session WHERE id = ?").execute(arguments: [id.rawValue])
            guard db.changesCount > 0 else {
                throw GridError.notFound("session \(id) does not exist", backend: backend)
            }
            try db.cachedStatement(sql: "DELETE FROM submission WHERE session = ?").execute(arguments: [id.rawValue])
            try db.cachedStatement(sql: "DELETE FROM task WHERE session = ?").execute(arguments: [id.rawValue])
            return db.changesCount
        }
    }

    private static func cancelSQL(scope: String) -> String {
        """
        UPDATE task SET state = 'cancelled', \(Self.unheld), completed_at = ?
        WHERE \(scope) AND state = ?
        """
    }

    // MARK: - Reads

    /// Reads one task.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    public func task(_ id: TaskID) async throws -> TaskRecord {
        let record = try await database.read("task") { db in
            try Row.fetchOne(
                db.cachedStatement(sql: "SELECT \(Self.taskColumns) FROM task WHERE session = ? AND idx = ?"),
                arguments: [id.session.rawValue, id.index]
            ).map { try Self.decodeTask($0, id: id) }
        }
        guard let record else { throw GridError.notFound("task \(id) does not exist", backend: backend) }
        return record
    }

    /// Reads the tasks that exist among `ids`: one `SELECT … IN (json_each)` per session.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func tasks(_ ids: [TaskID]) async throws -> [TaskRecord] {
        guard !ids.isEmpty else { return [] }
        let groups = Self.bySession(Self.unique(ids))
        return try await database.read("tasks") { db in
            let select = try db.cachedStatement(
                sql: "SELECT \(Self.taskColumns) FROM task WHERE session = ? AND idx IN (SELECT value FROM json_each(?))")
            var records: [TaskRecord] = []
            for (session, indices) in groups {
                let rows = try Row.fetchCursor(select, arguments: [session.rawValue, Self.jsonArray(indices)])
                while let row = try rows.next() {
                    records.append(try Self.decodeTask(row, id: TaskID(session: session, index: row[1])))
                }
            }
            return records
        }
    }

    /// Counts a session's tasks by state (a scan of the `task_by_state` index range of the session).
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func counts(_ session: SessionID) async throws -> StateCounts {
        try await database.read("counts") { db in
            let rows = try Row.fetchCursor(
                db.cachedStatement(sql: "SELECT state, count(*) FROM task WHERE session = ? GROUP BY state"),
                arguments: [session.rawValue])
            var counts = StateCounts()
            while let row = try rows.next() {
                if let state = TaskState(rawValue: row[0]) { counts[state] = row[1] }
            }
            return counts
        }
    }

    /// Pages through a session's tasks in one state in index order; the cursor is the last index.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a malformed cursor or a `limit` below 1;
    ///   ``GridError/Code/unavailable``.
    public func tasks(_ session: SessionID, state: TaskState, after cursor: String?, limit: Int) async throws -> Page<TaskRecord> {
        try Self.checkLimit(limit)
        let after = try IntegerCursor.parse(cursor) ?? -1
        let records = try await database.read("tasks") { db in
            let rows = try Row.fetchCursor(
                db.cachedStatement(
                    sql: "SELECT \(Self.taskColumns) FROM task WHERE session = ? AND state = ? AND idx > ? ORDER BY idx LIMIT ?"),
                arguments: [session.rawValue, state.rawValue, after, limit + 1])
            var records: [TaskRecord] = []
            while let row = try rows.next() {
                records.append(try Self.decodeTask(row, id: TaskID(session: session, index: row[1])))
            }
            return records
        }
        guard records.count > limit else { return Page(items: records, next: nil) }
        let items = Array(records.prefix(limit))
        return Page(items: items, next: items.last.map { IntegerCursor.make($0.id.index) })
    }

    /// Finds up to `limit` processing tasks whose lease expired before `now`, oldest expiry first,
    /// through the partial index `task_lease`.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    // ISSUE14-STUB: replaced by the backend's own completion order on its branch; never merged to main.
    public func completions(_ session: SessionID, after sequence: Int, limit: Int) async throws -> [TaskRecord] {
        throw GridError(.internalError, "completion order not implemented yet")
    }

    public func expiredLeases(now: Date, limit: Int) async throws -> [TaskRecord] {
        guard limit > 0 else { return [] }
        return try await database.read("expiredLeases") { db in
            let rows = try Row.fetchCursor(
                db.cachedStatement(sql: Self.expiredLeasesSQL),
                arguments: [now.timeIntervalSince1970, limit])
            var records: [TaskRecord] = []
            var sessions = SessionCache()
            while let row = try rows.next() {
                records.append(try Self.decodeTask(row, id: TaskID(session: try sessions.session(row[0]), index: row[1])))
            }
            return records
        }
    }

    static let expiredLeasesSQL = """
        SELECT \(taskColumns) FROM task WHERE state = 'processing' AND lease_expiry < ?
        ORDER BY lease_expiry, session, idx LIMIT ?
        """

    // MARK: - Rows

    /// The ids grouped by session, sessions in order of first appearance.
    static func bySession(_ ids: [TaskID]) -> [(SessionID, [Int])] {
        var groups: [(SessionID, [Int])] = []
        for id in ids {
            if let last = groups.indices.last, groups[last].0 == id.session {
                groups[last].1.append(id.index)
            } else if let position = groups.firstIndex(where: { $0.0 == id.session }) {
                groups[position].1.append(id.index)
            } else {
                groups.append((id.session, [id.index]))
            }
        }
        return groups
    }

    /// The attempts grouped by session, as `[[index, attempt], …]` batches.
    static func bySession(_ attempts: [TaskAttempt]) -> [(SessionID, SQLiteBatch)] {
        batches(attempts, id: \.id) { batch, attempt in batch.int(attempt.attempt) }
    }

    /// Items grouped by session, sessions in order of first appearance, one row per item: the task's
    /// index, then what `row` appends.
    static func batches<Item>(
        _ items: [Item], id: (Item) -> TaskID, row: (inout SQLiteBatch, Item) -> Void
    ) -> [(SessionID, SQLiteBatch)] {
        var groups: [(SessionID, SQLiteBatch)] = []
        for item in items {
            let session = id(item).session
            let position: Int
            if let found = groups.lastIndex(where: { $0.0 == session }) {
                position = found
            } else {
                groups.append((session, SQLiteBatch()))
                position = groups.count - 1
            }
            groups[position].1.beginRow()
            groups[position].1.int(id(item).index)
            row(&groups[position].1, item)
            groups[position].1.endRow()
        }
        return groups
    }

    /// The ids without repeats, in order of first appearance.
    static func unique(_ ids: [TaskID]) -> [TaskID] {
        var seen = Set<TaskID>()
        return ids.filter { seen.insert($0).inserted }
    }

    /// `[1,2,3]`: integers as a JSON array, for `json_each`.
    static func jsonArray(_ values: [Int]) -> String {
        var text = "["
        text.reserveCapacity(values.count * 7 + 2)
        for (position, value) in values.enumerated() {
            if position > 0 { text += "," }
            text += String(value)
        }
        return text + "]"
    }

    static let taskColumns = """
        session, idx, state, owner, lease_expiry, retries, max_retries, priority, timeout, \
        submitted_at, started_at, completed_at, last_error, output, attempt, claim_token
        """

    private static func decodeTask(_ row: Row, id: TaskID) throws -> TaskRecord {
        let owner: String? = row[3]
        let stateText: String = row[2]
        return TaskRecord(
            id: id,
            state: TaskState(rawValue: stateText) ?? .failed,
            owner: owner.map(AgentID.init),
            leaseExpiry: date(row[4]),
            retries: row[5],
            maxRetries: row[6],
            priority: row[7],
            timeout: (row[8] as Double?).map(Duration.init(timeInterval:)),
            submittedAt: date(row[9]) ?? Date(timeIntervalSince1970: 0),
            startedAt: date(row[10]),
            completedAt: date(row[11]),
            lastError: row[12],
            output: try row.bytes(atIndex: 13),
            attempt: row[14],
            claimToken: Self.claimToken(row[15])
        )
    }

    /// A claim token as the `claim_token` column keeps it: the tokens agents draw (64 bits in base 36)
    /// as an INTEGER, 8 bytes and no text to decode; any other token as TEXT.
    static func stored(_ token: ClaimToken?) -> DatabaseValue {
        guard let token else { return .null }
        if let bits = UInt64(token.rawValue, radix: 36), String(bits, radix: 36) == token.rawValue {
            return Int64(bitPattern: bits).databaseValue
        }
        return token.rawValue.databaseValue
    }

    /// A claim token from the `claim_token` column (see ``stored(_:)``).
    static func claimToken(_ value: DatabaseValue) -> ClaimToken? {
        switch value.storage {
        case .int64(let bits): return try? ClaimToken(String(UInt64(bitPattern: bits), radix: 36))
        case .string(let text): return try? ClaimToken(text)
        default: return nil
        }
    }

    private static let submissionColumns = "session, key, first, count, sent, state, version, created_at, updated_at"

    private static func submissionArguments(_ submission: SubmissionRecord) -> StatementArguments {
        [
            submission.session.rawValue, submission.key.rawValue, submission.first, submission.count, submission.sent,
            submission.state.rawValue, submission.version, submission.createdAt.timeIntervalSince1970,
            submission.updatedAt.timeIntervalSince1970,
        ]
    }

    private static func decodeSubmission(_ row: Row) throws -> SubmissionRecord {
        let stateText: String = row[5]
        guard let state = SubmissionState(rawValue: stateText) else {
            throw GridError(.internalError, "submission state '\(stateText)' is unknown", backend: SQLiteDatabase.backendName)
        }
        return SubmissionRecord(
            session: try SessionID(row[0]), key: try SubmissionKey(row[1]), first: row[2], count: row[3], sent: row[4], state: state,
            version: row[6], createdAt: Date(timeIntervalSince1970: row[7]), updatedAt: Date(timeIntervalSince1970: row[8]))
    }

    private static let sessionColumns = "id, priority, max_retries, task_timeout, labels, created_at, task_count, cancelled"

    private static func decodeSession(_ row: Row) throws -> SessionRecord {
        let labelsText: String = row[4]
        let labels = (try? JSONDecoder().decode([String: String].self, from: Data(labelsText.utf8))) ?? [:]
        return SessionRecord(
            id: try SessionID(row[0]),
            options: SessionOptions(
                priority: row[1],
                maxRetries: row[2],
                taskTimeout: (row[3] as Double?).map(Duration.init(timeInterval:)),
                labels: labels
            ),
            createdAt: Date(timeIntervalSince1970: row[5]),
            taskCount: row[6],
            cancelled: row[7]
        )
    }

    private static func encodeLabels(_ labels: [String: String]) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return String(decoding: try encoder.encode(labels), as: UTF8.self)
    }

    private static func date(_ seconds: Double?) -> Date? {
        seconds.map(Date.init(timeIntervalSince1970:))
    }

    private static func checkLimit(_ limit: Int) throws {
        guard limit > 0 else {
            throw GridError.invalidArgument("limit is \(limit); it must be at least 1", backend: SQLiteDatabase.backendName)
        }
    }
}
