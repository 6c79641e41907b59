import Foundation

/// A session: a named group of tasks submitted together.
///
/// Session ids never contain `_`, because a task id is `<session>_<index>` (as in HTC-Grid) and the
/// session is recovered by splitting at the last `_`.
public struct SessionID: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// The id as text.
    public let rawValue: String

    /// Validates and wraps a session id.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` if the id is empty, longer than 128 characters or
    ///   contains anything but letters, digits, `-`, `.` and `:`.
    public init(_ rawValue: String) throws {
        guard !rawValue.isEmpty, rawValue.utf8.count <= 128 else {
            throw GridError.invalidArgument("session id must be 1 to 128 characters, got \(rawValue.utf8.count)")
        }
        guard rawValue.utf8.allSatisfy(Self.isAllowed) else {
            throw GridError.invalidArgument(
                "session id '\(rawValue)' may contain only letters, digits, '-', '.' and ':' (no '_': task ids are <session>_<index>)"
            )
        }
        self.rawValue = rawValue
    }

    private init(unchecked rawValue: String) { self.rawValue = rawValue }

    /// A new random session id (a lower-case UUID).
    public static func random() -> SessionID {
        SessionID(unchecked: UUID().uuidString.lowercased())
    }

    private static func isAllowed(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: ":"):
            return true
        default:
            return false
        }
    }

    public var description: String { rawValue }
    public static func < (lhs: SessionID, rhs: SessionID) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws {
        try self.init(decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// A task: `<session>_<index>`, with a 0-based index in submission order.
public struct TaskID: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// The session the task belongs to.
    public let session: SessionID
    /// The 0-based position of the task in its session's submissions.
    public let index: Int

    /// Creates a task id from its parts.
    public init(session: SessionID, index: Int) {
        precondition(index >= 0, "task index must not be negative")
        self.session = session
        self.index = index
    }

    /// Parses `<session>_<index>`.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` if the text is not of that form.
    public init(_ text: String) throws {
        guard let underscore = text.lastIndex(of: "_"),
            let index = Int(text[text.index(after: underscore)...]), index >= 0
        else {
            throw GridError.invalidArgument("task id '\(text)' is not of the form <session>_<index>")
        }
        self.init(session: try SessionID(String(text[..<underscore])), index: index)
    }

    /// The id as text, `<session>_<index>`.
    public var rawValue: String { "\(session.rawValue)_\(index)" }
    public var description: String { rawValue }

    public static func < (lhs: TaskID, rhs: TaskID) -> Bool {
        (lhs.session, lhs.index) < (rhs.session, rhs.index)
    }

    public init(from decoder: any Decoder) throws {
        try self.init(decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// The identity of an agent that owns tasks while it runs them (HTC-Grid's `task_owner`).
public struct AgentID: Hashable, Sendable, CustomStringConvertible, Codable {
    /// The id as text; on Kubernetes the pod name.
    public let rawValue: String

    /// Wraps an agent id.
    public init(_ rawValue: String) { self.rawValue = rawValue }

    /// A fresh id made of the host name, the process id and a random suffix.
    public static func unique(prefix: String = ProcessInfo.processInfo.hostName) -> AgentID {
        let suffix = UUID().uuidString.prefix(8).lowercased()
        return AgentID("\(prefix)-\(ProcessInfo.processInfo.processIdentifier)-\(suffix)")
    }

    public var description: String { rawValue }
}
