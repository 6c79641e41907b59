import Foundation
import GridKernel
import Logging
import PostgresNIO
import Testing

@testable import GridPostgres

/// Waiters woken by NOTIFY: each test opens two pools on one schema, two processes as far as
/// PostgreSQL can tell, with a fallback poll of 30 s, so that only a notification can wake a waiter
/// within the tests' 10 s deadlines. A write is made once the waiter waits (its look found nothing).
@Suite(.enabled(if: PostgresTestServer.enabled, PostgresTestServer.skipReason))
struct PostgresNotificationTests {
    private static let deadline: Duration = .seconds(10)

    /// A grid in a fresh schema, opened by two "processes" (pools of their own).
    private struct TwoProcesses {
        let schema = "notify_" + UUID().uuidString.prefix(8).lowercased()
        let writer: GridPostgres.PostgresDatabase
        let waiter: GridPostgres.PostgresDatabase

        init() async throws {
            let configuration = try PostgresTestServer.configuration()
            let logger = Logger(label: "test.postgres")
            writer = try await PostgresDatabase.open(
                pool: PostgresConnectionPool(configuration, logger: logger), schema: schema, pollInterval: .seconds(30))
            waiter = try await PostgresDatabase.open(
                pool: PostgresConnectionPool(configuration, logger: logger), schema: schema, pollInterval: .seconds(30))
        }

        var notifications: PostgresNotifications { waiter.pool.notifications }

        /// Returns once `count` waiters of `topic` wait for a notification in the waiting process.
        func parked(_ topic: PostgresNotifications.Topic, count: Int = 1) async throws {
            try await eventually("\(count) waiter(s) of \(topic) parked") { notifications.parkedWaiters(topic) == count }
        }

        /// A session with `count` tasks claimed by `owner`, written by the writer.
        func claimedSession(tasks count: Int, owner: AgentID) async throws -> (SessionID, [TaskRecord]) {
            let store = PostgresStateStore(database: writer)
            let session = SessionID.random()
            try await store.createSession(SessionRecord(id: session, options: SessionOptions(), createdAt: Date()))
            let ids = (0..<count).map { TaskID(session: session, index: $0) }
            try await store.createTasks(ids.map { TaskRecord(id: $0, maxRetries: 0, priority: 0, submittedAt: Date()) })
            let claimed = try await store.claim(ids, owner: owner, token: .random(), leaseExpiry: Date() + 600, now: Date())
            return (session, claimed)
        }
    }

    @Test func aCompletionInAnotherProcessWakesAWaiter() async throws {
        let grid = try await TwoProcesses()
        let owner = AgentID("notify-agent")
        let (session, claimed) = try await grid.claimedSession(tasks: 2, owner: owner)
        let reader = PostgresStateStore(database: grid.waiter)
        let waiter = Task { try await reader.waitForCompletions(session, after: 0, timeout: .seconds(60)) }
        try await grid.parked(.init(channel: grid.waiter.channel("done"), key: session.rawValue))

        let writer = PostgresStateStore(database: grid.writer)
        let finished = try await writer.finish(
            [TaskCompletion(id: claimed[0].id, attempt: claimed[0].attempt, output: nil)], owner: owner, at: Date())
        let committed = ContinuousClock.now
        #expect(finished == [claimed[0].id])
        let woken = try await value(of: waiter, within: Self.deadline)
        #expect(woken == true, "the waiter was woken by the other process's finish")
        print("completion wake-up after the commit returned: \(ContinuousClock.now - committed)")

        // A completion of another session does not satisfy it; its own next one does.
        let (other, otherClaimed) = try await grid.claimedSession(tasks: 1, owner: owner)
        let second = Task { try await reader.waitForCompletions(session, after: 1, timeout: .seconds(60)) }
        try await grid.parked(.init(channel: grid.waiter.channel("done"), key: session.rawValue))
        _ = try await writer.cancel([otherClaimed[0].id], at: Date())
        #expect(try await reader.counts(other)[.cancelled] == 1)
        #expect(grid.notifications.parkedWaiters(.init(channel: grid.waiter.channel("done"), key: session.rawValue)) == 1)
        _ = try await writer.cancel([claimed[1].id], at: Date())
        #expect(try await value(of: second, within: Self.deadline) == true, "woken by the cancel of its session's task")
    }

