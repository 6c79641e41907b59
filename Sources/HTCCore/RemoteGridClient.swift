import Foundation
import GridKernel
import Logging

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A client of `htc-server`'s API v1 (see openapi.yaml), for `htc --server URL`.
///
/// A server restart (a rolling update in Kubernetes) must not end a running `htc wait`: every request
/// that is safe to send again — reads, submissions (each request carries an idempotency key), session
/// creation — is repeated while it fails for want of a server (no connection, 502, 503, 504) for up to
/// ``retryTimeout``, as ``GridKernel/GridClient`` repeats backend steps for
/// ``GridKernel/ClientConfiguration/retryTimeout``. Cancel and delete are sent once.
public struct RemoteGridClient: GridService {
    /// The server, e.g. `http://grid.example:8080`.
    public let baseURL: URL
    private let apiKey: String?
    private let urlSession: URLSession
    private let logger: Logger
    /// Tasks per submission request; the server accepts up to 10,000.
    public var submitBatchSize = 10_000
    /// How long a request that failed for want of a server is sent again, with backoff from 100 ms
    /// doubling to 5 s; zero sends every request once. Default 60 s (`htc --retry-timeout`).
    public var retryTimeout: Duration = .seconds(60)
    /// How often a request being retried says so in the log (at warning level: on stderr).
    public var retryReportInterval: Duration = .seconds(10)

    /// Creates a client; `apiKey` goes in `x-api-key`.
    public init(baseURL: URL, apiKey: String?, urlSession: URLSession = .shared, logger: Logger = Logger(label: "htc.client")) {
        self.baseURL = baseURL
        self.apiKey = apiKey
        self.urlSession = urlSession
        self.logger = logger
    }

    /// Creates a session.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` when `id` is given (the server chooses ids)
    ///   or an option is out of range; what the server answers.
    public func createSession(_ options: SessionOptions, id: SessionID?) async throws -> SessionRecord {
        if let id { throw GridError.invalidArgument("the server chooses session ids; cannot create session \(id) remotely") }
        let body = CreateSessionBody(
            priority: options.priority,
            max_retries: options.maxRetries,
            task_timeout_seconds: options.taskTimeout?.timeInterval,
            labels: options.labels.isEmpty ? nil : options.labels
        )
        // Sent again after a lost answer, this may leave an empty session behind; it holds no task.
        return try await send("POST", "/v1/sessions", body: try JSONEncoder().encode(body), as: SessionBody.self).record()
    }

    /// Submits tasks in requests of ``submitBatchSize``, each with its own idempotency key (the
    /// submission's key and the request's number), so a request that failed for want of a server — a
    /// dropped connection, a restart, a 5xx — is sent again for up to ``retryTimeout`` and creates no
    /// task twice. Each request is accepted or refused whole; when a later request fails for good, the
    /// earlier ones stay submitted, and the same call with the same `key` resumes after them.
    ///
    /// - Throws: what the server answers.
    public func submit(_ session: SessionID, inputs: [[UInt8]], key: SubmissionKey?) async throws -> [TaskID] {
        let key = key ?? .random()
        var ids: [TaskID] = []
        ids.reserveCapacity(inputs.count)
        var start = 0
        var request = 0
        while start < inputs.count {
            let end = min(start + max(1, submitBatchSize), inputs.count)
            // Base64 needs no JSON escaping, so the body is assembled directly.
            var body = #"{"tasks":["#
            for index in start..<end {
                if index > start { body += "," }
                body += #"{"payload_base64":""# + Data(inputs[index]).base64EncodedString() + #""}"#
            }
            body += "]}"
            let requestKey = try SubmissionKey(String(key.rawValue.prefix(118)) + ".r\(request)")
            let answer = try await send(
                "POST", "/v1/sessions/\(session.rawValue)/tasks", body: Data(body.utf8), headers: ["Idempotency-Key": requestKey.rawValue],
                as: SubmitBody.self)
            ids += try answer.task_ids.map { try TaskID($0) }
            start = end
            request += 1
        }
        return ids
    }

