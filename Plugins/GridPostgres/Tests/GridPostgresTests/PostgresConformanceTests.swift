import GridKernel
import GridKernelConformance
import GridPostgres
import Testing

// The public conformance suites, one line each, against the PostgreSQL server named by
// HTC_TEST_POSTGRES (`make test` starts a private cluster through scripts/with-postgres.sh). Each case
// gets its own schema, named by the case's namespace; all cases share one connection pool.

@Test(.enabled(if: PostgresTestServer.enabled, PostgresTestServer.skipReason), arguments: QueueConformance.Case.allCases)
func postgresQueue(_ c: QueueConformance.Case) async throws {
    try await QueueConformance { ctx in PostgresTaskQueue(database: try await PostgresTestServer.database(ctx)) }.run(c)
}

@Test(.enabled(if: PostgresTestServer.enabled, PostgresTestServer.skipReason), arguments: StateConformance.Case.allCases)
func postgresState(_ c: StateConformance.Case) async throws {
    try await StateConformance { ctx in PostgresStateStore(database: try await PostgresTestServer.database(ctx)) }.run(c)
}

@Test(.enabled(if: PostgresTestServer.enabled, PostgresTestServer.skipReason), arguments: PayloadConformance.Case.allCases)
func postgresPayloads(_ c: PayloadConformance.Case) async throws {
    try await PayloadConformance { ctx in PostgresPayloadStore(database: try await PostgresTestServer.database(ctx)) }.run(c)
}

@Test(.enabled(if: PostgresTestServer.enabled, PostgresTestServer.skipReason), arguments: GridConformance.Case.allCases)
func postgresGrid(_ c: GridConformance.Case) async throws {
    try await GridConformance { ctx in
        let database = try await PostgresTestServer.database(ctx)
        return GridBackends(
            queue: PostgresTaskQueue(database: database), state: PostgresStateStore(database: database),
            payloads: PostgresPayloadStore(database: database))
    }.run(c)
}
