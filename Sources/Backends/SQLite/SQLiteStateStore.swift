import Foundation
import GRDB
import GridKernel

/// The state store in an SQLite file: sessions in the `session` table, tasks in the `task` table.
///
/// Every transition is a conditional `UPDATE … WHERE <expected state and owner>`, one statement per
/// session of the batch (the tasks travel as a JSON list; `fail` runs one per task), all in one
/// `BEGIN IMMEDIATE` transaction, so a batch of N tasks costs one transaction and N index lookups.
/// Exactly one of several concurrent claimers (threads or processes) wins a task because SQLite
/// serialises the write transactions. The rows that changed state come back through `RETURNING`; in
/// the same transaction one upsert per session moves the counters of `session_counts` and one
/// statement per session numbers the tasks that became terminal (``TaskMoves``).
public struct SQLiteStateStore: StateStore {
    /// The database holding the state.
    public let database: SQLiteDatabase
    /// How often ``waitForCompletions(_:after:timeout:)`` looks at the counters when no wake-up came
    /// (completions by processes whose wake-ups cannot reach this one).
    public let completionPollInterval: Duration

    /// Creates a state store on `database`.
    ///
    /// - Parameter completionPollInterval: how often a wait for completions looks without a wake-up.
    public init(database: SQLiteDatabase, completionPollInterval: Duration = .milliseconds(250)) {
        self.database = database
        self.completionPollInterval = completionPollInterval
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

    /// Inserts task records, leaving existing ones as they are (`INSERT OR IGNORE`), in one transaction;
    /// only the records inserted are counted, and those inserted in a terminal state are numbered.
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
        if uniform && first.output == nil && !first.state.isTerminal {
            let indices = Self.jsonArray(tasks.map(\.id.index))
            try await database.write("createTasks") { db in
                try db.cachedStatement(
                    sql: """
                        INSERT OR IGNORE INTO task (\(Self.insertColumns))
                        SELECT ?, value, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ? FROM json_each(?)
                        """
                ).execute(arguments: [
                    first.id.session.rawValue, first.state.rawValue, first.owner?.rawValue,
                    first.leaseExpiry?.timeIntervalSince1970, first.retries, first.maxRetries, first.priority,
                    first.timeout?.timeInterval, first.submittedAt.timeIntervalSince1970,
                    first.startedAt?.timeIntervalSince1970, first.completedAt?.timeIntervalSince1970, first.lastError,
                    first.attempt, Self.stored(first.claimToken), indices,
                ])
                var moves = TaskMoves()
                moves.move(first.id.session.rawValue, count: db.changesCount, from: nil, to: first.state)
                try moves.save(db)
            }
            return
        }
        let completed = try await database.write("createTasks") { db in
            let insert = try db.cachedStatement(
                sql: "INSERT OR IGNORE INTO task (\(Self.insertColumns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS BLOB), ?, ?)")
            var moves = TaskMoves()
            for task in tasks {
                try insert.execute(arguments: [
                    task.id.session.rawValue, task.id.index, task.state.rawValue, task.owner?.rawValue,
                    task.leaseExpiry?.timeIntervalSince1970, task.retries, task.maxRetries, task.priority,
                    task.timeout?.timeInterval, task.submittedAt.timeIntervalSince1970,
                    task.startedAt?.timeIntervalSince1970, task.completedAt?.timeIntervalSince1970, task.lastError,
                    DatabaseValue.blob(task.output), task.attempt, Self.stored(task.claimToken),
                ])
                if db.changesCount > 0 { moves.move(task.id.session.rawValue, task.id.index, from: nil, to: task.state) }
            }
            try moves.save(db)
            return moves.completed
        }
        if completed { database.wakeUps.notify(.completions) }
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
            var moves = TaskMoves()
            for (session, indices) in Self.bySession(ids) {
                let rows = try Row.fetchCursor(
                    update, arguments: [owner.rawValue, expiry, started, Self.stored(token), session.rawValue, Self.jsonArray(indices)])
                var claimed = 0
                while let row = try rows.next() {
                    let id = TaskID(session: session, index: row[1])
                    won[id] = try Self.decodeTask(row, id: id)
                    claimed += 1
                }
                moves.move(session.rawValue, count: claimed, from: .pending, to: .processing)
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
            try moves.save(db)
            // RETURNING yields rows in no particular order: answer in the order asked.
            return ids.compactMap { won.removeValue(forKey: $0) }
        }
    }