    @Test func anEnqueueInAnotherProcessWakesAWaitingLease() async throws {
        let grid = try await TwoProcesses()
        let consumer = PostgresTaskQueue(database: grid.waiter)
        let waiter = Task { try await consumer.lease(max: 5, duration: .seconds(30), order: .highestFirst, wait: .seconds(60)) }
        try await grid.parked(.init(channel: grid.waiter.channel("ready"), key: ""))

        let id = TaskID(session: SessionID.random(), index: 0)
        try await PostgresTaskQueue(database: grid.writer).enqueue([QueuedTask(id: id, priority: 0, payload: [7])])
        let committed = ContinuousClock.now
        let leases = try await value(of: waiter, within: Self.deadline)
        #expect(leases?.map(\.id) == [id], "the waiting lease got the message the other process enqueued")
        print("lease wake-up after the enqueue returned: \(ContinuousClock.now - committed)")

        // A release (here with no delay) wakes it too.
        let second = Task { try await consumer.lease(max: 5, duration: .seconds(30), order: .highestFirst, wait: .seconds(60)) }
        try await grid.parked(.init(channel: grid.waiter.channel("ready"), key: ""))
        try await PostgresTaskQueue(database: grid.writer).release(leases ?? [], delay: .zero)
        #expect(try await value(of: second, within: Self.deadline)?.map(\.id) == [id], "woken by the release")
    }

    @Test func aCancelledWaitReturnsAtOnce() async throws {
        let grid = try await TwoProcesses()
        let consumer = PostgresTaskQueue(database: grid.waiter)
        let lease = Task { try await consumer.lease(max: 1, duration: .seconds(30), order: .highestFirst, wait: .seconds(60)) }
        let session = SessionID.random()
        let completions = Task {
            try await PostgresStateStore(database: grid.waiter).waitForCompletions(session, after: 0, timeout: .seconds(60))
        }
        try await grid.parked(.init(channel: grid.waiter.channel("ready"), key: ""))
        try await grid.parked(.init(channel: grid.waiter.channel("done"), key: session.rawValue))
        let cancelled = ContinuousClock.now
        lease.cancel()
        completions.cancel()
        await #expect(throws: CancellationError.self) { try await lease.value }
        await #expect(throws: CancellationError.self) { try await completions.value }
        #expect(ContinuousClock.now - cancelled < .seconds(1), "both returned at once, not at their 60 s timeout")
    }

    @Test func theListenerReconnectsAfterItsConnectionIsKilled() async throws {
        let grid = try await TwoProcesses()
        let owner = AgentID("notify-agent")
        let (session, claimed) = try await grid.claimedSession(tasks: 1, owner: owner)
        let reader = PostgresStateStore(database: grid.waiter)
        let topic = PostgresNotifications.Topic(channel: grid.waiter.channel("done"), key: session.rawValue)
        let waiter = Task { try await reader.waitForCompletions(session, after: 0, timeout: .seconds(60)) }
        try await grid.parked(topic)
        #expect(grid.notifications.connections == 1)

        // The server drops the listening connection (a restart, a proxy's timeout, …).
        let killed = try await PostgresTestServer.pool.get().client.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = \("LISTEN \"\(topic.channel)\";")",
            logger: Logger(label: "test.postgres")
        ).collect()
        #expect(killed.count == 1, "the listening connection was found and terminated")
        try await eventually("the listener connected again and listens") {
            grid.notifications.connections == 2 && grid.notifications.isListening(topic.channel)
        }
        try await grid.parked(topic)

        _ = try await PostgresStateStore(database: grid.writer).finish(
            [TaskCompletion(id: claimed[0].id, attempt: claimed[0].attempt, output: nil)], owner: owner, at: Date())
        #expect(try await value(of: waiter, within: Self.deadline) == true, "woken through the new connection")
    }
}

/// Waits until `condition` holds, looking every millisecond, for at most 10 s.
func eventually(_ what: String, within limit: Duration = .seconds(10), _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now.advanced(by: limit)
    while !condition() {
        guard ContinuousClock.now < deadline else { throw GridError.unavailable("not within \(limit): \(what)") }
        try await Task.sleep(for: .milliseconds(1))
    }
}

/// The task's value, or `nil` (and the task cancelled) if it has none within `limit`.
func value<Value: Sendable>(of task: Task<Value, any Error>, within limit: Duration) async throws -> Value? {
    try await withThrowingTaskGroup(of: Value?.self) { group in
        group.addTask { try await withTaskCancellationHandler { try await task.value } onCancel: { task.cancel() } }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        return try await group.next() ?? nil
    }
}
