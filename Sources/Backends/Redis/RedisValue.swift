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

    /// The value, or a `GridError` if it is an error reply.
    func checked(backend: String = "redis") throws -> RedisValue {
        if case .error(let message) = self {
            throw GridError(.unavailable, "Redis answered an error: \(message)", backend: backend)
        }
        return self
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
