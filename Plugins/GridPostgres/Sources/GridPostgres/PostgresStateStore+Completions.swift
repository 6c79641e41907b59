import Foundation
import GridKernel
import PostgresNIO

// Counters and completion order: the `task_counts` and `session_completed` tables and the
// `completion_seq` column (see `PostgresSchema.swift`), kept by every transition in its own statement.
extension PostgresStateStore {
    var countsTable: String { database.table("task_counts") }
    var completedTable: String { database.table("session_completed") }

    /// The columns every transition's `old` rows begin with: the task, its state before (`was`) and its
    /// completion number (`seq`). The new state follows, named `state`.
    static let lockedColumns = "t.session, t.idx, t.state AS was, t.completion_seq AS seq"

    /// Counter rows per session and state: a statement adds to the shard of its connection.
    static let shards = 16

    /// A task a transition changed.
    struct Change {
        var id: TaskID
        var was: TaskState
        var state: TaskState
    }

    /// Runs one transition as one statement and returns the tasks it changed (see ``transition(_:set:marking:)``).
    func transition(_ operation: String, _ old: PostgresQuery, set: String) async throws -> [Change] {
        var marked = false
        return try await transition(operation, old, set: set, marking: nil, marked: &marked)
    }

    /// Runs one transition as one statement; with `marking` (trusted SQL of an `UPDATE … RETURNING 1`),
    /// runs it in the same statement and tells in `marked` whether it changed a row.
    func transition(
        _ operation: String, _ old: PostgresQuery, set: String, marking: String?, marked: inout Bool
    ) async throws -> [Change] {
        let rows = try await database.collect(operation, transition(old, set: set, marking: marking)) { row in
            try row.decode((String?, Int?, String?, String?).self)
        }
        var changes: [Change] = []
        for (session, index, was, state) in rows {
            guard let session, let index, let was = was.flatMap(TaskState.init), let state = state.flatMap(TaskState.init) else {
                marked = true
                continue
            }
            changes.append(Change(id: TaskID(session: try SessionID(session), index: index), was: was, state: state))
        }
        return changes
    }

    /// The statement of a transition, in four steps that PostgreSQL runs in this order:
    ///
    /// 1. `old`: the caller's `SELECT` of the tasks to change (``lockedColumns``, the new `state`, and
    ///    what `set` needs, from the task `t`), locked in task order (`FOR UPDATE`: a row changed by a
    ///    concurrent writer is read again once it commits, and kept only if it still qualifies);
    /// 2. `numbered`: for each session with tasks becoming terminal (`ends`, ranked `k` of `total` by
    ///    index in `ranked`), its completion counter moves past them (`last + total`, an upsert that
    ///    locks the row until commit), and the statement notifies `<schema>_done` with `session:last`,
    ///    delivered at commit;
    /// 3. `done`: the update, each ending task numbered `last - total + k`;
    /// 4. `counted`: the moves between states added to the counters (after the main query, which
    ///    reads `done`).
    ///
    /// The final rows are `session, idx, was, state` for each task changed, and a row of `NULL`s when
    /// `marking` changed its row. The update joins the tasks to `ranked` by key and to `numbered` (a
    /// row per session) only: the planner often takes a CTE for one row, and a nested loop over two
    /// CTEs of the batch's size would be quadratic (seen: 25 s for a finish of 7,200 tasks).
    func transition(_ old: PostgresQuery, set: String = "", marking: String? = nil) -> PostgresQuery {
        let terminal = PostgresSchema.terminal
        let channel = Self.literal(database.channel("done"))
        let ends = "(old.state IN \(terminal) AND old.seq IS NULL)"
        let assignments = ["state = o.state", "completion_seq = CASE WHEN o.ends THEN n.last - o.total + o.k ELSE t.completion_seq END"]
            + (set.isEmpty ? [] : [set])
        let ctes = (marking.map { ["marked AS (\($0))"] } ?? []) + [
            "old AS (\(old.sql)\nORDER BY t.session, t.idx FOR UPDATE OF t)",
            """
            ranked AS (
                SELECT old.*, \(ends) AS ends, row_number() OVER (PARTITION BY old.session, \(ends) ORDER BY old.idx) AS k,
                       count(*) FILTER (WHERE \(ends)) OVER (PARTITION BY old.session) AS total
                FROM old
            )
            """,
            """
            numbered AS (
                INSERT INTO \(completedTable) AS c (session, last)
                SELECT session, count(*) FROM ranked WHERE ends GROUP BY session ORDER BY session
                ON CONFLICT (session) DO UPDATE SET last = c.last + excluded.last
                RETURNING session, last, pg_notify(\(channel), session || ':' || last) IS NULL AS notified
            )
            """,
            """
            done AS (
                UPDATE \(taskTable) AS t SET \(assignments.joined(separator: ", "))
                FROM ranked AS o LEFT JOIN numbered AS n ON n.session = o.session
                WHERE t.session = o.session AND t.idx = o.idx
                RETURNING t.session, t.idx, o.was, t.state
            )
            """,
            Self.counting("done", into: countsTable),
        ]
        let marks = marking == nil ? "" : "\nUNION ALL SELECT NULL, NULL, NULL, NULL FROM marked"
        return PostgresQuery(
            unsafeSQL: "WITH " + ctes.joined(separator: ",\n") + "\nSELECT session, idx, was, state FROM done" + marks, binds: old.binds)
    }

