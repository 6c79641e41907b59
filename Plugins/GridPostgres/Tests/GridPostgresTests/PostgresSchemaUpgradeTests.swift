import Foundation
import GridKernel
import Logging
import PostgresNIO
import Testing

@testable import GridPostgres

/// A grid created by an earlier version of the plugin upgrades itself when a newer process opens it
/// (the migration statements of `PostgresSchema.ddl`).
@Suite(.enabled(if: PostgresTestServer.enabled, PostgresTestServer.skipReason))
struct PostgresSchemaUpgradeTests {
    /// The session and task tables as the first release created them: no attempt, no claim token, no
    /// submission table, no counters, no completion order. The old session has a pending task, a
    /// running one, and three terminal ones that completed in an order unlike their indices (two at
    /// the same moment); another session has one finished task.
    private static func firstRelease(_ s: String) -> [String] {
        [
            "CREATE SCHEMA \(s)",
            """
            CREATE TABLE \(s).session (
                id text COLLATE "C" PRIMARY KEY, priority bigint NOT NULL, max_retries bigint NOT NULL, task_timeout float8,
                labels text NOT NULL, created_at float8 NOT NULL, task_count bigint NOT NULL DEFAULT 0,
                cancelled boolean NOT NULL DEFAULT false)
            """,
            """
            CREATE TABLE \(s).task (
                session text COLLATE "C" NOT NULL, idx bigint NOT NULL, state text NOT NULL, owner text, lease_expiry float8,
                retries bigint NOT NULL, max_retries bigint NOT NULL, priority bigint NOT NULL, timeout float8,
                submitted_at float8 NOT NULL, started_at float8, completed_at float8, last_error text, output bytea,
                PRIMARY KEY (session, idx))
            """,
            "CREATE INDEX task_by_state ON \(s).task (session, state, idx)",
            "CREATE INDEX task_lease ON \(s).task (lease_expiry) WHERE state = 'processing'",
            "INSERT INTO \(s).session VALUES ('old-session', 0, 3, NULL, '{}', 1700000000, 5, false)",
            "INSERT INTO \(s).session VALUES ('other-session', 0, 3, NULL, '{}', 1700000000, 1, false)",
            """
            INSERT INTO \(s).task VALUES
                ('old-session', 0, 'pending', NULL, NULL, 1, 3, 0, NULL, 1700000000, 1700000010, NULL, 'lease expired', NULL),
                ('old-session', 1, 'finished', NULL, NULL, 0, 3, 0, NULL, 1700000000, 1700000010, 1700000020, NULL, '\\x2a'),
                ('old-session', 2, 'cancelled', NULL, NULL, 0, 3, 0, NULL, 1700000000, NULL, 1700000015, NULL, NULL),
                ('old-session', 3, 'failed', NULL, NULL, 3, 3, 0, NULL, 1700000000, 1700000012, 1700000015, 'boom', NULL),
                ('old-session', 4, 'processing', 'old-agent', 1700000100, 0, 3, 0, NULL, 1700000000, 1700000011, NULL, NULL, NULL),
                ('other-session', 0, 'finished', NULL, NULL, 0, 3, 0, NULL, 1700000000, 1700000010, 1700000011, NULL, NULL)
            """,
        ]
    }

    @Test func aGridOfTheFirstReleaseUpgradesWhenOpened() async throws {
        let schema = "upgrade_" + UUID().uuidString.prefix(8).lowercased()
        let pool = try PostgresTestServer.pool.get()
        for statement in Self.firstRelease("\"\(schema)\"") {
            _ = try await pool.client.query(PostgresQuery(unsafeSQL: statement), logger: Logger(label: "test.postgres")).collect()
        }
        let database = try await PostgresDatabase.open(pool: pool, schema: schema)
        let store = PostgresStateStore(database: database)
        let session = try SessionID("old-session")
        let ids = [TaskID(session: session, index: 0), TaskID(session: session, index: 1)]

        let old = try await store.tasks(ids).sorted { $0.id < $1.id }
        #expect(old.map(\.attempt) == [0, 0], "rows written before attempts were numbered read as never claimed")
        #expect(old.map(\.claimToken) == [nil, nil])
        #expect(old.map(\.state) == [.pending, .finished])

        // Counters filled from the tasks; terminal tasks numbered by completion time, then index.
        #expect(try await store.counts(session) == StateCounts([.pending: 1, .processing: 1, .finished: 1, .cancelled: 1, .failed: 1]))
        let order = try await store.completions(session, after: 0, limit: 10)
        #expect(order.map(\.id.index) == [2, 3, 1], "completed at 15 (index 2, then 3), then at 20")
        #expect(order.map(\.completionSequence) == [1, 2, 3])
        #expect(try await store.task(TaskID(session: session, index: 4)).completionSequence == nil)
        let other = try SessionID("other-session")
        #expect(try await store.counts(other) == StateCounts([.finished: 1]))
        #expect(try await store.completions(other, after: 0, limit: 10).map(\.completionSequence) == [1])
        #expect(old[0].lastError == "lease expired" && old[0].retries == 1)
        #expect(old[1].output == [42])

        let start = Date(timeIntervalSince1970: 1_700_000_100)
        let owner = AgentID("new-agent")
        let token = ClaimToken.random()
        let won = try await store.claim(ids, owner: owner, token: token, leaseExpiry: start + 60, now: start)
        #expect(won.map(\.id) == [ids[0]] && won.map(\.attempt) == [1] && won.map(\.claimToken) == [token])
        #expect(try await store.finish([TaskCompletion(id: ids[0], attempt: 1, output: [7])], owner: owner, at: start + 1) == [ids[0]])
        let finished = try await store.task(ids[0])
        #expect(finished.state == .finished && finished.lastError == nil && finished.output == [7])
        #expect(finished.completionSequence == 4, "the numbering continues after the upgraded tasks")
        #expect(try await store.waitForCompletions(session, after: 3, timeout: .zero))
        #expect(try await store.counts(session) == StateCounts([.processing: 1, .finished: 2, .cancelled: 1, .failed: 1]))

        // Submissions continue after the indices the old grid reserved.
        let key = try SubmissionKey("after-upgrade")
        let submission = try await store.beginSubmission(.begin(session: session, key: key, count: 3, at: start))
        #expect(submission.range == 5..<8)
        #expect(try await store.session(session).taskCount == 8)
        #expect(try await store.stalledSubmissions(before: start + 1, limit: 10).map(\.key) == [key])

        // Opening it again (another process starting) changes nothing: counters and numbers are not filled twice.
        let again = PostgresStateStore(database: try await PostgresDatabase.open(pool: pool, schema: schema))
        #expect(try await again.task(ids[0]) == finished)
        #expect(try await again.counts(session) == StateCounts([.processing: 1, .finished: 2, .cancelled: 1, .failed: 1]))
        #expect(try await again.completions(session, after: 0, limit: 10).map(\.id.index) == [2, 3, 1, 0])
        #expect(try await again.beginSubmission(.begin(session: session, key: key, count: 3, at: start + 2)) == submission)
    }
}