    /// Moves the lease expiry of the current attempts `owner` holds.
    ///
    /// - Returns: the tasks still held.
    /// - Throws: ``GridError/Code/unavailable``.
    public func heartbeat(_ attempts: [TaskAttempt], owner: AgentID, leaseExpiry: Date) async throws -> Set<TaskID> {
        try await attemptTransition("heartbeat", attempts, owner: owner, set: "lease_expiry = ?4", leaseExpiry.timeIntervalSince1970, moving: nil)
    }

    /// Gives back the current attempts `owner` holds: pending again, owner and lease cleared, no retry.
    ///
    /// - Returns: the tasks released.
    /// - Throws: ``GridError/Code/unavailable``.
    public func release(_ attempts: [TaskAttempt], owner: AgentID) async throws -> Set<TaskID> {
        try await attemptTransition("release", attempts, owner: owner, set: "state = 'pending', \(Self.unheld)", nil, moving: .pending)
    }

    /// One `UPDATE … SET <set>` of the attempts among `attempts` that are current and owned by `owner`,
    /// per session; the (index, attempt) pairs travel as a JSON array. `?4` is `value`. `moving` is the
    /// live state the update puts the tasks in, if it changes it.
    private func attemptTransition(
        _ operation: String, _ attempts: [TaskAttempt], owner: AgentID, set: String, _ value: Double?, moving: TaskState?
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
            var moves = TaskMoves()
            for (session, batch) in groups {
                var arguments: StatementArguments = [batch.text, session.rawValue, owner.rawValue]
                if let value { arguments += [value] }
                let rows = try Int.fetchCursor(update, arguments: arguments)
                var changed = 0
                while let index = try rows.next() {
                    if held.insert(TaskID(session: session, index: index)).inserted { changed += 1 }
                }
                if let moving { moves.move(session.rawValue, count: changed, from: .processing, to: moving) }
            }
            try moves.save(db)
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
        let finished = try await database.write("finish") { [groups] db in
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
            var moves = TaskMoves()
            let completed = at.timeIntervalSince1970
            for (session, batch) in groups {
                let rows = try Int.fetchCursor(
                    update, arguments: [batch.text, completed, batch.blob, session.rawValue, owner.rawValue])
                while let index = try rows.next() {
                    if finished.insert(TaskID(session: session, index: index)).inserted {
                        moves.move(session.rawValue, index, from: .processing, to: .finished)
                    }
                }
            }
            try moves.save(db)
            return finished
        }
        if !finished.isEmpty { database.wakeUps.notify(.completions) }
        return finished
    }

    /// Records failed runs of the current attempts `owner` holds, by the retry rule of
    /// ``TaskRecord/afterFailure(message:retryable:at:)``, evaluated in SQL.
    ///
    /// - Returns: the new state of each task that was still held.
    /// - Throws: ``GridError/Code/unavailable``.
    public func fail(_ failures: [TaskFailure], owner: AgentID, at: Date) async throws -> [TaskID: TaskState] {
        guard !failures.isEmpty else { return [:] }
        let states = try await database.write("fail") { db in
            let update = try db.cachedStatement(
                sql: Self.failSQL(where: "session = ?5 AND idx = ?6 AND state = 'processing' AND owner = ?4 AND attempt = ?7"))
            var states: [TaskID: TaskState] = [:]
            var moves = TaskMoves()
            let date = at.timeIntervalSince1970
            for failure in failures where states[failure.id] == nil {
                let arguments: StatementArguments = [
                    failure.retryable, date, failure.message, owner.rawValue, failure.id.session.rawValue, failure.id.index, failure.attempt,
                ]
                let rows = try Row.fetchCursor(update, arguments: arguments)
                while let row = try rows.next() {
                    if let state = TaskState(rawValue: row[1]) {
                        states[failure.id] = state
                        moves.move(failure.id.session.rawValue, failure.id.index, from: .processing, to: state)
                    }
                }
            }
            try moves.save(db)
            return states
        }
        if states.values.contains(where: \.isTerminal) { database.wakeUps.notify(.completions) }
        return states
    }

