import Foundation
import GridKernel
import Testing

@testable import GridRedis

// Retention: once every task of a session is terminal, all its state keys expire after the period;
// a session with live tasks, or a store without the option, keeps everything.

private func ttl(_ client: RedisClient, _ key: String) async throws -> Int {
    try #require(try await client.send([RedisCommand("TTL", key)])[0].checked().int)
}

private func store(retention: Duration?) throws -> (RedisClient, RedisStateStore, String) {
    let url = try #require(ProcessInfo.processInfo.environment["HTC_TEST_REDIS"])
    var configuration = try RedisConfiguration(BackendURL(url + "?retention=100"))
    #expect(configuration.retention == .seconds(100))
    configuration.retention = retention
    configuration.prefix = "retention-" + UUID().uuidString.prefix(8).lowercased()
    let client = RedisClient(configuration)
    return (client, RedisStateStore(client: client), configuration.prefix)
}

@Test(.enabled(if: ProcessInfo.processInfo.environment["HTC_TEST_REDIS"] != nil, "HTC_TEST_REDIS is unset"))
func completedSessionKeysExpireAfterTheRetentionPeriod() async throws {
    let (client, state, prefix) = try store(retention: .seconds(100))
    let now = Date(timeIntervalSince1970: 1_800_000_000)
    let owner = AgentID("a")
    func make() async throws -> (SessionID, [TaskID]) {
        let session = SessionID.random()
        try await state.createSession(SessionRecord(id: session, options: SessionOptions(), createdAt: now))
        let ids = try await state.beginSubmission(.begin(session: session, key: .random(), count: 3, at: Date())).range.map { TaskID(session: session, index: $0) }
        try await state.createTasks(ids.map { TaskRecord(id: $0, submittedAt: now) })
        return (session, ids)
    }
    let (done, doneIDs) = try await make()
    let (live, liveIDs) = try await make()
    _ = try await state.claim(doneIDs + liveIDs, owner: owner, token: .random(), leaseExpiry: now + 60, now: now)
    _ = try await state.finish(doneIDs[0...1].map { TaskCompletion(id: $0, attempt: 1, output: [1]) }, owner: owner, at: now)
    let base = RedisKeys.session(prefix: prefix, done.rawValue)
    #expect(try await ttl(client, base + ":info") == -1, "a session with a running task does not expire")
    _ = try await state.fail([TaskFailure(id: doneIDs[2], attempt: 1, message: "x", retryable: false)], owner: owner, at: now)
    _ = try await state.finish([TaskCompletion(id: liveIDs[0], attempt: 1, output: nil)], owner: owner, at: now)

    for key in [base + ":info", base + ":state:finished", base + ":state:failed", base + ":t:0", base + ":t:1", base + ":t:2"] {
        let left = try await ttl(client, key)
        #expect((1...100).contains(left), "\(key) expires within the retention period, TTL \(left)")
    }
    let liveBase = RedisKeys.session(prefix: prefix, live.rawValue)
    #expect(try await ttl(client, liveBase + ":info") == -1, "a session with live tasks keeps its keys")
    #expect(try await ttl(client, liveBase + ":t:0") == -1, "a finished task of a live session keeps its record")

    // A new submission to the completed session makes its keys permanent again.
    _ = try await state.beginSubmission(.begin(session: done, key: .random(), count: 1, at: Date())).range
    #expect(try await ttl(client, base + ":info") == -1)
    #expect(try await ttl(client, base + ":state:finished") == -1)
    await client.close()
}

@Test(.enabled(if: ProcessInfo.processInfo.environment["HTC_TEST_REDIS"] != nil, "HTC_TEST_REDIS is unset"))
func withoutRetentionCompletedSessionsAreKept() async throws {
    let (client, state, prefix) = try store(retention: nil)
    let now = Date(timeIntervalSince1970: 1_800_000_000)
    let session = SessionID.random()
    try await state.createSession(SessionRecord(id: session, options: SessionOptions(), createdAt: now))
    let ids = try await state.beginSubmission(.begin(session: session, key: .random(), count: 1, at: Date())).range.map { TaskID(session: session, index: $0) }
    try await state.createTasks(ids.map { TaskRecord(id: $0, submittedAt: now) })
    _ = try await state.cancelSession(session, at: now)
    let base = RedisKeys.session(prefix: prefix, session.rawValue)
    #expect(try await ttl(client, base + ":info") == -1)
    #expect(try await ttl(client, base + ":t:0") == -1)
    await client.close()
}

@Test func retentionMustBeAPositiveNumberOfSeconds() throws {
    for bad in ["0", "-5", "soon", "1.5"] {
        #expect(throws: GridError.self) { try RedisConfiguration(BackendURL("redis://127.0.0.1:6379/0?retention=\(bad)")) }
    }
}
