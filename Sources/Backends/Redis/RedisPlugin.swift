import GridKernel

/// The `redis://` and `rediss://` schemes: queue, state and payloads on one Redis server.
///
/// `redis://[user:password@]host:port/db?prefix=htc&pool=4&max_payload_bytes=N[&layout=htcgrid]`; `rediss://` speaks
/// TLS with certificate verification (`?ca_file=/path/ca.pem` to trust a private CA). Every component
/// of one server, database and prefix in one process shares a single connection pool.
public struct RedisPlugin: GridBackendPlugin {
    /// Creates the plugin.
    public init() {}

    /// `redis` and `rediss`.
    public var schemes: [String] { ["redis", "rediss"] }

    private func client(_ url: BackendURL, context: BackendContext) async throws -> RedisClient {
        let configuration = try RedisConfiguration(url)
        let logger = context.logger
        let key = "redis:\(configuration.endpoint)?prefix=\(configuration.prefix)&pool=\(configuration.poolSize)"
        return try await context.resources.resource(key) { RedisClient(configuration, logger: logger) }
    }

    /// A ``RedisTaskQueue`` on the URL's server, timed by the context's clock.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a bad URL.
    public func makeQueue(_ url: BackendURL, context: BackendContext) async throws -> any TaskQueue {
        RedisTaskQueue(client: try await client(url, context: context), clock: context.clock, pollInterval: try RedisConfiguration(url).pollInterval)
    }

    /// A ``RedisStateStore`` on the URL's server.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a bad URL.
    public func makeStateStore(_ url: BackendURL, context: BackendContext) async throws -> any StateStore {
        RedisStateStore(client: try await client(url, context: context), pollInterval: try RedisConfiguration(url).pollInterval)
    }

    /// A ``RedisPayloadStore`` on the URL's server, with the URL's `max_payload_bytes`; with
    /// `?layout=htcgrid` its keys are the bare data-plane keys HTC-Grid clients use (no prefix; the
    /// registry adds HTC-Grid's encodings).
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a bad URL.
    public func makePayloadStore(_ url: BackendURL, context: BackendContext) async throws -> any PayloadStore {
        RedisPayloadStore(client: try await client(url, context: context), keyPrefix: url.query["layout"] == "htcgrid" ? "" : nil)
    }
}
