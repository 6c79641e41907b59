import GridKernel

/// The `postgres://` and `postgresql://` schemes: queue, state and payloads in one PostgreSQL database.
///
/// `postgres://user:password@host:5432/database?schema=htc&pool=8` (options in
/// ``PostgresConfiguration``). The components of one URL (server, user, database, schema) in one
/// process share a single connection pool; the schema and its tables are created on first use.
public struct PostgresPlugin: GridBackendPlugin {
    /// Creates the plugin.
    public init() {}

    public var schemes: [String] { ["postgres", "postgresql"] }

    private func database(_ url: BackendURL, context: BackendContext) async throws -> PostgresDatabase {
        let configuration = try PostgresConfiguration(url)
        let logger = context.logger
        let clock = context.clock
        let server = "postgres:\(configuration.user)@\(configuration.host):\(configuration.port)/\(configuration.database ?? "")"
        let pool = try await context.resources.resource(server) { PostgresConnectionPool(configuration, logger: logger) }
        return try await context.resources.resource("\(server)#\(configuration.schema)") {
            try await PostgresDatabase.open(
                pool: pool, schema: configuration.schema, clock: clock, pollInterval: configuration.pollInterval, logger: logger)
        }
    }

    public func makeQueue(_ url: BackendURL, context: BackendContext) async throws -> any TaskQueue {
        PostgresTaskQueue(database: try await database(url, context: context))
    }

    public func makeStateStore(_ url: BackendURL, context: BackendContext) async throws -> any StateStore {
        PostgresStateStore(database: try await database(url, context: context))
    }

    public func makePayloadStore(_ url: BackendURL, context: BackendContext) async throws -> any PayloadStore {
        let configuration = try PostgresConfiguration(url)
        return PostgresPayloadStore(database: try await database(url, context: context), maxPayloadBytes: configuration.maxPayloadBytes)
    }
}
