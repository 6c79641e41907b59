import Foundation
import GridKernel
import PostgresNIO

// Submissions: one row per (session, key) in the `submission` table (see `PostgresSchema.swift`).
extension PostgresStateStore {
    /// Begins a submission in one statement: reserves `submission.count` indices in its session and
    /// stores the submission with ``GridKernel/SubmissionRecord/first`` set, or returns the stored
    /// submission with the same key unchanged, reserving nothing.
    ///
    /// The statement locks the session row (`SELECT … FOR UPDATE`) before it inserts the submission
    /// (`ON CONFLICT DO NOTHING`) and bumps `task_count`, and it bumps only when the insert took place.
    /// Every beginning in a session therefore waits for the one before it to commit: two beginnings
    /// with one key never both reserve, and concurrent ranges follow one another without gap or
    /// overlap. The one that waited and found the key taken sees nothing in its statement's snapshot,
    /// and reads the winner's record with a second statement.
    ///
    /// - Returns: the stored submission.
    /// - Throws: ``GridKernel/GridError/Code/notFound`` for an unknown session;
    ///   ``GridKernel/GridError/Code/conflict`` if the session was cancelled and has no submission with
    ///   this key; ``GridKernel/GridError/Code/invalidArgument`` for a negative count;
    ///   ``GridKernel/GridError/Code/unavailable``.
    public func beginSubmission(_ submission: SubmissionRecord) async throws -> SubmissionRecord {
        guard submission.count >= 0 else {
            throw GridError.invalidArgument("count is \(submission.count); it must not be negative", backend: backend)
        }
        let session = submission.session.rawValue
        let key = submission.key.rawValue
        // A statement that stored nothing and saw nothing either lost a race with the same key (the
        // winner's row is visible to the next statement) or met an unknown or cancelled session.
        for _ in 0..<3 {
            let stored = try await database.collect(
                "beginSubmission",
                """
                WITH existing AS (
                    SELECT \(unescaped: Self.submissionColumns) FROM \(unescaped: submissionTable)
                    WHERE session = \(session) AND key = \(key)
                ),
                locked AS (
                    SELECT task_count FROM \(unescaped: sessionTable)
                    WHERE id = \(session) AND NOT cancelled AND NOT EXISTS (SELECT 1 FROM existing)
                    FOR UPDATE
                ),
                inserted AS (
                    INSERT INTO \(unescaped: submissionTable) (\(unescaped: Self.submissionColumns))
                    SELECT \(session), \(key), task_count, \(submission.count), \(submission.sent), \(submission.state.rawValue),
                           \(submission.version), \(submission.createdAt.timeIntervalSince1970), \(submission.updatedAt.timeIntervalSince1970)
                    FROM locked
                    ON CONFLICT (session, key) DO NOTHING
                    RETURNING \(unescaped: Self.submissionColumns)
                ),
                bumped AS (
                    UPDATE \(unescaped: sessionTable) AS s SET task_count = s.task_count + i.count
                    FROM inserted AS i WHERE s.id = i.session
                )
                SELECT \(unescaped: Self.submissionColumns) FROM existing
                UNION ALL
                SELECT \(unescaped: Self.submissionColumns) FROM inserted
                """,
                Self.decodeSubmission)
            if let stored = stored.first { return stored }
            let record = try await self.session(submission.session)
            if let stored = try await storedSubmission(submission.session, submission.key) { return stored }
            if record.cancelled {
                throw GridError(
                    .conflict, "session \(submission.session) was cancelled; submit to a new session", backend: backend)
            }
        }
        throw GridError.unavailable(
            "beginSubmission of \(submission.key) in session \(submission.session) neither stored nor found it three times",
            backend: backend)
    }

    /// Replaces a submission's `sent`, `state`, `version` and `updatedAt` if its stored version is
    /// `expectedVersion` (one conditional `UPDATE`).
    ///
    /// - Returns: whether it was replaced.
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func updateSubmission(_ submission: SubmissionRecord, expectedVersion: Int) async throws -> Bool {
        let updated = try await database.collect(
            "updateSubmission",
            """
            UPDATE \(unescaped: submissionTable)
            SET sent = \(submission.sent), state = \(submission.state.rawValue), version = \(submission.version),
                updated_at = \(submission.updatedAt.timeIntervalSince1970)
            WHERE session = \(submission.session.rawValue) AND key = \(submission.key.rawValue) AND version = \(expectedVersion)
            RETURNING 1
            """
        ) { _ in true }
        return !updated.isEmpty
    }

    /// Finds up to `limit` open or repairing submissions last updated before `date`, oldest first,
    /// through the partial index `submission_stalled` (complete and repaired ones are not in it).
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func stalledSubmissions(before date: Date, limit: Int) async throws -> [SubmissionRecord] {
        guard limit > 0 else { return [] }
        return try await database.collect(
            "stalledSubmissions",
            """
            SELECT \(unescaped: Self.submissionColumns) FROM \(unescaped: submissionTable)
            WHERE state IN ('open', 'repairing') AND updated_at < \(date.timeIntervalSince1970)
            ORDER BY updated_at, session, key LIMIT \(limit)
            """,
            Self.decodeSubmission)
    }

    /// Reads one submission, or `nil`.
    private func storedSubmission(_ session: SessionID, _ key: SubmissionKey) async throws -> SubmissionRecord? {
        try await database.collect(
            "beginSubmission",
            """
            SELECT \(unescaped: Self.submissionColumns) FROM \(unescaped: submissionTable)
            WHERE session = \(session.rawValue) AND key = \(key.rawValue)
            """,
            Self.decodeSubmission
        ).first
    }

    static let submissionColumns = "session, key, first, count, sent, state, version, created_at, updated_at"

    private static func decodeSubmission(_ row: PostgresRow) throws -> SubmissionRecord {
        let (session, key, first, count, sent, state, version, created, updated) =
            try row.decode((String, String, Int, Int, Int, String, Int, Double, Double).self)
        guard let state = SubmissionState(rawValue: state) else {
            throw GridError(
                .internalError, "submission \(key) of session \(session) has the unknown state '\(state)'",
                backend: PostgresDatabase.backendName)
        }
        return SubmissionRecord(
            session: try SessionID(session), key: try SubmissionKey(key), first: first, count: count, sent: sent, state: state,
            version: version, createdAt: Date(timeIntervalSince1970: created), updatedAt: Date(timeIntervalSince1970: updated))
    }
}
