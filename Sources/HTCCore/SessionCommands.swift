import ArgumentParser
import Foundation
import GridKernel
import Logging

/// Shared by the commands that talk to a grid as a client.
struct ClientOptions: ParsableArguments {
    @OptionGroup var grid: GridOptions
    @Option(help: "Talk to htc-server at this URL instead of the backends, e.g. http://grid:8080 (env HTC_SERVER).")
    var server: String?
    @Option(help: "API key for --server; prefer the variable, which ps does not show (env HTC_API_KEY).")
    var apiKey: String?
    @Option(
        help: ArgumentHelp(
            "Keep retrying a request that fails for want of a server or backend (a restart) for this many seconds; 0 gives up at once (env HTC_RETRY_TIMEOUT, default 60).",
            valueName: "seconds"))
    var retryTimeout: Double?
    @Flag(help: "Print JSON instead of tables.") var json = false

    func makeClient(_ environment: Environment = Environment()) async throws -> any GridService {
        LoggingSetup.bootstrap(level: try grid.level(environment, default: .warning))
        if let remote = try remoteClient(environment) { return remote }
        let logger = Logger(label: "htc.client")
        var configuration = ClientConfiguration()
        configuration.retryTimeout = try retryDuration(environment)
        return GridClient(backends: try await grid.makeBackends(logger: logger), configuration: configuration, logger: logger)
    }

    /// The client of `--server` (or `HTC_SERVER`), or `nil` when the backends are used directly.
    func remoteClient(_ environment: Environment) throws -> RemoteGridClient? {
        guard let server = server ?? environment.string("HTC_SERVER") else { return nil }
        guard let url = URL(string: server), url.scheme == "http" || url.scheme == "https", url.host != nil else {
            throw ValidationError("--server \(server) is not an http:// or https:// URL")
        }
        var client = RemoteGridClient(baseURL: url, apiKey: apiKey ?? environment.string("HTC_API_KEY"))
        client.retryTimeout = try retryDuration(environment)
        return client
    }

    /// `--retry-timeout` (or `HTC_RETRY_TIMEOUT`): one setting for both clients, the remote one's requests
    /// and the direct one's ``GridKernel/ClientConfiguration/retryTimeout``.
    func retryDuration(_ environment: Environment) throws -> Duration {
        let seconds = try retryTimeout ?? environment.seconds("HTC_RETRY_TIMEOUT") ?? 60
        guard seconds >= 0, seconds.isFinite else {
            throw ValidationError("--retry-timeout \(seconds) must be a number of seconds, 0 or more")
        }
        return Duration(timeInterval: seconds)
    }
}

func printJSON<Value: Encodable>(_ value: Value) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    encoder.dateEncodingStrategy = .iso8601
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

func parseSession(_ text: String) throws -> SessionID {
    do { return try SessionID(text) } catch let error as GridError { throw ValidationError(error.message) }
}

/// `htc submit FILE.jsonl`: one task per line; the line's bytes are the task's input.
struct SubmitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Submit tasks from a file with one input per line (JSON Lines); '-' reads stdin."
    )

    @OptionGroup var options: ClientOptions
    @Argument(help: "The file of inputs, one per line.") var file: String
    @Option(help: "Add to this session instead of creating one.") var session: String?
    @Option(help: "Priority of a new session; higher runs first.") var priority = 0
    @Option(help: "Retries before a task fails for good.") var maxRetries = SessionOptions.defaultMaxRetries
    @Option(help: "Per-task time limit in seconds.") var timeout: Double?
    @Option(
        name: .customLong("idempotency-key"),
        help: ArgumentHelp(
            "Make the submission repeatable: run the same command again with the same key (and --session) after a crash, and no task is created twice.",
            valueName: "key"))
    var idempotencyKey: String?

    func run() async throws {
        let data: Data
        if file == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            guard let contents = FileManager.default.contents(atPath: file) else {
                throw ValidationError("cannot read \(file)")
            }
            data = contents
        }
        let inputs = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true).map { Array($0) }
        let client = try await options.makeClient()
        let sessionID: SessionID
        if let session {
            sessionID = try parseSession(session)
        } else {
            let options = SessionOptions(priority: priority, maxRetries: maxRetries, taskTimeout: timeout.map { Duration(timeInterval: $0) })
            sessionID = try await client.createSession(options, id: nil).id
        }
        let key: SubmissionKey?
        do {
            key = try idempotencyKey.map(SubmissionKey.init)
        } catch let error as GridError {
            throw ValidationError(error.message)
        }
        if key != nil && session == nil {
            throw ValidationError("--idempotency-key needs --session: a submission is repeatable within one session")
        }
        let ids = try await client.submit(sessionID, inputs: inputs, key: key)
        if options.json {
            try printJSON(["session_id": sessionID.rawValue, "task_ids": ids.count.description])
        } else {
            print("session \(sessionID): submitted \(ids.count.grouped) tasks (\(ids.first?.rawValue ?? "-") … \(ids.last?.rawValue ?? "-"))")
        }
    }
}

