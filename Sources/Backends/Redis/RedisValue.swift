import GridKernel

/// One reply from Redis, copied out of hiredis' reply tree.
///
/// Errors are values, not thrown, so that one failed command of a pipeline (e.g. `NOSCRIPT`) does not
/// hide the replies of the others; ``RedisValue/checked()`` turns an error reply into a `GridError`.
enum RedisValue: Sendable, Equatable {
    /// A bulk string.
    case bytes([UInt8])
    /// A status reply (`+OK`).
    case status(String)
    /// An integer reply.
    case integer(Int)
    /// The nil reply (a missing key, a Lua `false`).
    case null
    /// A multi-bulk reply.
    case array([RedisValue])
    /// An error reply (`-ERR …`).
    case error(String)

    /// The value, or a `GridError` if it is an error reply (see ``RedisValue/gridError(_:context:)``).
    func checked() throws -> RedisValue {
        if case .error(let message) = self {
            throw Self.gridError(message, context: "Redis answered an error")
        }
        return self
    }

    /// The `GridError` for an error reply, by its error code (the reply's first word):
    ///
    /// | reply | code | why |
    /// |---|---|---|
    /// | `NOAUTH`, `WRONGPASS`, `NOPERM` | `unauthorized` | fix the URL's credentials or the ACL; retrying cannot help |
    /// | `LOADING`, `BUSY`, `MASTERDOWN`, `READONLY`, `TRYAGAIN`, `CLUSTERDOWN`, `OOM`, `MISCONF`, `ERR max number of clients` | `unavailable` | the server is temporarily unable; retry later |
    /// | `WRONGTYPE` | `conflict` | another program uses keys under this grid's prefix; pick another `prefix` |
    /// | anything else (`ERR`, script errors) | `internalError` | a bug: the grid sent something Redis rejects |
    static func gridError(_ message: String, context: String) -> GridError {
        let word = message.prefix { $0 != " " }
        let code: GridError.Code
        switch word {
        case "NOAUTH", "WRONGPASS", "NOPERM":
            code = .unauthorized
        case "LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "OOM", "MISCONF":
            code = .unavailable
        case "WRONGTYPE":
            return GridError(
                .conflict, "\(context): \(message) (another program uses keys under this grid's prefix; set the prefix option)",
                backend: "redis"
            )
        default:
            code = message.hasPrefix("ERR max number of clients") ? .unavailable : .internalError
        }
        return GridError(code, "\(context): \(message)", backend: "redis")
    }

    /// The bytes of a bulk or status reply; `nil` for the nil reply.
    var bytes: [UInt8]? {
        switch self {
        case .bytes(let bytes): bytes
        case .status(let text): Array(text.utf8)
        case .integer(let value): Array(String(value).utf8)
        default: nil
        }
    }

    /// The text of a bulk, status or integer reply.
    var string: String? { bytes.map { String(decoding: $0, as: UTF8.self) } }

    /// The integer of an integer reply, or of a bulk string holding one.
    var int: Int? {
        switch self {
        case .integer(let value): value
        case .bytes, .status: string.flatMap { Int($0) }
        default: nil
        }
    }

    /// The elements of an array reply (empty for anything else).
    var elements: [RedisValue] {
        if case .array(let items) = self { return items }
        return []
    }

    /// Whether this is the nil reply.
    var isNull: Bool { self == .null }
}

/// A command to send: its arguments as bytes.
struct RedisCommand: Sendable {
    /// The arguments, the command name first.
    var arguments: [[UInt8]]

    /// A command from text arguments.
    init(_ arguments: String...) { self.arguments = arguments.map { Array($0.utf8) } }

    /// A command from byte arguments.
    init(bytes arguments: [[UInt8]]) { self.arguments = arguments }
}