    /// The CTE `counted`: adds the moves of the rows of `changes` (columns `session`, `was`, `state`;
    /// `was` is `NULL` for a task created) to this connection's shard of `table`, one row per session
    /// and state, in that order (the lock order of every writer).
    static func counting(_ changes: String, into table: String) -> String {
        """
        counted AS (
            INSERT INTO \(table) AS c (session, state, shard, n)
            SELECT session, state, (pg_backend_pid() % \(shards))::int2, sum(d) FROM (
                SELECT session, was AS state, -1 AS d FROM \(changes) WHERE was IS NOT NULL
                UNION ALL SELECT session, state, 1 FROM \(changes)
            ) AS moves
            GROUP BY session, state HAVING sum(d) <> 0 ORDER BY session, state
            ON CONFLICT (session, state, shard) DO UPDATE SET n = c.n + excluded.n
        )
        """
    }

    /// Counts a session's tasks by state: the sum of its counter rows (at most 16 per state), whatever
    /// the number of tasks.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func counts(_ session: SessionID) async throws -> StateCounts {
        let rows = try await database.collect(
            "counts",
            """
            SELECT state, sum(n)::int8 FROM \(unescaped: countsTable) WHERE session = \(session.rawValue)
            GROUP BY state HAVING sum(n) <> 0
            """
        ) { row in try row.decode((String, Int).self) }
        var counts = StateCounts()
        for (state, count) in rows {
            if let state = TaskState(rawValue: state) { counts[state] = count }
        }
        return counts
    }

    /// Reads a session's terminal tasks numbered `sequence + 1`, `sequence + 2`, … (at most `limit`):
    /// a range scan of the index `task_completion`. Numbers commit in order, so a snapshot holds a
    /// prefix of the order and the answer has no gap.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a negative `sequence` or a `limit`
    ///   below 1; ``GridKernel/GridError/Code/unavailable``.
    public func completions(_ session: SessionID, after sequence: Int, limit: Int) async throws -> [TaskRecord] {
        try CompletionPolling.check(after: sequence, limit: limit, backend: backend)
        let records = try await database.collect(
            "completions",
            """
            SELECT \(unescaped: Self.taskColumns) FROM \(unescaped: taskTable)
            WHERE session = \(session.rawValue) AND completion_seq > \(sequence) ORDER BY completion_seq LIMIT \(limit)
            """,
            Self.decodeTask)
        // Defensive: stop at a gap rather than skip a number.
        let contiguous = records.enumerated().prefix { $0.element.completionSequence == sequence + $0.offset + 1 }
        return contiguous.map(\.element)
    }

    /// Waits until the session's last completion number passes `sequence`: woken by the notification
    /// the numbering statement sends on `<schema>_done` (through ``PostgresNotifications``), within a
    /// millisecond of a commit by any process; reads the counter once per wake-up, and every
    /// ``PostgresDatabase/pollInterval`` while notifications cannot reach this process.
    ///
    /// - Throws: `CancellationError` when the waiting task is cancelled; ``GridKernel/GridError/Code/unavailable``.
    public func waitForCompletions(_ session: SessionID, after sequence: Int, timeout: Duration) async throws -> Bool {
        try await database.waitForNotification(database.channel("done"), key: session.rawValue, timeout: timeout) {
            (try await lastCompletion(session) > sequence ? true : nil, nil)
        } ?? false
    }

    /// The session's last completion number (0 when none, or for an unknown session).
    private func lastCompletion(_ session: SessionID) async throws -> Int {
        try await database.collect(
            "waitForCompletions", "SELECT last FROM \(unescaped: completedTable) WHERE session = \(session.rawValue)"
        ) { row in try row.decode(Int.self) }.first ?? 0
    }
}
