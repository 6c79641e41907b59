import GRDB
import GridKernel

/// The moves between states that one write transaction made, per session; ``save(_:)`` applies them
/// to the `session_counts` row of each session and numbers the tasks that became terminal, in the
/// same transaction (see the schema notes in `SQLiteSchema.swift`).
///
/// Batched like the transitions: one counter upsert per session, and one numbering statement per
/// session whose tasks became terminal, whatever the number of tasks.
struct TaskMoves {
    private struct Moves {
        var deltas = [Int](repeating: 0, count: TaskState.allCases.count)
        var entered: [Int] = []
    }

    private var sessions: [String: Moves] = [:]

    /// Whether a task became terminal: the write announces completions.
    private(set) var completed = false
    /// The tasks cancelled, by the state they were in.
    private(set) var cancelled = CancelCounts()

    /// Records that the task `index` of `session` moved from `old` (`nil`: it was created) to `new`.
    mutating func move(_ session: String, _ index: Int, from old: TaskState?, to new: TaskState) {
        guard old != new else { return }
        if let old { sessions[session, default: Moves()].deltas[Self.column(old)] -= 1 }
        sessions[session, default: Moves()].deltas[Self.column(new)] += 1
        if new.isTerminal && !(old?.isTerminal ?? false) {
            sessions[session, default: Moves()].entered.append(index)
            completed = true
        }
        if new == .cancelled {
            if old == .pending { cancelled.pending += 1 }
            if old == .processing { cancelled.processing += 1 }
        }
    }

    /// Records that `count` tasks of `session` moved between two live states (`old` `nil`: created).
    mutating func move(_ session: String, count: Int, from old: TaskState?, to new: TaskState) {
        precondition(!new.isTerminal, "tasks that become terminal are numbered: record them one by one")
        guard count > 0, old != new else { return }
        if let old { sessions[session, default: Moves()].deltas[Self.column(old)] -= count }
        sessions[session, default: Moves()].deltas[Self.column(new)] += count
    }

    /// Adds the moves to the counters of their sessions and gives the tasks that became terminal the
    /// next numbers of their session's completion order, in index order within this write.
    func save(_ db: Database) throws {
        guard !sessions.isEmpty else { return }
        let count = try db.cachedStatement(sql: Self.countSQL)
        let number = try db.cachedStatement(
            sql: """
                WITH j(i, n) AS MATERIALIZED (SELECT value, key + 1 FROM json_each(?1))
                UPDATE task SET completion_seq = ?2 + j.n FROM j WHERE task.session = ?3 AND task.idx = j.i
                """)
        for (session, moves) in sessions {
            var arguments: StatementArguments = [session]
            for delta in moves.deltas { arguments += [delta] }
            // The session's terminal count after this write is also its last completion number.
            let last = try Int.fetchOne(count, arguments: arguments) ?? 0
            guard !moves.entered.isEmpty else { continue }
            let first = last - moves.entered.count
            try number.execute(arguments: [SQLiteStateStore.jsonArray(moves.entered.sorted()), first, session])
        }
    }

    private static let states = TaskState.allCases.map(\.rawValue)

    private static func column(_ state: TaskState) -> Int { TaskState.allCases.firstIndex(of: state)! }

    private static let countSQL = """
        INSERT INTO session_counts (session, \(states.joined(separator: ", ")))
        VALUES (?\(String(repeating: ", ?", count: states.count)))
        ON CONFLICT (session) DO UPDATE SET \(states.map { "\($0) = \($0) + excluded.\($0)" }.joined(separator: ", "))
        RETURNING \(terminalSum)
        """

    /// The sum of the terminal counters of `session_counts`: the session's last completion number.
    static let terminalSum = TaskState.terminal.map(\.rawValue).joined(separator: " + ")
}

extension SQLiteStateStore {
    /// The columns of `session_counts` read into ``StateCounts`` (states without tasks left out).
    static let countColumns = TaskState.allCases.map(\.rawValue).joined(separator: ", ")

    static func decodeCounts(_ row: Row?) -> StateCounts {
        var counts = StateCounts()
        guard let row else { return counts }
        for (column, state) in TaskState.allCases.enumerated() {
            let count: Int = row[column]
            if count != 0 { counts[state] = count }
        }
        return counts
    }
}
