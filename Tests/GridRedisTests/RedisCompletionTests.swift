import Foundation
import GridKernel
import Testing

@testable import GridRedis

// Counters, completion order and wake-ups that only the Redis backend has: the upgrade of sessions
// the previous version wrote, and waiters woken through pub/sub by writes from another client (another
// connection, as another process would be). The wake-up tests set the fallback poll to 30 s and wait
// at most 10 s, so only a publish can wake the waiter in time.

private let noPoll = Duration.seconds(30)

/// A session written the way the previous version wrote it: no counters, no completion order, task
/// records of 14 positions (13 for records older than attempts). Terminal tasks are then numbered by
/// completion time, then index; counts read the state indexes once, and later transitions count on.
@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset"))
func aSessionOfThePreviousVersionIsCountedAndNumbered() async throws {
    let client = try redisTests.client("upgrade-" + UUID().uuidString.prefix(8).lowercased())
    let store = RedisStateStore(client: client)
    let session = try await oldSession(
        client, store,
        [
            (.pending, nil, 13), (.processing, nil, 14), (.finished, 300, 14), (.failed, 100, 14), (.cancelled, 300, 14),
            (.finished, 200, 13),
        ])
    let id = { TaskID(session: session, index: $0) }

    let counts = try await store.counts(session)
    #expect(counts == StateCounts([.pending: 1, .processing: 1, .finished: 2, .failed: 1, .cancelled: 1]))
    let order = try await store.completions(session, after: 0, limit: 10)
    #expect(order.map(\.id.index) == [3, 5, 2, 4], "by completion time, then index")
    #expect(order.map(\.completionSequence) == [1, 2, 3, 4])
    #expect(try await store.task(id(5)).completionSequence == 2, "the number is stored in the record")
    #expect(try await store.completions(session, after: 2, limit: 1).map(\.id.index) == [2])

    // Transitions go on from there, also on records of 13 positions.
    #expect(try await store.finish([TaskCompletion(id: id(1), attempt: 1, output: [1])], owner: AgentID("old-agent"), at: Date()) == [id(1)])
    #expect(try await store.cancel([id(0)], at: Date()) == CancelCounts(pending: 1))
    #expect(try await store.completions(session, after: 4, limit: 10).map(\.id.index) == [1, 0])
    #expect(try await store.task(id(0)).completionSequence == 6)
    #expect(try await store.counts(session) == StateCounts([.finished: 3, .failed: 1, .cancelled: 2]))
    #expect(try await store.waitForCompletions(session, after: 5, timeout: .zero))
}

/// The first script to touch an old session may be a transition, not a read: it upgrades first, so
/// the task it finishes comes after those finished before the upgrade.
@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset"))
func aTransitionUpgradesAnOldSessionFirst() async throws {
    let client = try redisTests.client("upgrade-" + UUID().uuidString.prefix(8).lowercased())
    let store = RedisStateStore(client: client)
    let session = try await oldSession(client, store, [(.finished, 50, 14), (.processing, nil, 14)])
    let finishing = TaskID(session: session, index: 1)
    #expect(try await store.finish([TaskCompletion(id: finishing, attempt: 1, output: nil)], owner: AgentID("old-agent"), at: Date()) == [finishing])
    #expect(try await store.completions(session, after: 0, limit: 10).map(\.id.index) == [0, 1])
    #expect(try await store.counts(session) == StateCounts([.finished: 2]))
    #expect(try await store.deleteSession(session) == 2)
    let left = try await client.send([RedisCommand("EXISTS", "\(client.settings.prefix):{\(session)}:counts", "\(client.settings.prefix):{\(session)}:order")])
    #expect(left.first?.int == 0, "deleting a session removes its counters and completion order")
}

