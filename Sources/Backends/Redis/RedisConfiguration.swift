import Foundation
import GridKernel

/// Where and how to reach Redis, parsed from `redis://[user:password@]host:port/db?prefix=…` or
/// `rediss://…` (TLS).
///
/// Query options: `prefix` (key prefix, default `htc`; several grids share one Redis with different
/// prefixes), `pool` (connections, default 4), `max_payload_bytes` (default 64 MiB), `retry_window`
/// (seconds to retry while Redis is unreachable, default 30), `retention` (seconds to keep a completed
/// session's state keys; off by default), `poll_interval` (seconds between the looks of a waiting
/// lease or completion wait when no notification arrives, default 0.25; notifications wake them at
/// once), `ca_file` (PEM
/// file of trusted CAs for `rediss://`), `tls_verify=false` (turns certificate verification off; for
/// tests only).
public struct RedisConfiguration: Sendable, Hashable {
    /// The server's host name or address.
    public var host: String
    /// The server's port.
    public var port: Int
    /// The database number (`SELECT`).
    public var database: Int
    /// The ACL user, if any.
    public var user: String?
    /// The password, if any. Never logged.
    public var password: String?
    /// Whether to speak TLS (`rediss://`).
    public var tls: Bool
    /// A PEM file of trusted certificate authorities; the system's when `nil`.
    public var caFile: String?
    /// Whether to verify the server's certificate and host name (on by default).
    public var verifyCertificate: Bool
    /// The prefix of every key; keeps grids sharing one Redis apart.
    public var prefix: String
    /// How often a waiting lease or completion wait looks without being notified (the fallback of the
    /// pub/sub wake-ups). Default 250 ms.
    public var pollInterval: Duration = .milliseconds(250)
    /// How many connections the pool keeps.
    public var poolSize: Int
    /// The largest payload value accepted.
    public var maxPayloadBytes: Int
    /// How long a command that certainly did not run (Redis unreachable or loading) is retried,
    /// with backoff, before ``GridError/Code/unavailable`` is thrown (`?retry_window=SECONDS`, default 30).
    public var retryWindow: Duration
    /// How long a session's state keys are kept once every task of it is terminal; `nil` (the
    /// default) keeps them until the session is deleted (`?retention=SECONDS`).
    public var retention: Duration?

    /// Creates a configuration with the defaults of a local Redis.
    public init(
        host: String = "127.0.0.1", port: Int = 6379, database: Int = 0, user: String? = nil, password: String? = nil,
        tls: Bool = false, caFile: String? = nil, verifyCertificate: Bool = true, prefix: String = "htc", poolSize: Int = 4,
        maxPayloadBytes: Int = 64 << 20, retryWindow: Duration = .seconds(30), retention: Duration? = nil
    ) {
        self.host = host
        self.port = port
        self.database = database
        self.user = user
        self.password = password
        self.tls = tls
        self.caFile = caFile
        self.verifyCertificate = verifyCertificate
        self.prefix = prefix
        self.poolSize = poolSize
        self.maxPayloadBytes = maxPayloadBytes
        self.retryWindow = retryWindow
        self.retention = retention
    }

    /// Parses a `redis://` or `rediss://` URL.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` naming the part of the URL that is wrong.
    public init(_ url: BackendURL) throws {
        guard url.scheme == "redis" || url.scheme == "rediss" else {
            throw GridError.invalidArgument("\(url) is not a redis:// or rediss:// URL", backend: "redis")
        }
        self.init()
        tls = url.scheme == "rediss"
        if !url.host.isEmpty { host = url.host }
        port = url.port ?? 6379
        let path = url.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        if !path.isEmpty {
            guard let db = Int(path), db >= 0 else {
                throw GridError.invalidArgument("'\(path)' in \(url) is not a database number; write e.g. redis://host:6379/0", backend: "redis")
            }
            database = db
        }
        user = url.user.flatMap { $0.isEmpty ? nil : $0.removingPercentEncoding ?? $0 }
        password = url.password.flatMap { $0.isEmpty ? nil : $0.removingPercentEncoding ?? $0 }
        if let value = url.query["prefix"] {
            guard !value.contains("{"), !value.contains("}") else {
                throw GridError.invalidArgument("prefix=\(value) in \(url) must not contain '{' or '}' (they mark hash tags)", backend: "redis")
            }
            prefix = value
        }
        if let value = url.query["pool"] {
            guard let size = Int(value), (1...64).contains(size) else {
                throw GridError.invalidArgument("pool=\(value) in \(url) must be a number of connections from 1 to 64", backend: "redis")
            }
            poolSize = size
        }
        if let value = url.query["max_payload_bytes"] {
            guard let bytes = Int(value), bytes > 0 else {
                throw GridError.invalidArgument("max_payload_bytes=\(value) in \(url) is not a positive number of bytes", backend: "redis")
            }
            maxPayloadBytes = bytes
        }
        if let value = url.query["retry_window"] {
            guard let seconds = Double(value), seconds >= 0 else {
                throw GridError.invalidArgument("retry_window=\(value) in \(url) is not a number of seconds", backend: "redis")
            }
            retryWindow = Duration(timeInterval: seconds)
        }
        if let value = url.query["retention"] {
            guard let seconds = Int(value), seconds > 0 else {
                throw GridError.invalidArgument(
                    "retention=\(value) in \(url) is not a positive whole number of seconds (leave it out to keep sessions)",
                    backend: "redis"
                )
            }
            retention = .seconds(seconds)
        }
        pollInterval = try url.pollInterval(default: pollInterval)
        caFile = url.query["ca_file"]
        if let value = url.query["tls_verify"] {
            guard let flag = Bool(value) else {
                throw GridError.invalidArgument("tls_verify=\(value) in \(url) must be true or false", backend: "redis")
            }
            verifyCertificate = flag
        }
    }

    /// `host:port/db`, safe for logs (no password).
    var endpoint: String { "\(tls ? "rediss" : "redis")://\(host):\(port)/\(database)" }
}
