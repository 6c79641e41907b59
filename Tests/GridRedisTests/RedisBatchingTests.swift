import Foundation
import GridKernel
import Testing

@testable import GridRedis

// Submission cost: 10,000 tasks must take a handful of round trips, not 10,000.

@Test(.enabled(if: ProcessInfo.processInfo.environment["HTC_TEST_REDIS"] != nil, "HTC_TEST_REDIS is unset"))
func submittingTenThousandTasksTakesAFewRoundTrips() async throws {
    let url = try #require(ProcessInfo.processInfo.environment["HTC_TEST_REDIS"])
    var configuration = try RedisConfiguration(BackendURL(url))
    configuration.prefix = "batching-" + UUID().uuidString.prefix(8).lowercased()
    let client = RedisClient(configuration)
    let clock = ManualClock()
    let queue = RedisTaskQueue(client: client, clock: clock)
    let state = RedisStateStore(client: client)
    let session = SessionID.random()
    try await state.createSession(SessionRecord(id: session, options: SessionOptions(), createdAt: clock.now))
    let range = try await state.beginSubmission(.begin(session: session, key: .random(), count: 10_000, at: Date())).range
    let ids = range.map { TaskID(session: session, index: $0) }

    let before = await client.roundTrips
    try await state.createTasks(ids.map { TaskRecord(id: $0, submittedAt: clock.now) })
    try await queue.enqueue(ids.map { QueuedTask(id: $0, priority: 0, payload: [1, 2, 3]) })
    let used = await client.roundTrips - before
    // One write each for records and messages, plus at most one SCRIPT LOAD each on first use.
    #expect(used <= 4, "submitting 10,000 tasks took \(used) round trips")
    #expect(try await state.counts(session)[.pending] == 10_000)
    #expect(try await queue.depth()[0]?.waiting == 10_000)

    let leases = try await queue.lease(max: 500, duration: .seconds(30), order: .highestFirst, wait: .zero)
    #expect(leases.count == 500)
    let claimed = try await state.claim(leases.map(\.id), owner: AgentID("a"), token: .random(), leaseExpiry: clock.now + 30, now: clock.now)
    #expect(claimed.count == 500)
    await client.close()
}