    /// Sends a request again while it fails with ``GridKernel/GridError/Code/unavailable`` (no
    /// connection, 502, 503, 504), with exponential backoff from 100 ms to 5 s, for up to
    /// ``retryTimeout``; logs the first failure and then one line every ``retryReportInterval``.
    ///
    /// - Throws: the last error, with how long the server was tried, when the time is spent.
    private func retrying<T>(_ what: String, _ body: () async throws -> T) async throws -> T {
        let start = ContinuousClock.now
        let deadline = start + retryTimeout
        var backoff = Duration.milliseconds(100)
        var reported: ContinuousClock.Instant?
        var attempts = 0
        while true {
            do {
                let answer = try await body()
                if reported != nil {
                    logger.warning("htc-server answers again", metadata: ["server": "\(baseURL)", "after": "\(Self.seconds(ContinuousClock.now - start))"])
                }
                return answer
            } catch let error as GridError where error.code == .unavailable {
                attempts += 1
                let now = ContinuousClock.now
                guard now < deadline else {
                    // With no retries asked for, the error as it came.
                    guard retryTimeout > .zero else { throw error }
                    throw GridError(
                        .unavailable,
                        "htc-server at \(baseURL) did not answer \(what) for \(Self.seconds(now - start)) (\(attempts) attempts; --retry-timeout or HTC_RETRY_TIMEOUT allows \(Self.seconds(retryTimeout))): \(error.message)",
                        backend: "http", underlying: error
                    )
                }
                if reported.map({ now - $0 >= retryReportInterval }) ?? true {
                    reported = now
                    logger.warning(
                        "htc-server is not answering; retrying",
                        metadata: [
                            "server": "\(baseURL)", "request": "\(what)", "error": "\(error.message)",
                            "for": "\(Self.seconds(now - start))", "giving up in": "\(Self.seconds(deadline - now))",
                        ]
                    )
                }
                // The last attempt comes at the deadline, not a whole backoff before or after it.
                try await Task.sleep(for: min(backoff, deadline - now))
                backoff = min(backoff * 2, .seconds(5))
            }
        }
    }

    private static func seconds(_ duration: Duration) -> String {
        "\((duration.timeInterval * 10).rounded() / 10) s"
    }

    /// Reads a session.
    ///
    /// - Throws: what the server answers.
    public func session(_ id: SessionID) async throws -> SessionRecord {
        try await send("GET", "/v1/sessions/\(id.rawValue)", as: SessionBody.self).record()
    }

    /// Lists the caller's sessions.
    ///
    /// - Throws: what the server answers.
    public func sessions(after cursor: String?, limit: Int) async throws -> Page<SessionRecord> {
        var path = "/v1/sessions?limit=\(limit)"
        if let cursor { path += "&after=" + Self.escape(cursor) }
        let page = try await send("GET", path, as: PageBody<SessionBody>.self)
        return Page(items: try page.items.map { try $0.record() }, next: page.has_more ? page.next : nil)
    }

    /// Counts a session's tasks by state.
    ///
    /// - Throws: what the server answers.
    public func counts(_ session: SessionID) async throws -> StateCounts {
        try await send("GET", "/v1/sessions/\(session.rawValue)", as: SessionBody.self).stateCounts()
    }

    /// Pages through results; outputs too large to travel inline are fetched one by one.
    ///
    /// - Throws: what the server answers.
    public func results(_ session: SessionID, state: TaskState, after cursor: String?, limit: Int) async throws -> Page<TaskResult> {
        var path = "/v1/sessions/\(session.rawValue)/results?state=\(state.rawValue)&limit=\(limit)"
        if let cursor { path += "&after=" + Self.escape(cursor) }
        let page = try await send("GET", path, as: PageBody<TaskBody>.self)
        return Page(items: try await results(page.items), next: page.has_more ? page.next : nil)
    }

    /// Reads results in completion order (`order=completion`), long-polling up to `wait` (whole
    /// milliseconds) when there is none after `after` yet.
    ///
    /// - Throws: what the server answers.
    public func completions(_ session: SessionID, after: Int, limit: Int, outputs: Bool, wait: Duration) async throws -> CompletionPage {
        let millis = max(0, Int((wait.timeInterval * 1000).rounded(.down)))
        let path = "/v1/sessions/\(session.rawValue)/results?order=completion&after=\(after)&limit=\(limit)"
            + "&wait=\(Double(millis) / 1000)" + (outputs ? "" : "&outputs=false")
        let page = try await send("GET", path, as: CompletionPageBody.self)
        guard let next = Int(page.next) else {
            throw GridError(.internalError, "htc-server sent the completion cursor '\(page.next)', not a number", backend: "http")
        }
        return CompletionPage(items: try await results(page.items), next: next, taskCount: page.task_count)
    }

