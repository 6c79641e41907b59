import Foundation
import GridKernel
import GridKernelConformance
import Testing

@testable import GridRedis

// The public conformance suites, wired for the Redis backend, against the redis-server named by
// HTC_TEST_REDIS (`make test` starts one through scripts/with-redis.sh). Each case works under its
// own key prefix, the case's namespace. Without HTC_TEST_REDIS the suites are skipped, unless
// `make test` is the caller (HTC_TEST_SUITE=make): then they fail, so CI can never skip them silently.

@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset: start redis-server and set HTC_TEST_REDIS=redis://127.0.0.1:PORT (or run make test)"), arguments: QueueConformance.Case.allCases)
func redisQueue(_ c: QueueConformance.Case) async throws {
    try await QueueConformance { ctx in RedisTaskQueue(client: try redisTests.client(ctx.namespace), clock: ctx.clock) }.run(c)
}

@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset: start redis-server and set HTC_TEST_REDIS=redis://127.0.0.1:PORT (or run make test)"), arguments: StateConformance.Case.allCases)
func redisState(_ c: StateConformance.Case) async throws {
    try await StateConformance { ctx in RedisStateStore(client: try redisTests.client(ctx.namespace)) }.run(c)
}

/// With a retention period the transitions also set expiries: the store must still conform.
@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset: start redis-server and set HTC_TEST_REDIS=redis://127.0.0.1:PORT (or run make test)"), arguments: StateConformance.Case.allCases)
func redisStateWithRetention(_ c: StateConformance.Case) async throws {
    try await StateConformance { ctx in RedisStateStore(client: try redisTests.client(ctx.namespace, retention: .seconds(3_600))) }.run(c)
}

@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset: start redis-server and set HTC_TEST_REDIS=redis://127.0.0.1:PORT (or run make test)"), arguments: PayloadConformance.Case.allCases)
func redisPayloads(_ c: PayloadConformance.Case) async throws {
    try await PayloadConformance { ctx in RedisPayloadStore(client: try redisTests.client(ctx.namespace)) }.run(c)
}

@Test(.enabled(if: redisTests.enabled, "HTC_TEST_REDIS is unset: start redis-server and set HTC_TEST_REDIS=redis://127.0.0.1:PORT (or run make test)"), arguments: GridConformance.Case.allCases)
func redisGrid(_ c: GridConformance.Case) async throws {
    try await GridConformance { ctx in
        let client = try redisTests.client(ctx.namespace)
        return GridBackends(queue: RedisTaskQueue(client: client, clock: ctx.clock), state: RedisStateStore(client: client), payloads: RedisPayloadStore(client: client))
    }.run(c)
}

/// `make test` must never skip the Redis suites.
@Test func redisServerGivenUnderMake() {
    #expect(
        redisTests.url != nil || ProcessInfo.processInfo.environment["HTC_TEST_SUITE"] != "make",
        "HTC_TEST_REDIS is unset under make test; scripts/with-redis.sh should have started redis-server"
    )
}

/// Where the test server is, from the environment.
enum redisTests {
    static var url: String? { ProcessInfo.processInfo.environment["HTC_TEST_REDIS"].flatMap { $0.isEmpty ? nil : $0 } }

    /// Run the suites when a server is given, and under `make test` (where a missing server fails).
    static var enabled: Bool { url != nil || ProcessInfo.processInfo.environment["HTC_TEST_SUITE"] == "make" }

    /// A client of the test server whose keys start with `namespace`.
    static func client(_ namespace: String, retention: Duration? = nil) throws -> RedisClient {
        guard let url else {
            throw GridError.unavailable("HTC_TEST_REDIS is unset; run the tests through make test or scripts/with-redis.sh")
        }
        var configuration = try RedisConfiguration(BackendURL(url))
        configuration.prefix = namespace
        configuration.retention = retention
        configuration.poolSize = 2
        return RedisClient(configuration)
    }
}
