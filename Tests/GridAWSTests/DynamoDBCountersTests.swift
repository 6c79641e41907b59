import Foundation
import GridKernel
import Testing

@testable import GridAWS

// Counters, completion order and the upgrade of tables of the earlier version, on moto_server.

private let skipMessage = "HTC_TEST_AWS_ENDPOINT is unset: run the tests through scripts/with-moto.sh (or make test)"
private let now = Date(timeIntervalSince1970: 1_700_000_000)

/// Writes an item as is, bypassing the store (as an earlier version, or a crash, left it).
private func put(_ store: DynamoDBStateStore, _ item: DynamoDBItem.Item) async throws {
    _ = try await store.client.json(
        "DynamoDB_20120810", "PutItem", ["TableName": .string(store.configuration.table), "Item": .object(item)], resource: "test",
        repeatability: .safe)
}

/// Whether two counts agree state by state (a state absent counts 0).
private func same(_ a: StateCounts, _ b: StateCounts) -> Bool { TaskState.allCases.allSatisfy { a[$0] == b[$0] } }

/// A table and a session of it.
private func session(_ name: String) async throws -> (DynamoDBStateStore, SessionID) {
    let store = try await awsTests.state("\(name)-\(UUID().uuidString.prefix(8).lowercased())")
    let session = SessionID.random()
    try await store.createSession(SessionRecord(id: session, options: SessionOptions(), createdAt: now))
    return (store, session)
}

/// A session, its task records and its submission as the earlier version wrote them (no sequence
/// item, no counters, no `v`, no `cseq`): counted by a query of its tasks and without completion order
/// until `upgrade()`, which numbers its terminal tasks by completion time, then index, and counts it;
/// then the counters are what `counts` reads (a task item written behind the store's back is not
/// counted), transitions continue the numbering, and upgrading again does nothing.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func dynamoDBUpgradeOfAnEarlierVersionsSessions() async throws {
    let store = try await awsTests.state("upgrade-\(UUID().uuidString.prefix(8).lowercased())")
    let session = SessionID.random()
    try await put(store, DynamoDBItem.item(SessionRecord(id: session, options: SessionOptions(), createdAt: now, taskCount: 6)))
    let ids = (0..<6).map { TaskID(session: session, index: $0) }
    let agent = AgentID("old")
    let records = [
        TaskRecord(id: ids[0], state: .finished, submittedAt: now, startedAt: now, completedAt: now + 30, attempt: 1),
        TaskRecord(id: ids[1], state: .cancelled, submittedAt: now, completedAt: now + 10),
        TaskRecord(id: ids[2], state: .processing, owner: agent, leaseExpiry: now + 600, submittedAt: now, startedAt: now, attempt: 1),
        TaskRecord(id: ids[3], state: .failed, submittedAt: now, startedAt: now, completedAt: now + 10, lastError: "x", attempt: 1),
        TaskRecord(id: ids[4], submittedAt: now),
        TaskRecord(id: ids[5], submittedAt: now),
    ]
    for record in records { try await put(store, DynamoDBItem.item(record, configuration: store.configuration)) }
    let expected = StateCounts([.finished: 1, .cancelled: 1, .processing: 1, .failed: 1, .pending: 2])
    #expect(same(try await store.counts(session), expected), "counted by a query of its tasks before the upgrade")
    #expect(try await store.completions(session, after: 0, limit: 10).isEmpty, "no completion order before the upgrade")

    #expect(try await store.upgrade() == 1)
    let order = try await store.completions(session, after: 0, limit: 10)
    #expect(order.map(\.id) == [ids[1], ids[3], ids[0]], "by completion time, then index")
    #expect(order.map(\.completionSequence) == [1, 2, 3])
    #expect(same(try await store.counts(session), expected), "counted by the counters after the upgrade")
    try await put(store, DynamoDBItem.item(TaskRecord(id: TaskID(session: session, index: 9), submittedAt: now), configuration: store.configuration))
    #expect(same(try await store.counts(session), expected), "a task item written behind the store's back is not counted: the counters are read")

    #expect(try await store.finish([TaskCompletion(id: ids[2], attempt: 1, output: nil)], owner: agent, at: now + 40) == [ids[2]])
    #expect(try await store.task(ids[2]).completionSequence == 4, "transitions continue the numbering")
    #expect(try await store.counts(session)[.finished] == 2)
    #expect(try await store.upgrade() == 0, "a session is upgraded once")
    #expect(try await store.completions(session, after: 0, limit: 10).map(\.completionSequence) == [1, 2, 3, 4])
}

