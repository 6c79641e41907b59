import GridKernel

/// The URLs of a grid's three data backends.
///
/// `grid` is the shorthand that sets all three; `queue`, `state` and `payload` override it one by one
/// (flags `--grid`, `--queue`, `--state`, `--payload`; variables `HTC_GRID`, `HTC_QUEUE`, `HTC_STATE`,
/// `HTC_PAYLOAD`).
public struct GridURLs: Sendable, Hashable {
    /// Sets all three components unless overridden.
    public var grid: String?
    /// The task queue.
    public var queue: String?
    /// The state store.
    public var state: String?
    /// The payload store.
    public var payload: String?

    /// Creates a set of URLs.
    public init(grid: String? = nil, queue: String? = nil, state: String? = nil, payload: String? = nil) {
        self.grid = grid
        self.queue = queue
        self.state = state
        self.payload = payload
    }

    /// The URL of each component after applying the shorthand.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` naming the component that has no URL.
    public func resolved() throws -> (queue: BackendURL, state: BackendURL, payload: BackendURL) {
        func pick(_ specific: String?, _ name: String, _ variable: String) throws -> BackendURL {
            guard let text = specific ?? grid, !text.isEmpty else {
                throw GridError.invalidArgument(
                    "no \(name) backend: pass --grid URL (or HTC_GRID) or --\(name) URL (or \(variable)), e.g. sqlite:///tmp/grid.db"
                )
            }
            return try BackendURL(text)
        }
        return (
            try pick(queue, "queue", "HTC_QUEUE"),
            try pick(state, "state", "HTC_STATE"),
            try pick(payload, "payload", "HTC_PAYLOAD")
        )
    }
}

/// Maps URL schemes to backend plugins and builds backends from URLs.
///
/// Executables fill one registry with the plugins they link (`Sources/HTCCore/InstalledPlugins.swift`);
/// there is no global registry and no loading by name.
public struct BackendRegistry: Sendable {
    private var plugins: [String: any GridBackendPlugin] = [:]

    /// Creates a registry holding `plugins`.
    ///
    /// - Precondition: no two plugins claim the same scheme.
    public init(_ plugins: [any GridBackendPlugin] = []) {
        for plugin in plugins { register(plugin) }
    }

    /// Adds a plugin for each of its schemes.
    ///
    /// - Precondition: none of its schemes is registered yet.
    public mutating func register(_ plugin: any GridBackendPlugin) {
        for scheme in plugin.schemes {
            precondition(plugins[scheme.lowercased()] == nil, "backend scheme '\(scheme)' is registered twice")
            plugins[scheme.lowercased()] = plugin
        }
    }

    /// The registered schemes, sorted.
    public var schemes: [String] { plugins.keys.sorted() }

    private func plugin(for url: BackendURL) throws -> any GridBackendPlugin {
        guard let plugin = plugins[url.scheme] else {
            throw GridError.invalidArgument(
                "unknown backend scheme '\(url.scheme)://' in \(url); known schemes: \(schemes.map { "\($0)://" }.joined(separator: ", "))"
            )
        }
        return plugin
    }

    /// Builds a task queue from a URL.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for an unknown scheme or a bad URL; ``GridError/Code/unavailable``.
    public func makeQueue(_ url: BackendURL, context: BackendContext) async throws -> any TaskQueue {
        try await plugin(for: url).makeQueue(url, context: context)
    }

    /// Builds a state store from a URL.
    ///
    /// - Throws: as ``makeQueue(_:context:)``.
    public func makeStateStore(_ url: BackendURL, context: BackendContext) async throws -> any StateStore {
        try await plugin(for: url).makeStateStore(url, context: context)
    }

    /// Builds a payload store from a URL. `?layout=htcgrid` (on any scheme) keeps values in HTC-Grid's
    /// encodings (``GridKernel/HTCGridPayloadStore``), so HTC-Grid clients share the data plane; a plugin
    /// may read the option too (Redis then drops its key prefix). `?layout=grid` is the default.
    ///
    /// - Throws: as ``makeQueue(_:context:)``, and ``GridKernel/GridError/Code/invalidArgument`` for an
    ///   unknown layout.
    public func makePayloadStore(_ url: BackendURL, context: BackendContext) async throws -> any PayloadStore {
        let layout = url.query["layout"] ?? "grid"
        guard layout == "grid" || layout == "htcgrid" else {
            throw GridError.invalidArgument("layout=\(layout) in \(url) is not one of grid, htcgrid")
        }
        let store = try await plugin(for: url).makePayloadStore(url, context: context)
        return layout == "htcgrid" ? HTCGridPayloadStore(store) : store
    }

    /// Builds all three backends of a grid.
    ///
    /// - Throws: as ``makeQueue(_:context:)``, and ``GridError/Code/invalidArgument`` when a component has no URL.
    public func makeBackends(_ urls: GridURLs, context: BackendContext) async throws -> GridBackends {
        let resolved = try urls.resolved()
        return GridBackends(
            queue: try await makeQueue(resolved.queue, context: context),
            state: try await makeStateStore(resolved.state, context: context),
            payloads: try await makePayloadStore(resolved.payload, context: context)
        )
    }
}
