import Foundation
import GridKernel

/// Where and how to reach PostgreSQL, parsed from a `postgres://` (or `postgresql://`) URL.
///
/// `postgres://[user[:password]@]host[:port][/database][?schema=htc&pool=8&sslmode=prefer&max_payload_bytes=N&poll_interval=0.25]`.
/// The user defaults to `$USER` (then `postgres`), the port to 5432, the database to the user's name.
public struct PostgresConfiguration: Sendable, Hashable {
    /// How to use TLS (`sslmode`).
    public enum TLSMode: String, Sendable, Hashable {
        /// Plain TCP.
        case disable
        /// TLS when the server offers it (the default).
        case prefer
        /// TLS, with the server's certificate verified against the system's trust roots.
        case require
    }

    /// The server's host name or address.
    public var host: String
    /// The server's port.
    public var port: Int
    /// The role to connect as.
    public var user: String
    /// The password, if any. Never logged.
    public var password: String?
    /// The database; `nil` for the user's name.
    public var database: String?
    /// The PostgreSQL schema (namespace) holding the grid's tables, created on first use. Grids sharing
    /// a database use different schemas.
    public var schema: String
    /// Connections per process, shared by the queue, the state and the payload store.
    public var poolSize: Int
    /// The TLS mode.
    public var tls: TLSMode
    /// The largest payload accepted by the payload store.
    public var maxPayloadBytes: Int
    /// How often a waiting lease or completion waiter looks again while notifications (`LISTEN`) cannot
    /// reach it; see ``PostgresDatabase/pollInterval``.
    public var pollInterval: Duration

    /// Creates a configuration with the defaults for everything but the host.
    public init(
        host: String = "127.0.0.1", port: Int = 5432, user: String = PostgresConfiguration.defaultUser, password: String? = nil,
        database: String? = nil, schema: String = "htc", poolSize: Int = 8, tls: TLSMode = .prefer,
        maxPayloadBytes: Int = 64 << 20, pollInterval: Duration = .milliseconds(250)
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.schema = schema
        self.poolSize = poolSize
        self.tls = tls
        self.maxPayloadBytes = maxPayloadBytes
        self.pollInterval = pollInterval
    }

    /// `$USER`, or `postgres` when it is unset: the role `psql` would use.
    public static var defaultUser: String {
        ProcessInfo.processInfo.environment["USER"].flatMap { $0.isEmpty ? nil : $0 } ?? "postgres"
    }

    /// Parses a `postgres://` or `postgresql://` URL.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` naming the part that is wrong.
    public init(_ url: BackendURL) throws {
        guard url.scheme == "postgres" || url.scheme == "postgresql" else {
            throw GridError.invalidArgument("\(url) is not a postgres:// URL", backend: PostgresDatabase.backendName)
        }
        guard !url.host.isEmpty else {
            throw GridError.invalidArgument(
                "\(url) names no host; write e.g. postgres://user@127.0.0.1:5432/grid", backend: PostgresDatabase.backendName)
        }
        self.init(host: url.host, port: url.port ?? 5432, user: url.user ?? Self.defaultUser, password: url.password)
        let path = url.path.hasPrefix("/") ? String(url.path.dropFirst()) : url.path
        database = path.isEmpty ? nil : path
        func option(_ name: String, _ parse: (String) -> Bool) throws {
            guard let text = url.query[name] else { return }
            guard parse(text) else {
                throw GridError.invalidArgument("\(name)=\(text) in \(url) is not valid", backend: PostgresDatabase.backendName)
            }
        }
        try option("schema") { text in
            guard Self.isIdentifier(text) else { return false }
            schema = text
            return true
        }
        try option("pool") { text in
            guard let value = Int(text), (1...1_000).contains(value) else { return false }
            poolSize = value
            return true
        }
        try option("sslmode") { text in
            guard let mode = TLSMode(rawValue: text) else { return false }
            tls = mode
            return true
        }
        try option("max_payload_bytes") { text in
            guard let value = Int(text), value > 0, value <= Self.byteaLimit else { return false }
            maxPayloadBytes = value
            return true
        }
        try option("poll_interval") { text in
            guard let seconds = Double(text), seconds > 0, seconds <= 60 else { return false }
            pollInterval = Duration(timeInterval: seconds)
            return true
        }
    }

    /// PostgreSQL's limit for one `bytea` value (1 GB).
    public static let byteaLimit = 1 << 30

    /// Whether `text` is a plain lower-case SQL identifier (a letter or `_`, then letters, digits and `_`,
    /// at most 63 bytes): schema names are written into SQL, so nothing else is accepted.
    static func isIdentifier(_ text: String) -> Bool {
        guard let first = text.utf8.first, text.utf8.count <= 63 else { return false }
        func letter(_ byte: UInt8) -> Bool { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || byte == UInt8(ascii: "_") }
        return letter(first) && text.utf8.allSatisfy { letter($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
    }
}
