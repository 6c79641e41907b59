/// The one error type of HTC Grid.
///
/// Every backend and every part of the engine throws `GridError`, so callers match on ``Code``
/// rather than on backend-specific errors. The message says what was wrong and what to do.
public struct GridError: Error, CustomStringConvertible, Sendable {
    /// What went wrong, independent of the backend.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case notFound
            case conflict
            case leaseLost
            case unavailable
            case invalidArgument
            case payloadTooLarge
            case unauthorized
            case timeout
            case internalError
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The session, task or payload does not exist.
        public static var notFound: Code { Code(.notFound) }
        /// The object exists but is not in the state the operation requires.
        public static var conflict: Code { Code(.conflict) }
        /// The caller no longer owns the task: its lease expired or the task was cancelled.
        public static var leaseLost: Code { Code(.leaseLost) }
        /// The backend cannot be reached or refused service; retrying later may succeed.
        public static var unavailable: Code { Code(.unavailable) }
        /// The request is malformed; the message names the field.
        public static var invalidArgument: Code { Code(.invalidArgument) }
        /// A payload is larger than the configured limit.
        public static var payloadTooLarge: Code { Code(.payloadTooLarge) }
        /// The caller is not authenticated or not allowed to see the object.
        public static var unauthorized: Code { Code(.unauthorized) }
        /// An operation or a task ran longer than allowed.
        public static var timeout: Code { Code(.timeout) }
        /// A bug or an unexpected backend answer.
        public static var internalError: Code { Code(.internalError) }

        public var description: String { base.rawValue }
    }

    /// What went wrong.
    public var code: Code
    /// The backend that raised the error (`sqlite`, `memory`, …), if any.
    public var backend: String?
    /// A message for people: what was wrong and what to do.
    public var message: String
    /// The error this one wraps, if any.
    public var underlying: (any Error)?

    /// Creates an error.
    public init(_ code: Code, _ message: String, backend: String? = nil, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.backend = backend
        self.underlying = underlying
    }

    public var description: String {
        var text = backend.map { "\($0): " } ?? ""
        text += message
        if let underlying { text += " (\(underlying))" }
        return text
    }
}

extension GridError {
    /// Shorthand for a ``Code/notFound`` error.
    public static func notFound(_ message: String, backend: String? = nil) -> GridError {
        GridError(.notFound, message, backend: backend)
    }

    /// Shorthand for an ``Code/invalidArgument`` error.
    public static func invalidArgument(_ message: String, backend: String? = nil) -> GridError {
        GridError(.invalidArgument, message, backend: backend)
    }

    /// Shorthand for an ``Code/unavailable`` error.
    public static func unavailable(_ message: String, backend: String? = nil, underlying: (any Error)? = nil) -> GridError {
        GridError(.unavailable, message, backend: backend, underlying: underlying)
    }
}