/// A waiter on one client is woken by a finish made through another client, and by a cancel.
@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset"))
func aCompletionWaiterIsWokenByAnotherClient() async throws {
    let prefix = "wake-" + UUID().uuidString.prefix(8).lowercased()
    let waiting = RedisStateStore(client: try redisTests.client(prefix), pollInterval: noPoll)
    let writer = RedisStateStore(client: try redisTests.client(prefix))
    let session = SessionID.random()
    try await writer.createSession(SessionRecord(id: session, options: SessionOptions(), createdAt: Date()))
    let ids = try await writer.beginSubmission(.begin(session: session, key: .random(), count: 2, at: Date())).taskIDs
    try await writer.createTasks(ids.map { TaskRecord(id: $0, submittedAt: Date()) })
    let owner = AgentID("writer")
    let claimed = try await writer.claim(ids, owner: owner, token: .random(), leaseExpiry: Date() + 600, now: Date())

    let waiter = Task { try await waiting.waitForCompletions(session, after: 0, timeout: .seconds(60)) }
    try await parked(waiting.client, on: waiting.doneChannel(session))
    let finishedAt = ContinuousClock.now
    _ = try await writer.finish([TaskCompletion(id: ids[0], attempt: claimed[0].attempt, output: nil)], owner: owner, at: Date())
    #expect(try await waiter.value, "woken by the other client's finish")
    let latency = ContinuousClock.now - finishedAt
    #expect(latency < .seconds(15), "woken by the publish, not by a look every 30 s (\(latency))")
    print("completion wake-up after a finish by another client: \(latency)")

    let second = Task { try await waiting.waitForCompletions(session, after: 1, timeout: .seconds(60)) }
    try await parked(waiting.client, on: waiting.doneChannel(session))
    _ = try await writer.cancel([ids[1]], at: Date())
    #expect(try await second.value, "woken by the other client's cancel")
}

/// A waiting lease on one client is woken by an enqueue through another client, then by a release.
@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset"))
func aWaitingLeaseIsWokenByAnotherClient() async throws {
    let prefix = "wake-" + UUID().uuidString.prefix(8).lowercased()
    let waiting = RedisTaskQueue(client: try redisTests.client(prefix), pollInterval: noPoll)
    let writer = RedisTaskQueue(client: try redisTests.client(prefix))
    let task = TaskID(session: SessionID.random(), index: 0)
    _ = try await writer.depth()  // connected, scripts loaded: the latency below is the wake-up's

    let lease = Task { try await waiting.lease(max: 1, duration: .seconds(60), order: .highestFirst, wait: .seconds(60)) }
    try await parked(waiting.client, on: waiting.arrivals)
    let enqueuedAt = ContinuousClock.now
    try await writer.enqueue([QueuedTask(id: task, priority: 0)])
    let leased = try await lease.value
    #expect(leased.map(\.id) == [task], "woken by the other client's enqueue")
    let latency = ContinuousClock.now - enqueuedAt
    #expect(latency < .seconds(15), "woken by the publish, not by a look every 30 s (\(latency))")
    print("lease wake-up after an enqueue by another client: \(latency)")

    let again = Task { try await waiting.lease(max: 1, duration: .seconds(60), order: .highestFirst, wait: .seconds(60)) }
    try await parked(waiting.client, on: waiting.arrivals)
    try await writer.release(leased, delay: .zero)
    #expect(try await again.value.map(\.id) == [task], "woken by the other client's release")
}

/// A waiting lease returns as soon as its task is cancelled (an agent that stops).
@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset"))
func aWaitingLeaseStopsWhenCancelled() async throws {
    let queue = RedisTaskQueue(client: try redisTests.client("wake-" + UUID().uuidString.prefix(8).lowercased()), pollInterval: noPoll)
    let lease = Task { try await queue.lease(max: 1, duration: .seconds(60), order: .highestFirst, wait: .seconds(60)) }
    try await parked(queue.client, on: queue.arrivals)
    let cancelledAt = ContinuousClock.now
    lease.cancel()
    await #expect(throws: CancellationError.self) { try await lease.value }
    #expect(ContinuousClock.now - cancelledAt < .seconds(5), "returned long before its wait of 60 s")
}