/// `htc status SESSION`: counts per state.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show a session's tasks per state.")

    @OptionGroup var options: ClientOptions
    @Argument(help: "The session id.") var session: String

    func run() async throws {
        let client = try await options.makeClient()
        let id = try parseSession(session)
        let record = try await client.session(id)
        let counts = try await client.counts(id)
        if options.json {
            var object: [String: Int] = ["tasks": record.taskCount]
            for state in TaskState.allCases { object[state.rawValue] = counts[state] }
            try printJSON(object)
        } else {
            print(StatusTable.render(session: record, counts: counts))
        }
    }
}

/// Renders a session's counts as a table.
enum StatusTable {
    static func render(session: SessionRecord, counts: StateCounts) -> String {
        var lines = ["session \(session.id)  priority \(session.options.priority)  max retries \(session.options.maxRetries)" + (session.cancelled ? "  (cancelled)" : "")]
        lines.append("state        tasks")
        for state in TaskState.allCases {
            lines.append(state.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0) + " " + counts[state].grouped)
        }
        lines.append("total        " + session.taskCount.grouped)
        return lines.joined(separator: "\n")
    }
}

/// `htc wait SESSION`: waits with a progress bar until every task is terminal.
struct WaitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "wait", abstract: "Wait until every task of a session is terminal.")

    @OptionGroup var options: ClientOptions
    @Argument(help: "The session id.") var session: String
    @Option(help: "Give up after this many seconds.") var timeout: Double?

    func run() async throws {
        let client = try await options.makeClient()
        let id = try parseSession(session)
        let total = try await client.session(id).taskCount
        let progress = options.json ? nil : ProgressReporter()
        let counts = try await client.wait(for: id, expected: total, pollInterval: .milliseconds(200), timeout: timeout.map { Duration(timeInterval: $0) }) {
            progress?.update($0, total: total)
        }
        progress?.finish()
        if options.json {
            var object: [String: Int] = [:]
            for state in TaskState.allCases { object[state.rawValue] = counts[state] }
            try printJSON(object)
        }
        if counts[.failed] > 0 || counts[.cancelled] > 0 { throw ExitCode(2) }
    }
}

