import Foundation
import GRDB
import GridKernel
import Testing

@testable import GridSQLite

/// The file as several processes share it: each `SQLiteDatabase` here has its own connections and
/// locks, as a separate process would.
@Suite struct SQLiteDatabaseTests {
    @Test func twoDatabasesLeasingConcurrentlyNeverShareAMessage() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("grid.db")
            let clock = ManualClock()
            let first = try await openDatabase(path, clock: clock)
            let second = try await openDatabase(path, clock: clock)
            let session = SessionID.random()
            let count = 2_000
            try await SQLiteTaskQueue(database: first).enqueue(
                (0..<count).map { QueuedTask(id: TaskID(session: session, index: $0), priority: $0 % 3) })

            let consumers = [first, second, first, second, first, second]
            let delivered = try await withThrowingTaskGroup(of: [TaskID].self) { group in
                for database in consumers {
                    group.addTask {
                        let queue = SQLiteTaskQueue(database: database)
                        var mine: [TaskID] = []
                        while true {
                            let leases = try await queue.lease(max: 37, duration: .seconds(60), order: .highestFirst, wait: .zero)
                            if leases.isEmpty { return mine }
                            mine += leases.map(\.id)
                        }
                    }
                }
                return try await group.reduce(into: [TaskID]()) { $0 += $1 }
            }
            #expect(delivered.count == count)
            #expect(Set(delivered).count == count)
        }
    }

    @Test func claimsAcrossTwoDatabasesHaveExactlyOneWinner() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("grid.db")
            let databases = [try await openDatabase(path), try await openDatabase(path)]
            let session = SessionID.random()
            let records = pendingTasks(session, count: 600)
            try await SQLiteStateStore(database: databases[0]).createTasks(records)
            let ids = records.map(\.id)
            let now = Date(timeIntervalSince1970: 1_700_000_000)

            let wins = try await withThrowingTaskGroup(of: (String, [TaskID]).self) { group in
                for claimer in 0..<6 {
                    group.addTask {
                        let store = SQLiteStateStore(database: databases[claimer % 2])
                        let owner = AgentID("agent-\(claimer)")
                        var won: [TaskID] = []
                        // Claim in overlapping batches, in a different order per claimer.
                        let order = claimer.isMultiple(of: 2) ? ids : ids.reversed()
                        for start in stride(from: 0, to: order.count, by: 100) {
                            let batch = Array(order[start..<min(start + 100, order.count)])
                            won += try await store.claim(batch, owner: owner, token: .random(), leaseExpiry: now + 60, now: now).map(\.id)
                        }
                        return (owner.rawValue, won)
                    }
                }
                return try await group.reduce(into: [(String, [TaskID])]()) { $0.append($1) }
            }
            let all = wins.flatMap(\.1)
            #expect(all.count == ids.count)
            #expect(Set(all) == Set(ids))
            // The state agrees with the winners.
            let store = SQLiteStateStore(database: databases[1])
            for (owner, won) in wins {
                for id in won.prefix(5) {
                    let record = try await store.task(id)
                    #expect(record.state == .processing)
                    #expect(record.owner == AgentID(owner))
                }
            }
        }
    }

    @Test func staleHandleFromAnotherDatabaseNeverActsOnARedelivery() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("grid.db")
            let clock = ManualClock()
            let a = SQLiteTaskQueue(database: try await openDatabase(path, clock: clock))
            let b = SQLiteTaskQueue(database: try await openDatabase(path, clock: clock))
            let id = TaskID(session: .random(), index: 0)
            try await a.enqueue([QueuedTask(id: id, priority: 0)])
            let stale = try await a.lease(max: 1, duration: .seconds(10), order: .highestFirst, wait: .zero)
            clock.advance(by: .seconds(11))
            let current = try await b.lease(max: 1, duration: .seconds(10), order: .highestFirst, wait: .zero)
            #expect(current.map(\.deliveryCount) == [2])

            #expect(try await a.extend(stale, duration: .seconds(100)).isEmpty)
            try await a.release(stale, delay: .zero)
            try await a.acknowledge(stale)
            #expect(try await b.depth()[0] == QueueDepth(waiting: 0, inFlight: 1))
            #expect(try await b.extend(current, duration: .seconds(100)) == current)
            try await b.acknowledge(current)
            #expect(try await a.depth().isEmpty)
        }
    }

    @Test func messagesAreDeadLetteredAfterMaxDeliveries() async throws {
        try await withTemporaryDirectory { directory in
            let clock = ManualClock()
            let queue = SQLiteTaskQueue(database: try await openDatabase(directory.file("grid.db"), clock: clock), maxDeliveries: 2)
            let session = SessionID.random()
            let expired = TaskID(session: session, index: 0)
            let released = TaskID(session: session, index: 1)
            try await queue.enqueue([QueuedTask(id: expired, priority: 0), QueuedTask(id: released, priority: 0)])
            for delivery in 1...2 {
                let leases = try await queue.lease(max: 10, duration: .seconds(10), order: .highestFirst, wait: .zero)
                #expect(leases.map(\.id) == [expired, released])
                #expect(leases.allSatisfy { $0.deliveryCount == delivery })
                #expect(try await queue.drainDeadLetters(max: 10).isEmpty)
                try await queue.release(leases.filter { $0.id == released }, delay: .zero)
                clock.advance(by: .seconds(11))
            }
            // Both were delivered twice: becoming visible a third time sends them to the dead letters.
            #expect(try await queue.lease(max: 10, duration: .seconds(10), order: .highestFirst, wait: .zero).isEmpty)
            let letters = try await queue.drainDeadLetters(max: 1) + queue.drainDeadLetters(max: 10)
            #expect(Set(letters.map(\.id)) == [expired, released])
            #expect(letters.allSatisfy { $0.reason.contains("delivered 2 times") })
            #expect(try await queue.drainDeadLetters(max: 10).isEmpty)
            #expect(try await queue.depth().isEmpty)
        }
    }

    @Test func reopeningAnExistingFileKeepsSchemaAndData() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("grid.db")
            let session = SessionRecord(id: .random(), options: SessionOptions(labels: ["team": "risk"]), createdAt: Date(timeIntervalSince1970: 1_700_000_000))
            do {
                let database = try await openDatabase(path)
                try await SQLiteStateStore(database: database).createSession(session)
                try await database.close()
            }
            let reopened = try await openDatabase(path)
            #expect(try await SQLiteStateStore(database: reopened).session(session.id) == session)
            let migrations = try await reopened.read("test") { db in
                try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations")
            }
            #expect(migrations == ["v1", "v2", "v3"])
        }
    }

    @Test func manyInstancesCreatingOneNewFileAtOnceAllSucceed() async throws {
        try await withTemporaryDirectory { directory in
            // GRDB's migrator checks what is applied before its transaction: new files opened by
            // several instances at once race there, and every instance must still open.
            for round in 0..<10 {
                let path = directory.file("grid-\(round).db")
                let databases = try await withThrowingTaskGroup(of: SQLiteDatabase.self) { group in
                    for _ in 0..<8 { group.addTask { try await openDatabase(path) } }
                    return try await group.reduce(into: [SQLiteDatabase]()) { $0.append($1) }
                }
                let session = SessionID.random()
                try await SQLiteStateStore(database: databases[0]).createTasks(pendingTasks(session, count: 3))
                #expect(try await SQLiteStateStore(database: databases[7]).counts(session)[.pending] == 3)
            }
        }
    }

    @Test func fileIsSetUpForSeveralProcesses() async throws {
        try await withTemporaryDirectory { directory in
            let database = try await openDatabase(directory.file("grid.db"))
            let settings = try await database.write("test") { db in
                (
                    try String.fetchOne(db, sql: "PRAGMA journal_mode"),
                    try Int.fetchOne(db, sql: "PRAGMA synchronous"),
                    try Int.fetchOne(db, sql: "PRAGMA busy_timeout")
                )
            }
            #expect(settings.0 == "wal")
            #expect(settings.1 == 1)  // NORMAL
            #expect(settings.2 == 10_000)
        }
    }

    @Test func hotQueriesUseTheirIndexes() async throws {
        try await withTemporaryDirectory { directory in
            let database = try await openDatabase(directory.file("grid.db"))
            func plan(_ sql: String) async throws -> String {
                try await database.read("test") { db in
                    try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + sql).map { row -> String in row["detail"] }.joined(separator: "; ")
                }
            }
            let expired = try await plan(SQLiteStateStore.expiredLeasesSQL.replacingOccurrences(of: "?", with: "1"))
            #expect(expired.contains("task_lease"), "\(expired)")
            let page = try await plan(
                "SELECT idx FROM task WHERE session = 'a' AND state = 'pending' AND idx > 5 ORDER BY idx LIMIT 10")
            #expect(page.contains("task_by_state") && !page.contains("TEMP B-TREE"), "\(page)")
            let ready = try await plan("SELECT id FROM queue WHERE status = 0 AND priority = 3 ORDER BY id LIMIT 10")
            #expect(ready.contains("queue_ready") && !ready.contains("TEMP B-TREE"), "\(ready)")
            let due = try await plan("UPDATE queue SET status = 0 WHERE status <> 0 AND visible_at <= 5")
            #expect(due.contains("queue_timer"), "\(due)")
            let completions = try await plan(
                SQLiteStateStore.completionsSQL.replacingOccurrences(of: "session = ?", with: "session = 'a'").replacingOccurrences(of: "?", with: "3"))
            #expect(completions.contains("task_completion") && !completions.contains("TEMP B-TREE"), "\(completions)")
        }
    }

    @Test func lockHeldPastTheBusyTimeoutIsUnavailable() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("grid.db")
            let holder = try await openDatabase(path)
            let waiter = try await openDatabase(path, busyTimeout: .milliseconds(100))
            let started = DispatchSemaphore(value: 0)
            let release = DispatchSemaphore(value: 0)
            // The holder's write runs on GRDB's writer queue, so blocking it there is fine.
            async let held: Void = holder.write("hold") { _ in
                started.signal()
                release.wait()
            }
            await withCheckedContinuation { continuation in
                DispatchQueue.global().async {
                    started.wait()
                    continuation.resume()
                }
            }
            let error = try await expectGridError(.unavailable) {
                try await SQLiteTaskQueue(database: waiter).enqueue([QueuedTask(id: TaskID(session: .random(), index: 0), priority: 0)])
            }
            release.signal()
            try await held
            #expect(error.backend == "sqlite")
            #expect(error.message.contains("locked"))
        }
    }

    @Test func missingDirectoryIsUnavailable() async throws {
        let error = try await expectGridError(.unavailable) {
            _ = try await openDatabase("/nonexistent-\(UUID().uuidString)/grid.db")
        }
        #expect(error.backend == "sqlite")
        #expect(error.message.contains("directory exists"))
    }

    @Test func waitingLeaseWakesOnEnqueueInTheSameProcess() async throws {
        try await withTemporaryDirectory { directory in
            let queue = SQLiteTaskQueue(database: try await openDatabase(directory.file("grid.db")), pollInterval: .seconds(60))
            let id = TaskID(session: .random(), index: 0)
            async let leased = queue.lease(max: 10, duration: .seconds(10), order: .highestFirst, wait: .seconds(30))
            try await queue.enqueue([QueuedTask(id: id, priority: 0)])
            let start = ContinuousClock.now
            #expect(try await leased.map(\.id) == [id])
            #expect(ContinuousClock.now - start < .seconds(20))
        }
    }

    @Test func waitingLeaseFindsMessagesOfAnotherProcessByPolling() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("grid.db")
            let consumer = SQLiteTaskQueue(database: try await openDatabase(path), pollInterval: .milliseconds(10))
            let producer = SQLiteTaskQueue(database: try await openDatabase(path))
            let id = TaskID(session: .random(), index: 0)
            async let leased = consumer.lease(max: 10, duration: .seconds(10), order: .highestFirst, wait: .seconds(30))
            try await producer.enqueue([QueuedTask(id: id, priority: 0)])
            #expect(try await leased.map(\.id) == [id])
        }
    }

    /// A file made before counters and completion order (schema v2) is upgraded when opened: the
    /// counters are those of its tasks, its terminal tasks are numbered by completion date then index,
    /// and later transitions go on from there.
    @Test func aFileFromBeforeCountersIsUpgraded() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("v2.db")
            let session = SessionID.random()
            let other = SessionID.random()
            // (index, state, completed_at): terminal tasks completed out of index order, two at the same date.
            let rows: [(Int, String, Double?)] = [
                (0, "finished", 30), (1, "pending", nil), (2, "failed", 10), (3, "processing", nil),
                (4, "cancelled", 30), (5, "finished", 20), (6, "pending", nil),
            ]
            do {
                let pool = try DatabasePool(path: path)
                try SQLiteSchema.migrator.migrate(pool, upTo: "v2")
                try await pool.write { db in
                    for (index, state, completed) in rows {
                        try db.execute(
                            sql: """
                                INSERT INTO task (session, idx, state, owner, lease_expiry, retries, max_retries, priority, submitted_at, completed_at, attempt)
                                VALUES (?, ?, ?, ?, ?, 0, 0, 0, 1700000000, ?, 1)
                                """,
                            arguments: [session.rawValue, index, state, state == "processing" ? "agent" : nil, state == "processing" ? 1_700_000_060.0 : nil, completed])
                    }
                    try db.execute(
                        sql: "INSERT INTO task (session, idx, state, retries, max_retries, priority, submitted_at, completed_at) VALUES (?, 0, 'finished', 0, 0, 0, 1700000000, 5)",
                        arguments: [other.rawValue])
                }
                try pool.close()
            }
            let store = SQLiteStateStore(database: try await openDatabase(path))
            #expect(try await store.counts(session) == StateCounts([.pending: 2, .processing: 1, .finished: 2, .failed: 1, .cancelled: 1]))
            #expect(try await store.counts(other) == StateCounts([.finished: 1]))
            let order = try await store.completions(session, after: 0, limit: 10)
            #expect(order.map(\.id.index) == [2, 5, 0, 4], "by completion date, then index")
            #expect(order.map(\.completionSequence) == [1, 2, 3, 4])
            #expect(try await store.completions(other, after: 0, limit: 10).map(\.completionSequence) == [1])
            #expect(try await store.task(TaskID(session: session, index: 1)).completionSequence == nil)

            // The next transitions count and number from there.
            let now = Date(timeIntervalSince1970: 1_700_000_010)
            let processing = TaskID(session: session, index: 3)
            #expect(try await store.finish([TaskCompletion(id: processing, attempt: 1, output: nil)], owner: AgentID("agent"), at: now).count == 1)
            _ = try await store.cancel([TaskID(session: session, index: 6)], at: now)
            #expect(try await store.completions(session, after: 4, limit: 10).map(\.id.index) == [3, 6])
            #expect(try await store.counts(session) == StateCounts([.pending: 1, .finished: 3, .failed: 1, .cancelled: 2]))
        }
    }

    /// A file made before attempts and submissions (schema v1, with a pending task in it) is upgraded
    /// when opened: the task reads as attempt 0 and is claimed as attempt 1; submissions work.
    @Test func aFileFromBeforeAttemptsIsUpgraded() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("old.db")
            let session = SessionID.random()
            do {
                let pool = try DatabasePool(path: path)
                try SQLiteSchema.migrator.migrate(pool, upTo: "v1")
                try await pool.write { db in
                    try db.execute(
                        sql: "INSERT INTO session (id, priority, max_retries, labels, created_at, task_count) VALUES (?, 0, 5, '{}', 1700000000, 1)",
                        arguments: [session.rawValue])
                    try db.execute(
                        sql: "INSERT INTO task (session, idx, state, retries, max_retries, priority, submitted_at) VALUES (?, 0, 'pending', 0, 5, 0, 1700000000)",
                        arguments: [session.rawValue])
                }
                try pool.close()
            }
            let database = try await openDatabase(path)
            let store = SQLiteStateStore(database: database)
            let id = TaskID(session: session, index: 0)
            #expect(try await store.task(id).attempt == 0)
            let claimed = try await store.claim([id], owner: AgentID("a"), token: .random(), leaseExpiry: Date(timeIntervalSince1970: 1_700_000_060), now: Date(timeIntervalSince1970: 1_700_000_000))
            #expect(claimed.map(\.attempt) == [1])
            let submission = try await store.beginSubmission(.begin(session: session, key: try SubmissionKey("after-upgrade"), count: 2, at: Date()))
            #expect(submission.range == 1..<3, "a submission after the upgrade continues after the old indices")
        }
    }
}
