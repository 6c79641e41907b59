import Foundation
import GridKernel
import GridKernelConformance
import GridPostgres
import Logging
import Testing

/// The test server, from HTC_TEST_POSTGRES. Without it the suites are skipped, unless `make test` is the
/// caller (HTC_TEST_SUITE=make): then they run and fail, so CI can never skip them silently.
enum PostgresTestServer {
    static let skipReason: Comment =
        "HTC_TEST_POSTGRES is unset: run scripts/with-postgres.sh swift test --package-path Plugins/GridPostgres (or make test)"

    static var url: String? { ProcessInfo.processInfo.environment["HTC_TEST_POSTGRES"].flatMap { $0.isEmpty ? nil : $0 } }

    static var enabled: Bool { url != nil || ProcessInfo.processInfo.environment["HTC_TEST_SUITE"] == "make" }

    /// The server's configuration.
    static func configuration() throws -> PostgresConfiguration {
        guard let url else {
            throw GridError.unavailable("HTC_TEST_POSTGRES is unset; run the tests through make test or scripts/with-postgres.sh")
        }
        return try PostgresConfiguration(BackendURL(url))
    }

    /// One pool for the whole test process.
    static let pool: Result<PostgresConnectionPool, any Error> = Result {
        PostgresConnectionPool(try configuration(), logger: Logger(label: "test.postgres"))
    }

    /// A fresh grid in the case's own schema, on the case's clock.
    static func database(_ context: ConformanceContext) async throws -> PostgresDatabase {
        try await PostgresDatabase.open(pool: pool.get(), schema: context.namespace, clock: context.clock, pollInterval: .milliseconds(5))
    }
}

/// `make test` must never skip the PostgreSQL suites.
@Test func postgresServerGivenUnderMake() {
    #expect(
        PostgresTestServer.url != nil || ProcessInfo.processInfo.environment["HTC_TEST_SUITE"] != "make",
        "HTC_TEST_POSTGRES is unset under make test; scripts/with-postgres.sh should have started PostgreSQL"
    )
}