/// `htc results SESSION`: one page of results.
struct ResultsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "results",
        abstract: "List a session's tasks in one state with their outputs (JSON Lines with --json).",
        discussion: "With --follow, prints every task of the session as it becomes terminal (finished, failed or cancelled), in completion order, and ends once the session is complete; --after is then a completion number (the 'sequence' of the last line printed), to resume without skipping or repeating a task. Exits with 2 if a task failed or was cancelled."
    )

    struct Line: Encodable {
        var task_id: String
        var state: String
        var retries: Int
        var output: String?
        var output_base64: String?
        var error: String?
        var sequence: Int?
    }

    @OptionGroup var options: ClientOptions
    @Argument(help: "The session id.") var session: String
    @Option(help: "Which tasks: finished, failed, cancelled, pending or processing.") var taskState = "finished"
    @Option(help: "Start after this cursor (printed at the end of the previous page).") var after: String?
    @Option(help: "Tasks per page.") var limit = 1000
    @Flag(help: "Follow the cursor to the end instead of stopping after one page.") var all = false
    @Flag(help: "Print tasks as they become terminal, in completion order, until the session is complete.") var follow = false

    func run() async throws {
        if follow { return try await runFollowing() }
        guard let taskState = TaskState(rawValue: self.taskState) else {
            throw ValidationError("--task-state must be one of \(TaskState.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let client = try await options.makeClient()
        let id = try parseSession(session)
        var cursor = after
        repeat {
            let page = try await client.results(id, state: taskState, after: cursor, limit: limit)
            for result in page.items { try show(result) }
            cursor = page.next
            if !all, let next = page.next, !options.json { print("next page: --after \(next)") }
        } while all && cursor != nil
    }

    /// `--follow`: the completion stream, to the end of the session.
    private func runFollowing() async throws {
        guard all == false else { throw ValidationError("--follow reads to the end already; drop --all") }
        var after = 0
        if let text = self.after {
            guard let number = Int(text), number >= 0 else {
                throw ValidationError("--after \(text): with --follow, pass a completion number (the 'sequence' of the last line printed)")
            }
            after = number
        }
        let client = try await options.makeClient()
        var unsuccessful = 0
        for try await result in client.follow(try parseSession(session), after: after) {
            try show(result)
            if result.record.state != .finished { unsuccessful += 1 }
        }
        if unsuccessful > 0 { throw ExitCode(2) }
    }

    private func show(_ result: TaskResult) throws {
        let text = result.output.flatMap { String(validating: $0, as: UTF8.self) }
        let line = Line(
            task_id: result.record.id.rawValue,
            state: result.record.state.rawValue,
            retries: result.record.retries,
            output: text,
            output_base64: text == nil ? result.output.map { Data($0).base64EncodedString() } : nil,
            error: result.record.lastError,
            sequence: result.record.completionSequence
        )
        if options.json {
            try printJSON(line)
        } else {
            let shown = line.output ?? line.output_base64.map { "base64:" + $0 } ?? line.error ?? ""
            print("\(line.task_id)\t\(line.state)\t\(String(shown.prefix(100)))")
        }
    }
}

/// `htc cancel SESSION`: cancels a session.
struct CancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Cancel a session's pending and running tasks.")

    @OptionGroup var options: ClientOptions
    @Argument(help: "The session id.") var session: String

    func run() async throws {
        let client = try await options.makeClient()
        let counts = try await client.cancel(try parseSession(session))
        if options.json {
            try printJSON([
                "cancelled_pending": counts.pending, "cancelled_processing": counts.processing, "total_cancelled_tasks": counts.total,
            ])
        } else {
            print("cancelled \(counts.total.grouped) tasks (\(counts.pending.grouped) pending, \(counts.processing.grouped) running)")
        }
    }
}

/// `htc delete SESSION`: deletes a session with its tasks and payloads.
struct DeleteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a session: cancel it, then remove its tasks and their inputs and outputs."
    )

    struct Deleted: Encodable {
        var session_id: String
        var deleted_tasks: Int
    }

    @OptionGroup var options: ClientOptions
    @Argument(help: "The session id.") var session: String

    func run() async throws {
        let client = try await options.makeClient()
        let id = try parseSession(session)
        let removed = try await client.deleteSession(id)
        if options.json {
            try printJSON(Deleted(session_id: id.rawValue, deleted_tasks: removed))
        } else {
            print("deleted session \(id) and its \(removed.grouped) tasks")
        }
    }
}

/// `htc sessions`: lists sessions (through `--server`, only the caller's).
struct SessionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sessions", abstract: "List sessions in id order.")

    struct Line: Encodable {
        var session_id: String
        var priority: Int
        var tasks: Int
        var cancelled: Bool
        var created_at: Date
    }

    @OptionGroup var options: ClientOptions
    @Option(help: "Start after this cursor (printed at the end of the previous page).") var after: String?
    @Option(help: "Sessions per page.") var limit = 100
    @Flag(help: "Follow the cursor to the end instead of stopping after one page.") var all = false

    func run() async throws {
        let client = try await options.makeClient()
        var cursor = after
        repeat {
            let page = try await client.sessions(after: cursor, limit: limit)
            for session in page.items {
                let line = Line(
                    session_id: session.id.rawValue, priority: session.options.priority, tasks: session.taskCount,
                    cancelled: session.cancelled, created_at: session.createdAt
                )
                if options.json {
                    try printJSON(line)
                } else {
                    print("\(line.session_id)\tpriority \(line.priority)\t\(line.tasks.grouped) tasks" + (line.cancelled ? "\tcancelled" : ""))
                }
            }
            cursor = page.next
            if !all, let next = page.next, !options.json { print("next page: --after \(next)") }
        } while all && cursor != nil
    }
}
