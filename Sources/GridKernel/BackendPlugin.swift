import Foundation
import Logging

/// A backend location, parsed from a URL such as `sqlite:///var/grid.db` or `redis://host:6379/0`.
public struct BackendURL: Sendable, Hashable, CustomStringConvertible {
    /// The URL as given.
    public let string: String
    /// The scheme, lower-cased (`sqlite`, `memory`, …).
    public let scheme: String
    /// The host, if any (empty for `sqlite:///path`).
    public let host: String
    /// The port, if any.
    public let port: Int?
    /// The percent-decoded path.
    public let path: String
    /// The user, if any.
    public let user: String?
    /// The password, if any. Never printed: ``description`` masks it.
    public let password: String?
    /// Query parameters (`?endpoint=…&region=…`); the last value wins for repeated names.
    public let query: [String: String]

    /// Parses a URL.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` when the text is not a URL with a scheme.
    public init(_ string: String) throws {
        guard let components = URLComponents(string: string), let scheme = components.scheme, !scheme.isEmpty else {
            throw GridError.invalidArgument("'\(string)' is not a backend URL; expected e.g. sqlite:///path/grid.db or memory://")
        }
        self.string = string
        self.scheme = scheme.lowercased()
        self.host = components.host ?? ""
        self.port = components.port
        self.path = components.path
        self.user = components.user
        self.password = components.password
        var query: [String: String] = [:]
        for item in components.queryItems ?? [] { query[item.name] = item.value ?? "" }
        self.query = query
    }

    /// The URL with any password replaced by `***`, safe for logs.
    public var description: String {
        guard let password, !password.isEmpty else { return string }
        return string.replacingOccurrences(of: ":\(password)@", with: ":***@")
    }
}

/// Objects shared by the backends of one process, such as one SQLite connection pool serving the
/// queue, the state store and the payload store of the same file.
public actor SharedResources {
    private var resources: [String: any Sendable] = [:]

    /// Creates an empty set.
    public init() {}

    /// Returns the resource under `key`, making it on first use.
    ///
    /// - Throws: whatever `make` throws, or ``GridError/Code/internalError`` if the key holds another type.
    public func resource<Resource: Sendable>(_ key: String, make: @Sendable () async throws -> Resource) async throws -> Resource {
        if let existing = resources[key] {
            guard let typed = existing as? Resource else {
                throw GridError(.internalError, "shared resource '\(key)' is a \(type(of: existing)), not a \(Resource.self)")
            }
            return typed
        }
        let made = try await make()
        if let raced = resources[key] as? Resource { return raced }
        resources[key] = made
        return made
    }
}

/// What a plugin gets to build a backend with.
public struct BackendContext: Sendable {
    /// The clock the backend should use for leases and timestamps.
    public var clock: any GridClock
    /// The logger for the backend.
    public var logger: Logger
    /// Objects shared between the backends of this process.
    public var resources: SharedResources

    /// Creates a context.
    public init(clock: any GridClock = SystemClock(), logger: Logger = Logger(label: "htc.backend"), resources: SharedResources = SharedResources()) {
        self.clock = clock
        self.logger = logger
        self.resources = resources
    }
}

/// A backend plugin: builds queues, state stores and payload stores for its URL schemes.
///
/// A plugin implements the makers for the components it offers; the defaults throw
/// ``GridError/Code/invalidArgument`` saying the scheme does not offer that component. Executables list
/// their plugins in one place (`Sources/HTCCore/InstalledPlugins.swift`); see docs/plugins.md.
public protocol GridBackendPlugin: Sendable {
    /// The URL schemes this plugin serves, lower-case (`sqlite`, `file`, …).
    var schemes: [String] { get }

    /// Builds a task queue.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a bad URL; ``GridError/Code/unavailable``.
    func makeQueue(_ url: BackendURL, context: BackendContext) async throws -> any TaskQueue

    /// Builds a state store.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a bad URL; ``GridError/Code/unavailable``.
    func makeStateStore(_ url: BackendURL, context: BackendContext) async throws -> any StateStore

    /// Builds a payload store.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a bad URL; ``GridError/Code/unavailable``.
    func makePayloadStore(_ url: BackendURL, context: BackendContext) async throws -> any PayloadStore
}

extension GridBackendPlugin {
    public func makeQueue(_ url: BackendURL, context: BackendContext) async throws -> any TaskQueue {
        throw GridError.invalidArgument("'\(url.scheme)://' backends provide no task queue; choose another --queue URL")
    }

    public func makeStateStore(_ url: BackendURL, context: BackendContext) async throws -> any StateStore {
        throw GridError.invalidArgument("'\(url.scheme)://' backends provide no state store; choose another --state URL")
    }

    public func makePayloadStore(_ url: BackendURL, context: BackendContext) async throws -> any PayloadStore {
        throw GridError.invalidArgument("'\(url.scheme)://' backends provide no payload store; choose another --payload URL")
    }
}

extension BackendURL {
    /// The `poll_interval` option (seconds, above 0 and at most 3600) of backends that announce new
    /// messages and completions: how often a waiting lease or completion wait looks when no
    /// notification comes. `fallback` when the URL does not say.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a value that is not such a number.
    public func pollInterval(default fallback: Duration) throws -> Duration {
        guard let value = query["poll_interval"] else { return fallback }
        guard let seconds = Double(value), seconds > 0, seconds <= 3_600 else {
            throw GridError.invalidArgument("poll_interval=\(value) in \(self) is not a number of seconds from 0 to 3600", backend: scheme)
        }
        return Duration(timeInterval: seconds)
    }
}
