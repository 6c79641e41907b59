import Logging

/// What a handler knows about the task it runs.
public struct TaskContext: Sendable {
    /// The task.
    public var id: TaskID
    /// 1 for the first run, 2 for the first retry, …
    public var attempt: Int
    /// The per-task time limit of the session, if any; the agent enforces it.
    public var timeout: Duration?
    /// A logger with the task id as metadata.
    public var logger: Logger

    /// Creates a context.
    public init(id: TaskID, attempt: Int, timeout: Duration?, logger: Logger) {
        self.id = id
        self.attempt = attempt
        self.timeout = timeout
        self.logger = logger
    }
}

/// The work itself: turns a task's input bytes into its output bytes.
///
/// A handler that throws fails the task; the error's description is kept as the task's last error and
/// the task is retried per its session's policy (throw ``TaskHandlerError/permanent(_:)`` to fail it for
/// good). A handler must return promptly once its task is cancelled (Swift task cancellation): the agent
/// cancels it when the task is cancelled, its lease is lost or its time limit is reached.
public protocol TaskHandler: Sendable {
    /// Runs one task.
    ///
    /// - Throws: any error to fail the run; ``TaskHandlerError/permanent(_:)`` to fail it without retry.
    func run(input: [UInt8], context: TaskContext) async throws -> [UInt8]
}

/// Errors a handler can throw to control retries.
public enum TaskHandlerError: Error, CustomStringConvertible, Sendable {
    /// A failure that retrying will not fix; the task becomes `failed` at once.
    case permanent(String)

    public var description: String {
        switch self {
        case .permanent(let message): message
        }
    }
}

/// The built-in handler: the output is the input. Used by `htc bench` and `htc demo`.
public struct EchoHandler: TaskHandler {
    /// Creates the echo handler.
    public init() {}

    public func run(input: [UInt8], context: TaskContext) async throws -> [UInt8] { input }
}