    /// Reaps the tasks among `ids` that are processing with a lease expiry before `now`, by the retry
    /// rule with the error "lease expired".
    ///
    /// - Returns: the new state of each task reaped.
    /// - Throws: ``GridError/Code/unavailable``.
    public func expire(_ ids: [TaskID], now: Date) async throws -> [TaskID: TaskState] {
        guard !ids.isEmpty else { return [:] }
        let groups = Self.bySession(ids)
        let states = try await database.write("expire") { db in
            let update = try db.cachedStatement(
                sql: Self.failSQL(
                    where: "session = ?5 AND idx IN (SELECT value FROM json_each(?6)) AND state = 'processing' AND lease_expiry < ?4"))
            var states: [TaskID: TaskState] = [:]
            var moves = TaskMoves()
            let date = now.timeIntervalSince1970
            for (session, indices) in groups {
                let arguments: StatementArguments = [true, date, "lease expired", date, session.rawValue, Self.jsonArray(indices)]
                let rows = try Row.fetchCursor(update, arguments: arguments)
                while let row = try rows.next() {
                    if let state = TaskState(rawValue: row[1]) {
                        states[TaskID(session: session, index: row[0])] = state
                        moves.move(session.rawValue, row[0], from: .processing, to: state)
                    }
                }
            }
            try moves.save(db)
            return states
        }
        if states.values.contains(where: \.isTerminal) { database.wakeUps.notify(.completions) }
        return states
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
        // Per session: the indices and the messages (packed into one blob); the first failure of a task wins.
        var seen = Set<TaskID>()
        let groups = Self.batches(failures.filter { seen.insert($0.id).inserted }, id: \.id) { batch, failure in
            batch.bytes(Array(failure.message.utf8))
        }
        let failed = try await database.write("forceFail") { [groups] db in
            let update = try db.cachedStatement(
                sql: """
                    WITH j(i, o, l) AS MATERIALIZED (SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1))
                    UPDATE task SET state = 'failed', \(Self.unheld), completed_at = ?3,
                        last_error = CAST(substr(CAST(?2 AS BLOB), j.o, j.l) AS TEXT)
                    FROM j
                    WHERE task.session = ?4 AND task.idx = j.i AND task.state = ?5
                    RETURNING task.idx
                    """)
            var failed = Set<TaskID>(minimumCapacity: failures.count)
            var moves = TaskMoves()
            let date = at.timeIntervalSince1970
            for (session, batch) in groups {
                // Live tasks in either state: one statement per state, so each row's old state is known.
                for state in [TaskState.pending, .processing] {
                    let rows = try Int.fetchCursor(update, arguments: [batch.text, batch.blob, date, session.rawValue, state.rawValue])
                    while let index = try rows.next() {
                        failed.insert(TaskID(session: session, index: index))
                        moves.move(session.rawValue, index, from: state, to: .failed)
                    }
                }
            }
            try moves.save(db)
            return failed
        }
        if !failed.isEmpty { database.wakeUps.notify(.completions) }
        return failed
    }

    /// Cancels the tasks among `ids` that are not terminal (owner cleared).
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func cancel(_ ids: [TaskID], at: Date) async throws -> CancelCounts {
        guard !ids.isEmpty else { return CancelCounts() }
        let groups = Self.bySession(ids)
        let counts = try await database.write("cancel") { db in
            let update = try db.cachedStatement(sql: Self.cancelSQL(scope: "session = ?2 AND idx IN (SELECT value FROM json_each(?4))"))
            var moves = TaskMoves()
            let date = at.timeIntervalSince1970
            for (session, indices) in groups {
                try Self.cancel(update, session: session, date: date, moves: &moves, Self.jsonArray(indices))
            }
            try moves.save(db)
            return moves.cancelled
        }
        if counts != CancelCounts() { database.wakeUps.notify(.completions) }
        return counts
    }

    /// Marks a session cancelled and cancels its non-terminal tasks, in one transaction.
    ///
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/unavailable``.
    public func cancelSession(_ id: SessionID, at: Date) async throws -> CancelCounts {
        let backend = self.backend
        let counts = try await database.write("cancelSession") { db in
            try db.cachedStatement(sql: "UPDATE session SET cancelled = 1 WHERE id = ?").execute(arguments: [id.rawValue])
            guard db.changesCount > 0 else {
                throw GridError.notFound("session \(id) does not exist", backend: backend)
            }
            let update = try db.cachedStatement(sql: Self.cancelSQL(scope: "session = ?2"))
            var moves = TaskMoves()
            try Self.cancel(update, session: id, date: at.timeIntervalSince1970, moves: &moves)
            try moves.save(db)
            return moves.cancelled
        }
        if counts != CancelCounts() { database.wakeUps.notify(.completions) }
        return counts
    }