    /// The results of tasks as sent, fetching outputs that did not travel inline.
    private func results(_ bodies: [TaskBody]) async throws -> [TaskResult] {
        var items: [TaskResult] = []
        items.reserveCapacity(bodies.count)
        for item in bodies {
            var output = item.output_base64.flatMap { Data(base64Encoded: $0) }.map { Array($0) }
            if output == nil, let url = item.output_url {
                output = Array(try await send("GET", url, as: Data.self))
            }
            items.append(TaskResult(record: try item.record(), output: output))
        }
        return items
    }

    /// Cancels a session.
    ///
    /// - Throws: what the server answers.
    public func cancel(_ session: SessionID) async throws -> CancelCounts {
        let body = try await send("POST", "/v1/sessions/\(session.rawValue)/cancel", retry: false, as: CancelBody.self)
        return CancelCounts(pending: body.cancelled_pending, processing: body.cancelled_processing)
    }

    /// Deletes a session with its tasks and payloads.
    ///
    /// - Throws: what the server answers.
    public func deleteSession(_ session: SessionID) async throws -> Int {
        try await send("DELETE", "/v1/sessions/\(session.rawValue)", retry: false, as: DeleteBody.self).deleted_tasks
    }

    /// Waits until every task is terminal: reads the session's counts for `progress` every
    /// `pollInterval` at most, and in between long-polls for the completion of the last task, so the
    /// wait ends as soon as it happens.
    ///
    /// - Throws: ``GridKernel/GridError/Code/timeout``; what the server answers; `CancellationError`.
    public func wait(
        for session: SessionID,
        expected: Int?,
        pollInterval: Duration,
        timeout: Duration?,
        progress: @Sendable (StateCounts) -> Void
    ) async throws -> StateCounts {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while true {
            let body = try await send("GET", "/v1/sessions/\(session.rawValue)", as: SessionBody.self)
            let counts = try body.stateCounts()
            progress(counts)
            let total = expected ?? body.task_count
            if counts.terminal >= total { return counts }
            var pause = max(pollInterval, .milliseconds(1))
            if let deadline {
                let remaining = deadline - ContinuousClock.now
                guard remaining > .zero else {
                    throw GridError(.timeout, "session \(session) has \(counts.terminal) of \(total) tasks terminal after the timeout")
                }
                pause = min(pause, remaining)
            }
            _ = try await completions(session, after: total - 1, limit: 1, outputs: false, wait: pause)
        }
    }

    // MARK: - HTTP

    /// One request, sent again as ``retrying(_:_:)`` says unless `retry` is false.
    private func send<Answer: Decodable>(
        _ method: String, _ path: String, body: Data? = nil, headers: [String: String] = [:], retry: Bool = true, as type: Answer.Type
    ) async throws -> Answer {
        guard retry else { return try await sendOnce(method, path, body: body, headers: headers, as: type) }
        return try await retrying("\(method) \(path)") { try await sendOnce(method, path, body: body, headers: headers, as: type) }
    }

