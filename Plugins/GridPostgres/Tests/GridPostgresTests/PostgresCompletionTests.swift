import Foundation
import GridKernel
import Testing

@testable import GridPostgres

/// What the conformance suite does not reach: terminal records created as such (the reaper's, for
/// tasks a client never wrote) are numbered by the second statement of `createTasks`'s transaction,
/// only those the insert really created.
@Suite(.enabled(if: PostgresTestServer.enabled, PostgresTestServer.skipReason))
struct PostgresCompletionTests {
    @Test func terminalRecordsCreatedAreNumberedOnce() async throws {
        let schema = "created_" + UUID().uuidString.prefix(8).lowercased()
        let store = PostgresStateStore(database: try await PostgresDatabase.open(pool: PostgresTestServer.pool.get(), schema: schema))
        let session = SessionID.random()
        let now = Date(timeIntervalSince1970: 1_700_000_000)
        try await store.createSession(SessionRecord(id: session, options: SessionOptions(), createdAt: now))
        let ids = (0..<5).map { TaskID(session: session, index: $0) }
        try await store.createTasks(ids.prefix(2).map { TaskRecord(id: $0, maxRetries: 0, priority: 0, submittedAt: now) })
        let owner = AgentID("agent")
        let claimed = try await store.claim([ids[0]], owner: owner, token: .random(), leaseExpiry: now + 60, now: now)
        _ = try await store.finish([TaskCompletion(id: ids[0], attempt: claimed[0].attempt, output: nil)], owner: owner, at: now)

        // Index 1 exists (pending): the insert leaves it alone; 2, 3 and 4 are new, two of them terminal.
        let repaired = [
            TaskRecord(id: ids[1], state: .failed, maxRetries: 0, priority: 0, submittedAt: now, completedAt: now, lastError: "never written"),
            TaskRecord(id: ids[3], state: .failed, maxRetries: 0, priority: 0, submittedAt: now, completedAt: now, lastError: "never written"),
            TaskRecord(id: ids[4], state: .cancelled, maxRetries: 0, priority: 0, submittedAt: now, completedAt: now),
            TaskRecord(id: ids[2], maxRetries: 0, priority: 0, submittedAt: now),
        ]
        try await store.createTasks(repaired)
        try await store.createTasks(repaired)  // sent again: nothing new

        let order = try await store.completions(session, after: 0, limit: 10)
        #expect(order.map(\.id.index) == [0, 3, 4])
        #expect(order.map(\.completionSequence) == [1, 2, 3])
        #expect(try await store.task(ids[1]).state == .pending, "an existing task is not replaced")
        #expect(try await store.task(ids[1]).completionSequence == nil)
        #expect(try await store.counts(session) == StateCounts([.pending: 2, .finished: 1, .failed: 1, .cancelled: 1]))
        #expect(try await store.waitForCompletions(session, after: 2, timeout: .zero))
        #expect(!(try await store.waitForCompletions(session, after: 3, timeout: .zero)))
    }
}