/// A new session's counts are one query of its counters, for 10 tasks as for 1,000.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func dynamoDBCountsCostOneQueryWhateverTheSize() async throws {
    let (store, session) = try await session("countcost")
    let meter = store.client.meter
    for total in [10, 1_000] {
        let existing = try await store.counts(session).total
        try await store.createTasks((existing..<total).map { TaskRecord(id: TaskID(session: session, index: $0), submittedAt: now) })
        let queries = meter.requests["dynamodb:Query", default: 0]
        let reads = meter.requests.filter { $0.key.hasPrefix("dynamodb:") }.values.reduce(0, +)
        #expect(same(try await store.counts(session), StateCounts([.pending: total])))
        #expect(meter.requests["dynamodb:Query", default: 0] == queries + 1, "one query for \(total) tasks")
        #expect(meter.requests.filter { $0.key.hasPrefix("dynamodb:") }.values.reduce(0, +) == reads + 1, "and nothing else")
    }
}

/// A creation repeated, half over existing tasks, counts only the tasks it created; it costs one
/// cancelled transaction and no read.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func dynamoDBRepeatedCreationCountsOnce() async throws {
    let (store, session) = try await session("create")
    let ids = (0..<20).map { TaskID(session: session, index: $0) }
    try await store.createTasks(ids.prefix(10).map { TaskRecord(id: $0, submittedAt: now) })
    _ = try await store.claim([ids[0]], owner: AgentID("a"), token: .random(), leaseExpiry: now + 60, now: now)
    let meter = store.client.meter
    let before = meter.requests
    try await store.createTasks(ids.map { TaskRecord(id: $0, submittedAt: now) })
    #expect(same(try await store.counts(session), StateCounts([.pending: 19, .processing: 1])))
    #expect(try await store.task(ids[0]).state == .processing, "an existing task is left as it is")
    #expect(meter.requests["dynamodb:TransactWriteItems", default: 0] - before["dynamodb:TransactWriteItems", default: 0] == 2)
    #expect(meter.requests["dynamodb:BatchGetItem", default: 0] == before["dynamodb:BatchGetItem", default: 0])
}

/// The completion order a reader gets is the run without a gap: an index that does not show a number
/// yet (here a number skipped on purpose) ends the answer there, and nothing after it is read.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func dynamoDBCompletionsStopAtAGap() async throws {
    let (store, session) = try await session("gap")
    let ids = (0..<3).map { TaskID(session: session, index: $0) }
    try await store.createTasks(ids.map { TaskRecord(id: $0, submittedAt: now) })
    _ = try await store.cancel([ids[0], ids[1]], at: now)
    var ahead = TaskRecord(id: TaskID(session: session, index: 7), state: .cancelled, submittedAt: now, completedAt: now)
    ahead.completionSequence = 4
    try await put(store, DynamoDBItem.item(ahead, configuration: store.configuration))
    #expect(try await store.completions(session, after: 0, limit: 10).map(\.completionSequence) == [1, 2])
    #expect(try await store.completions(session, after: 2, limit: 10).isEmpty, "number 3 is missing: nothing after it")
    _ = try await store.cancel([ids[2]], at: now)
    #expect(try await store.completions(session, after: 2, limit: 10).map(\.completionSequence) == [3, 4])
}

/// A waiter on one client is woken by a finish through another client (another connection, as
/// another process would be), long before its timeout; the wake-up latency is bounded by the polling.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func dynamoDBWaiterWokenByAnotherClient() async throws {
    let (writer, session) = try await session("wake")
    let reader = DynamoDBStateStore(client: try awsTests.client("dynamodb"), configuration: writer.configuration)
    let id = TaskID(session: session, index: 0)
    try await writer.createTasks([TaskRecord(id: id, submittedAt: now)])
    let claimed = try await writer.claim([id], owner: AgentID("a"), token: .random(), leaseExpiry: now + 60, now: now)
    #expect(claimed.count == 1)
    let waiter = Task { () -> (Bool, ContinuousClock.Instant) in
        let woken = try await reader.waitForCompletions(session, after: 0, timeout: .seconds(60))
        return (woken, ContinuousClock.now)
    }
    // The reader is waiting once it has read the sequence item at least once.
    let reads = reader.client.meter
    let deadline = ContinuousClock.now + .seconds(30)
    while reads.requests["dynamodb:GetItem", default: 0] == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(1)) }
    #expect(try await writer.finish([TaskCompletion(id: id, attempt: 1, output: nil)], owner: AgentID("a"), at: now) == [id])
    let finished = ContinuousClock.now
    let (woken, at) = try await waiter.value
    #expect(woken)
    #expect(at - finished < .seconds(10), "woken \(at - finished) after the finish (polling every 100 ms at most)")
    #expect(try await reader.completions(session, after: 0, limit: 10).map(\.id) == [id])
}