    private func sendOnce<Answer: Decodable>(
        _ method: String, _ path: String, body: Data?, headers: [String: String], as type: Answer.Type
    ) async throws -> Answer {
        guard let url = URL(string: path, relativeTo: baseURL) else {
            throw GridError.invalidArgument("cannot make a URL of \(baseURL) and \(path)")
        }
        var request = URLRequest(url: url)
        request.httpMethod = method
        request.httpBody = body
        request.timeoutInterval = 300
        if body != nil { request.setValue("application/json", forHTTPHeaderField: "content-type") }
        if let apiKey { request.setValue(apiKey, forHTTPHeaderField: "x-api-key") }
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        let data: Data
        let response: URLResponse
        do {
            (data, response) = try await urlSession.data(for: request)
        } catch {
            throw GridError.unavailable("cannot reach htc-server at \(baseURL): \(error.localizedDescription)", backend: "http", underlying: error)
        }
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        guard (200..<300).contains(status) else { throw Self.error(status: status, data: data) }
        if Answer.self == Data.self, let data = data as? Answer { return data }
        do {
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .custom { decoder in
                let text = try decoder.singleValueContainer().decode(String.self)
                if let date = try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)) { return date }
                return try Date(text, strategy: .iso8601)
            }
            return try decoder.decode(Answer.self, from: data)
        } catch {
            throw GridError(.internalError, "htc-server answered \(method) \(path) with a body this client cannot read: \(error)", backend: "http")
        }
    }

    /// The grid error for an API error document (the server maps grid errors to statuses; this maps them back).
    static func error(status: Int, data: Data) -> GridError {
        let document = try? JSONDecoder().decode(ErrorBody.self, from: data)
        let message = document?.error.message ?? "htc-server answered HTTP \(status)"
        let code: GridError.Code
        // A gateway or proxy in front of a restarting server answers these, whatever its body says.
        if [502, 503, 504].contains(status) { return GridError(.unavailable, message, backend: "http") }
        switch document?.error.code {
        case "not_found": code = .notFound
        case "invalid_argument": code = .invalidArgument
        case "conflict": code = .conflict
        case "payload_too_large": code = .payloadTooLarge
        case "unauthorized": code = .unauthorized
        case "unavailable": code = .unavailable
        case "timeout": code = .timeout
        case "lease_lost": code = .leaseLost
        default: code = .internalError
        }
        return GridError(code, message, backend: "http")
    }

    private static func escape(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed.subtracting(CharacterSet(charactersIn: "&=+?#"))) ?? text
    }
}

// The wire format of API v1, as openapi.yaml describes it.
private struct CreateSessionBody: Encodable {
    var priority: Int
    var max_retries: Int
    var task_timeout_seconds: Double?
    var labels: [String: String]?
}

private struct SubmitBody: Decodable {
    var task_ids: [String]
}

private struct CancelBody: Decodable {
    var cancelled_pending: Int
    var cancelled_processing: Int
}

private struct DeleteBody: Decodable {
    var deleted_tasks: Int
}

private struct ErrorBody: Decodable {
    struct Detail: Decodable {
        var code: String
        var message: String
    }

    var error: Detail
}

private struct PageBody<Item: Decodable>: Decodable {
    var items: [Item]
    var next: String?
    var has_more: Bool
}

private struct CompletionPageBody: Decodable {
    var items: [TaskBody]
    var next: String
    var task_count: Int?
}

private struct SessionBody: Decodable {
    var id: String
    var priority: Int
    var max_retries: Int
    var task_timeout_seconds: Double?
    var labels: [String: String]
    var created_at: Date
    var task_count: Int
    var cancelled: Bool
    var counts: [String: Int]?

    func record() throws -> SessionRecord {
        SessionRecord(
            id: try SessionID(id),
            options: SessionOptions(
                priority: priority,
                maxRetries: max_retries,
                taskTimeout: task_timeout_seconds.map { Duration(timeInterval: $0) },
                labels: labels
            ),
            createdAt: created_at,
            taskCount: task_count,
            cancelled: cancelled
        )
    }

    func stateCounts() throws -> StateCounts {
        guard let counts else { throw GridError(.internalError, "htc-server sent session \(id) without counts", backend: "http") }
        var result = StateCounts()
        for state in TaskState.allCases { result[state] = counts[state.rawValue] ?? 0 }
        return result
    }
}

private struct TaskBody: Decodable {
    var task_id: String
    var state: String
    var owner: String?
    var retries: Int
    var max_retries: Int
    var priority: Int
    var submitted_at: Date
    var started_at: Date?
    var completed_at: Date?
    var last_error: String?
    var output_base64: String?
    var output_url: String?
    var sequence: Int?

    func record() throws -> TaskRecord {
        guard let state = TaskState(rawValue: state) else {
            throw GridError(.internalError, "htc-server sent task \(task_id) in an unknown state '\(self.state)'", backend: "http")
        }
        return TaskRecord(
            id: try TaskID(task_id),
            state: state,
            owner: owner.map(AgentID.init),
            retries: retries,
            maxRetries: max_retries,
            priority: priority,
            submittedAt: submitted_at,
            startedAt: started_at,
            completedAt: completed_at,
            lastError: last_error,
            completionSequence: sequence
        )
    }
}
