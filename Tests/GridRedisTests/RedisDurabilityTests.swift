import Foundation
import GridKernel
import Testing

@testable import GridRedis

/// A Redis server that persists nothing is reported (agents and the server log it at start, `/readyz`
/// shows it); one with an append-only file or snapshots is not. The test server of `make test` runs
/// without persistence; the test turns snapshots on for a moment and back off.
@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset"))
func aRedisServerWithoutPersistenceIsReported() async throws {
    let client = try redisTests.client("durability-" + UUID().uuidString.prefix(8).lowercased())
    let backends = GridBackends(
        queue: RedisTaskQueue(client: client, clock: SystemClock()), state: RedisStateStore(client: client),
        payloads: RedisPayloadStore(client: client))
    let config = try await client.send([RedisCommand("CONFIG", "GET", "appendonly"), RedisCommand("CONFIG", "GET", "save")])
    try #require(config[0].elements.last?.string == "no" && config[1].elements.last?.string == "", "the test server persists nothing")

    let warnings = await backends.durabilityWarnings()
    #expect(warnings.count == 1, "the three stores of one server warn once: \(warnings)")
    #expect(warnings.first?.contains("keeps nothing across a restart") == true)
    #expect(warnings.first?.contains("appendonly yes") == true)

    _ = try await client.send([RedisCommand("CONFIG", "SET", "save", "3600 1")])[0].checked()
    let persisting = await backends.durabilityWarnings()
    _ = try await client.send([RedisCommand("CONFIG", "SET", "save", "")])[0].checked()
    #expect(persisting.isEmpty, "a server with snapshots: \(persisting)")
}

/// Listing the sessions of an empty grid takes one round trip. (A page of no sessions used to send an
/// empty pipeline, whose empty reply list passed for "Redis is loading" and was retried for the whole
/// retry window: 30 s per `GET /v1/sessions` on a fresh grid.)
@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset"))
func anEmptyPipelineIsNotRetried() async throws {
    let client = try redisTests.client("empty-" + UUID().uuidString.prefix(8).lowercased())
    let state = RedisStateStore(client: client)
    let before = await client.roundTrips
    let page = try await state.sessions(after: nil, limit: 10)
    #expect(page.items.isEmpty)
    let used = await client.roundTrips - before
    #expect(used <= 2, "round trips to list no session: \(used)")
    #expect(try await client.send([]).isEmpty)
}
