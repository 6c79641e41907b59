import Foundation
import GridKernel
import Testing

@testable import GridSQLite

/// What the SQLite store does beyond the conformance suite: storage details.
@Suite struct SQLiteStateStoreTests {
    let now = Date(timeIntervalSince1970: 1_700_000_000)

    @Test func outputsKeepEmptyAndNilApart() async throws {
        try await withTemporaryDirectory { directory in
            let store = SQLiteStateStore(database: try await openDatabase(directory.file("grid.db")))
            let session = SessionID.random()
            let records = pendingTasks(session, count: 3)
            try await store.createTasks(records)
            let owner = AgentID("agent")
            _ = try await store.claim(records.map(\.id), owner: owner, token: .random(), leaseExpiry: now + 30, now: now)
            let outputs: [[UInt8]?] = [[], nil, [1, 2, 3]]
            let finished = try await store.finish(
                zip(records, outputs).map { TaskCompletion(id: $0.id, attempt: 1, output: $1) }, owner: owner, at: now + 1)
            #expect(finished == Set(records.map(\.id)))
            for (record, output) in zip(records, outputs) {
                #expect(try await store.task(record.id).output == output)
            }
        }
    }

    @Test func recordsRoundTripEveryField() async throws {
        try await withTemporaryDirectory { directory in
            let store = SQLiteStateStore(database: try await openDatabase(directory.file("grid.db")))
            let record = TaskRecord(
                id: TaskID(session: .random(), index: 7), state: .processing, owner: AgentID("a b"),
                leaseExpiry: now + 12.5, retries: 2, maxRetries: 9, priority: -4, timeout: .milliseconds(1_500),
                submittedAt: now, startedAt: now + 1, completedAt: nil, lastError: "boom", output: nil)
            try await store.createTasks([record])
            try await store.createTasks([TaskRecord(id: record.id, submittedAt: now)])  // ignored: exists
            #expect(try await store.task(record.id) == record)
        }
    }

    @Test func retryRuleMatchesTheKernel() async throws {
        try await withTemporaryDirectory { directory in
            let store = SQLiteStateStore(database: try await openDatabase(directory.file("grid.db")))
            let owner = AgentID("agent")
            let session = SessionID.random()
            var records: [TaskRecord] = []
            for (index, (retries, maxRetries)) in [(0, 2), (2, 2), (0, 0), (1, 5)].enumerated() {
                records.append(TaskRecord(id: TaskID(session: session, index: index), retries: retries, maxRetries: maxRetries, submittedAt: now))
            }
            try await store.createTasks(records)
            let claimedToken = ClaimToken.random()
            _ = try await store.claim(records.map(\.id), owner: owner, token: claimedToken, leaseExpiry: now + 30, now: now)
            let claimed = try await store.claim([], owner: owner, token: .random(), leaseExpiry: now, now: now)
            #expect(claimed.isEmpty)
            let retryable = [true, true, true, false]
            let states = try await store.fail(
                zip(records, retryable).map { TaskFailure(id: $0.id, attempt: 1, message: "err \($0.id.index)", retryable: $1) }, owner: owner, at: now + 2)
            for (record, retryable) in zip(records, retryable) {
                var running = record
                running.state = .processing
                running.owner = owner
                running.leaseExpiry = now + 30
                running.startedAt = now
                running.attempt = 1
                running.claimToken = claimedToken
                let expected = running.afterFailure(message: "err \(record.id.index)", retryable: retryable, at: now + 2)
                #expect(states[record.id] == expected.state)
                // The store numbers terminal tasks (the kernel's rule functions leave the number alone).
                var stored = try await store.task(record.id)
                #expect((stored.completionSequence != nil) == expected.state.isTerminal)
                stored.completionSequence = nil
                #expect(stored == expected)
            }
        }
    }
}