    /// Runs a cancel statement (``cancelSQL(scope:)``) for the pending, then the processing tasks of
    /// `session`, recording the moves; `extra` is its `?4`, if any.
    private static func cancel(
        _ update: Statement, session: SessionID, date: Double, moves: inout TaskMoves, _ extra: String? = nil
    ) throws {
        for state in [TaskState.pending, .processing] {
            var arguments: StatementArguments = [date, session.rawValue, state.rawValue]
            if let extra { arguments += [extra] }
            let rows = try Int.fetchCursor(update, arguments: arguments)
            while let index = try rows.next() { moves.move(session.rawValue, index, from: state, to: .cancelled) }
        }
    }

    /// Removes a session, all its task records (and so their completion numbers) and its counters, in
    /// one transaction.
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
            try db.cachedStatement(sql: "DELETE FROM session_counts WHERE session = ?").execute(arguments: [id.rawValue])
            try db.cachedStatement(sql: "DELETE FROM task WHERE session = ?").execute(arguments: [id.rawValue])
            return db.changesCount
        }
    }

    /// Cancels the tasks of `scope` in state `?3`: `?1` is the date, `?2` the session.
    private static func cancelSQL(scope: String) -> String {
        """
        UPDATE task SET state = 'cancelled', \(Self.unheld), completed_at = ?1
        WHERE \(scope) AND state = ?3
        RETURNING idx
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

    /// Counts a session's tasks by state: one row of `session_counts`, kept by the transitions.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func counts(_ session: SessionID) async throws -> StateCounts {
        try await database.read("counts") { db in
            Self.decodeCounts(
                try Row.fetchOne(
                    db.cachedStatement(sql: "SELECT \(Self.countColumns) FROM session_counts WHERE session = ?"),
                    arguments: [session.rawValue]))
        }
    }

    /// Reads a session's terminal tasks numbered after `sequence`, in order: a range of the index
    /// `task_completion`. The numbers are dense, as each is given in the transaction that makes a
    /// task terminal.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a negative `sequence` or a `limit` below 1;
    ///   ``GridError/Code/unavailable``.
    public func completions(_ session: SessionID, after sequence: Int, limit: Int) async throws -> [TaskRecord] {
        try CompletionPolling.check(after: sequence, limit: limit, backend: backend)
        return try await database.read("completions") { db in
            let rows = try Row.fetchCursor(
                db.cachedStatement(sql: Self.completionsSQL), arguments: [session.rawValue, sequence, limit])
            var records: [TaskRecord] = []
            while let row = try rows.next() {
                records.append(try Self.decodeTask(row, id: TaskID(session: session, index: row[1])))
            }
            return records
        }
    }

    static let completionsSQL = """
        SELECT \(taskColumns) FROM task WHERE session = ? AND completion_seq > ? ORDER BY completion_seq LIMIT ?
        """

    /// Waits until the session's terminal count passes `sequence`, looking at its counters when a
    /// completion is announced (by this process, or by another through the database's wake-up socket)
    /// and every ``completionPollInterval`` otherwise.
    ///
    /// - Throws: `CancellationError` at once when cancelled; ``GridError/Code/unavailable``.
    public func waitForCompletions(_ session: SessionID, after sequence: Int, timeout: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now.advanced(by: max(timeout, .zero))
        let signal = database.wakeUps.completions
        // Listening before the first look: a completion committed after it sends this process a wake-up.
        if timeout > .zero { database.wakeUps.listen() }
        while true {
            let generation = signal.generation
            let terminal = try await database.read("waitForCompletions") { db in
                try Int.fetchOne(
                    db.cachedStatement(sql: "SELECT \(TaskMoves.terminalSum) FROM session_counts WHERE session = ?"),
                    arguments: [session.rawValue]) ?? 0
            }
            if terminal > sequence { return true }
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .zero else { return false }
            await signal.wait(after: generation, timeout: min(completionPollInterval, remaining))
            try Task.checkCancellation()
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

    /// The columns a task is created with.
    static let insertColumns = """
        session, idx, state, owner, lease_expiry, retries, max_retries, priority, timeout, \
        submitted_at, started_at, completed_at, last_error, output, attempt, claim_token
        """

    /// The columns a task is read with (``decodeTask(_:id:)``).
    static let taskColumns = insertColumns + ", completion_seq"

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
            claimToken: Self.claimToken(row[15]),
            completionSequence: row[16]
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
