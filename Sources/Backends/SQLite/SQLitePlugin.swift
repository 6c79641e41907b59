import Foundation
import GridKernel

/// The `sqlite://` scheme (queue, state and payloads in one SQLite file) and the `file://` scheme
/// (payloads as files in a directory).
///
/// `sqlite:///var/lib/htc/grid.db` names an absolute path, `sqlite://grid.db` a path relative to the
/// working directory. Options: `?busy_timeout=SECONDS` (default 10), `?max_payload_bytes=N` (default
/// 64 MiB), `?poll_interval=SECONDS` (how often a waiting lease or completion wait looks when no
/// wake-up comes; default 0.25). Every component of one file in one process shares a single connection pool.
public struct SQLitePlugin: GridBackendPlugin {
    /// Creates the plugin.
    public init() {}

    public var schemes: [String] { ["sqlite", "file"] }

    /// The file or directory path a URL names.
    static func path(of url: BackendURL) throws -> String {
        let path = url.host.isEmpty ? url.path : url.host + url.path
        guard !path.isEmpty, path != "/" else {
            throw GridError.invalidArgument("\(url) names no path; write e.g. \(url.scheme):///var/lib/htc/grid.db")
        }
        return path
    }

    private func database(_ url: BackendURL, context: BackendContext) async throws -> SQLiteDatabase {
        guard url.scheme == "sqlite" else {
            throw GridError.invalidArgument("'file://' holds payloads only; use sqlite:///path/grid.db for the queue and state")
        }
        let path = try Self.path(of: url)
        var busyTimeout = Duration.seconds(10)
        if let text = url.query["busy_timeout"] {
            guard let seconds = Double(text), seconds >= 0 else {
                throw GridError.invalidArgument("busy_timeout=\(text) in \(url) is not a number of seconds")
            }
            busyTimeout = Duration(timeInterval: seconds)
        }
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        let timeout = busyTimeout
        let clock = context.clock
        let logger = context.logger
        return try await context.resources.resource("sqlite:" + absolute) {
            try await SQLiteDatabase.open(path: absolute, clock: clock, busyTimeout: timeout, logger: logger)
        }
    }

    private func maxPayloadBytes(_ url: BackendURL) throws -> Int? {
        guard let text = url.query["max_payload_bytes"] else { return 64 << 20 }
        guard let value = Int(text), value > 0 else {
            throw GridError.invalidArgument("max_payload_bytes=\(text) in \(url) is not a positive number of bytes")
        }
        return value
    }

    public func makeQueue(_ url: BackendURL, context: BackendContext) async throws -> any TaskQueue {
        SQLiteTaskQueue(database: try await database(url, context: context), pollInterval: try url.pollInterval(default: .milliseconds(250)))
    }

    public func makeStateStore(_ url: BackendURL, context: BackendContext) async throws -> any StateStore {
        SQLiteStateStore(database: try await database(url, context: context), completionPollInterval: try url.pollInterval(default: .milliseconds(250)))
    }

    public func makePayloadStore(_ url: BackendURL, context: BackendContext) async throws -> any PayloadStore {
        if url.scheme == "file" {
            return LocalDiskPayloadStore(directory: try Self.path(of: url), maxPayloadBytes: try maxPayloadBytes(url))
        }
        return SQLitePayloadStore(database: try await database(url, context: context), maxPayloadBytes: try maxPayloadBytes(url))
    }
}
