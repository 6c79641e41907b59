/// The `memory://NAME` scheme: the in-memory reference backends, shared by name within one process.
///
/// Useful for tests and for `htc bench --backend memory`; nothing survives the process and other
/// processes cannot see it.
public struct InMemoryPlugin: GridBackendPlugin {
    /// Creates the plugin.
    public init() {}

    public var schemes: [String] { ["memory"] }

    private func name(_ url: BackendURL) -> String { "memory:" + url.host + url.path }

    public func makeQueue(_ url: BackendURL, context: BackendContext) async throws -> any TaskQueue {
        let clock = context.clock
        return try await context.resources.resource(name(url) + "#queue") { InMemoryTaskQueue(clock: clock) }
    }

    public func makeStateStore(_ url: BackendURL, context: BackendContext) async throws -> any StateStore {
        let clock = context.clock
        return try await context.resources.resource(name(url) + "#state") { InMemoryStateStore(clock: clock) }
    }

    public func makePayloadStore(_ url: BackendURL, context: BackendContext) async throws -> any PayloadStore {
        let clock = context.clock
        return try await context.resources.resource(name(url) + "#payload") { InMemoryPayloadStore(clock: clock) }
    }
}
