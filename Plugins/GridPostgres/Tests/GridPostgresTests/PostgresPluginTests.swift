import Foundation
import GridKernel
import GridPostgres
import Testing

@Suite struct PostgresConfigurationTests {
    @Test func urlPartsAndOptions() throws {
        let configuration = try PostgresConfiguration(
            BackendURL("postgresql://grid:s3cret@db.example:6543/jobs?schema=team_a&pool=3&sslmode=disable&max_payload_bytes=1024&poll_interval=0.2"))
        #expect(configuration.host == "db.example")
        #expect(configuration.port == 6543)
        #expect(configuration.user == "grid")
        #expect(configuration.password == "s3cret")
        #expect(configuration.database == "jobs")
        #expect(configuration.schema == "team_a")
        #expect(configuration.poolSize == 3)
        #expect(configuration.tls == .disable)
        #expect(configuration.maxPayloadBytes == 1024)
        #expect(configuration.pollInterval == .milliseconds(200))
    }

    @Test func defaults() throws {
        let configuration = try PostgresConfiguration(BackendURL("postgres://localhost"))
        #expect(configuration.port == 5432)
        #expect(configuration.database == nil)
        #expect(configuration.schema == "htc")
        #expect(configuration.poolSize == 8)
        #expect(configuration.tls == .prefer)
        #expect(configuration.user == PostgresConfiguration.defaultUser)
    }

    @Test(arguments: [
        "postgres:///nohost", "postgres://h/db?schema=Bad-Name", "postgres://h/db?schema=x;drop", "postgres://h?pool=0",
        "postgres://h?sslmode=sometimes", "postgres://h?max_payload_bytes=-1", "redis://h",
    ])
    func badURLsAreRejectedWithTheirPart(_ text: String) throws {
        #expect {
            _ = try PostgresConfiguration(BackendURL(text))
        } throws: { error in
            (error as? GridError)?.code == .invalidArgument
        }
    }
}

/// The plugin against the test server.
@Suite(.enabled(if: PostgresTestServer.enabled, PostgresTestServer.skipReason))
struct PostgresPluginTests {
    private func url(schema: String) throws -> BackendURL {
        try BackendURL((PostgresTestServer.url ?? "postgres://unset") + "?schema=\(schema)")
    }

    private static func freshSchema() -> String { "plugin_" + UUID().uuidString.prefix(8).lowercased() }

    @Test func theThreeComponentsOfOneURLShareTheirTables() async throws {
        let url = try url(schema: Self.freshSchema())
        let context = BackendContext()
        let plugin = PostgresPlugin()
        #expect(plugin.schemes == ["postgres", "postgresql"])
        let queue = try await plugin.makeQueue(url, context: context)
        let state = try await plugin.makeStateStore(url, context: context)
        let payloads = try await plugin.makePayloadStore(url, context: context)
        let session = SessionRecord(id: try SessionID("plugin-test"), options: SessionOptions(), createdAt: Date(timeIntervalSince1970: 1_700_000_000.25))
        try await state.createSession(session)
        try await queue.enqueue([QueuedTask(id: TaskID(session: session.id, index: 0), priority: 0, payload: [1, 2])])
        try await payloads.put("k", [9])

        // Another process (another context: its own pool) sees the same grid.
        let other = BackendContext()
        #expect(try await plugin.makeStateStore(url, context: other).session(session.id) == session)
        #expect(try await plugin.makePayloadStore(url, context: other).get("k") == [9])
        let leases = try await plugin.makeQueue(url, context: other).lease(max: 10, duration: .seconds(30), order: .highestFirst, wait: .zero)
        #expect(leases.map(\.payload) == [[1, 2]])
    }

    @Test func processesStartingTogetherCreateTheSchemaOnce() async throws {
        let url = try url(schema: Self.freshSchema())
        // Eight "processes" (contexts with pools of their own) open the same new schema at once.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    let state = try await PostgresPlugin().makeStateStore(url, context: BackendContext())
                    _ = try await state.sessions(after: nil, limit: 1)
                }
            }
            try await group.waitForAll()
        }
    }
}