/// The subscriber connection is killed under a waiter: it reconnects, subscribes again, and the
/// waiter is still woken by a write from another client.
@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset"))
func theSubscriberSurvivesADroppedConnection() async throws {
    let prefix = "wake-" + UUID().uuidString.prefix(8).lowercased()
    let waiting = RedisTaskQueue(client: try redisTests.client(prefix), pollInterval: noPoll)
    let writer = RedisTaskQueue(client: try redisTests.client(prefix))
    let lease = Task { try await waiting.lease(max: 1, duration: .seconds(60), order: .highestFirst, wait: .seconds(60)) }
    try await parked(waiting.client, on: waiting.arrivals)
    let opened = waiting.client.subscriber.connectionsOpened
    // Kill this client's subscriber connection only (tests running beside this one have their own).
    let port = try #require(waiting.client.subscriber.localPort)
    let list = try await writer.client.send([RedisCommand("CLIENT", "LIST", "TYPE", "pubsub")])[0].checked().string ?? ""
    let line = try #require(list.split(separator: "\n").first { $0.contains(" addr=127.0.0.1:\(port) ") || $0.contains("addr=127.0.0.1:\(port) ") })
    let id = try #require(line.split(separator: " ").first { $0.hasPrefix("id=") }.map { String($0.dropFirst(3)) })
    let killed = try await writer.client.send([RedisCommand("CLIENT", "KILL", "ID", id)])[0].checked().int ?? 0
    #expect(killed == 1)
    try await until("the subscriber reconnected and the waiter parked again") {
        waiting.client.subscriber.connectionsOpened > opened && waiting.client.subscriber.parked(on: waiting.arrivals) == 1
    }
    let task = TaskID(session: SessionID.random(), index: 0)
    let enqueuedAt = ContinuousClock.now
    try await writer.enqueue([QueuedTask(id: task, priority: 0)])
    #expect(try await lease.value.map(\.id) == [task], "woken through the new connection")
    let latency = ContinuousClock.now - enqueuedAt
    #expect(latency < .seconds(15), "woken by the publish, not by a look every 30 s (\(latency))")
}

// MARK: Helpers

/// Waits (up to 60 s: the full suite loads Redis and the machine) until a waiter of `client` looked, found nothing, and parked on `channel`.
private func parked(_ client: RedisClient, on channel: String) async throws {
    try await until("a waiter parked on \(channel)") { client.subscriber.parked(on: channel) >= 1 }
}

private func until(_ what: String, _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(60)
    while !condition() {
        try #require(ContinuousClock.now < deadline, "\(what) within 60 s")
        await Task.yield()
        try await Task.sleep(for: .microseconds(200))
    }
}

/// Writes a session as the previous version did: the session and submission through the store, then
/// no counters, and tasks `(state, completed at, positions)` as raw `SET`s and `ZADD`s; a processing
/// task is owned by "old-agent" in attempt 1.
private func oldSession(
    _ client: RedisClient, _ store: RedisStateStore, _ tasks: [(state: TaskState, completed: Double?, positions: Int)]
) async throws -> SessionID {
    let session = SessionID.random()
    try await store.createSession(SessionRecord(id: session, options: SessionOptions(), createdAt: Date()))
    _ = try await store.beginSubmission(.begin(session: session, key: .random(), count: tasks.count, at: Date()))
    let base = "\(client.settings.prefix):{\(session)}"
    var commands = [RedisCommand("DEL", base + ":counts")]
    let lease = Date() + 600
    for (index, task) in tasks.enumerated() {
        var record = TaskRecord(id: TaskID(session: session, index: index), state: task.state, submittedAt: Date(timeIntervalSince1970: 10))
        record.completedAt = task.completed.map { Date(timeIntervalSince1970: $0) }
        if task.state == .processing {
            record.owner = AgentID("old-agent")
            record.leaseExpiry = lease
            record.attempt = 1
            commands.append(RedisCommand("ZADD", base + ":leases", RedisKeys.text(lease), String(index)))
        }
        // The current codec writes 15 positions, the last `false` (no number yet): drop it, and the
        // attempt (a one-byte integer here) for 13.
        var packed = RedisTaskCodec.encode(record)
        #expect(packed.last == 0xc2 && record.attempt < 128)
        packed.removeLast(RedisTaskCodec.count - task.positions)
        packed[0] = 0x90 | UInt8(task.positions)
        commands.append(RedisCommand(bytes: [Array("SET".utf8), Array("\(base):t:\(index)".utf8), packed]))
        commands.append(RedisCommand("ZADD", "\(base):state:\(task.state.rawValue)", String(index), String(index)))
    }
    for reply in try await client.send(commands) { _ = try reply.checked() }
    return session
}
