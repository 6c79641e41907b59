import Foundation
import GridKernel
import HTTPTypes
import Hummingbird
import NIOCore

/// Settings of HTC-Grid's REST API (`htc-server --htcgrid-compat`).
public struct HTCGridCompatibility: Sendable {
    /// The path the three routes live under, HTC-Grid's API Gateway stage. Default `/v1`.
    public var basePath: String
    /// The most tasks one `POST /submit` may carry; HTC-Grid has no limit of its own. Default 100,000.
    public var maxTasksPerSubmission: Int
    /// The largest `GET /result` answer, in bytes of its id lists; a session with more terminal tasks
    /// gets 542 instead of an answer of unbounded size (HTC-Grid's Lambda fails at 6 MB). Default 8 MiB,
    /// which holds a full submission of ``maxTasksPerSubmission`` tasks under the connector's `uuid1` ids
    /// (about 67 bytes a task).
    public var maxResultBytes: Int

    /// Creates the settings.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` when the base path does not start with
    ///   `/` or holds anything but letters, digits, `-`, `_`, `.` and `/`, or `maxResultBytes` is not positive.
    public init(basePath: String = "/v1", maxTasksPerSubmission: Int = 100_000, maxResultBytes: Int = 8 * 1024 * 1024) throws {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_./"))
        guard basePath.hasPrefix("/"), basePath.unicodeScalars.allSatisfy(allowed.contains) else {
            throw GridError.invalidArgument("--htcgrid-base-path \(basePath) must be a path such as /v1 (letters, digits, -, _, ., /)")
        }
        guard maxResultBytes > 0 else {
            throw GridError.invalidArgument("--htcgrid-max-result-bytes is \(maxResultBytes); it must be a positive number of bytes")
        }
        self.basePath = basePath
        self.maxTasksPerSubmission = maxTasksPerSubmission
        self.maxResultBytes = maxResultBytes
    }
}

/// HTC-Grid's REST API (`POST /submit`, `GET /result`, `POST /cancel`), as its Python `AWSConnector`
/// drives it: every parameter in the query string `submission_content`, task inputs and the submission
/// document in the shared data plane, errors as plain text with HTC-Grid's statuses 543 (submit) and 542
/// (result, cancel). The contract is docs/server.md, "HTC-Grid compatibility".
extension GridAPI {
    /// The session label marking sessions submitted through HTC-Grid's API.
    public static let protocolLabel = "htc.protocol"
    /// HTC-Grid's placeholder for an output the client reads from the data plane.
    static let dataPlanePlaceholder = "read_from_dataplane"

    func addHTCGridRoutes(to router: Router<ServerRequestContext>, _ settings: HTCGridCompatibility, auth: AuthMode) {
        let trimmed = settings.basePath.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        let group = router.group(RouterPath(stringLiteral: trimmed)).add(middleware: AuthMiddleware(mode: auth))
        group.post("submit") { request, context in
            await Self.htcgridErrors(status: 543, context) { try await self.htcgridSubmit(request, context, settings) }
        }
        group.get("result") { request, context in
            await Self.htcgridErrors(status: 542, context) { try await self.htcgridResult(request, context, settings) }
        }
        group.post("cancel") { request, context in
            await Self.htcgridErrors(status: 542, context) { try await self.htcgridCancel(request, context) }
        }
    }

    /// `POST /submit?submission_content=<session_id>`: reads `<session_id>-payload` from the data plane and
    /// submits the tasks it lists, whose inputs the client stored under `<task_id>-input`.
    private func htcgridSubmit(_ request: Request, _ context: ServerRequestContext, _ settings: HTCGridCompatibility) async throws -> Response {
        let content = try Self.submissionContent(request)
        guard let session = try? SessionID(content) else {
            throw GridError.invalidArgument(
                "submission_content must be the session id whose submission is stored under <session_id>-payload "
                    + "(task_input_passed_via_external_storage = 1); inline submissions are not supported"
            )
        }
        let key = PayloadKey.sessionPayload(session)
        let missing = GridError.notFound("no submission under \(key) in the data plane; store it before calling submit")
        // Another tenant's session answers exactly as an unknown id without a submission does, so a
        // caller cannot learn which session ids other tenants use; it is looked up before the payload.
        if let existing = try await htcgridExistingSession(session), !visible(existing, to: context) { throw missing }
        guard let document = try await client.backends.payloads.get([key])[key] else { throw missing }
        let submission: HTCGridSubmission
        do {
            submission = try StrictDecoding.decode(HTCGridSubmission.self, from: Data(document))
        } catch let error as GridError {
            throw GridError.invalidArgument("\(key): \(error.message)")
        }
        let count = try submission.validate(session: session, limit: settings.maxTasksPerSubmission)
        var labels = [Self.protocolLabel: "htcgrid"]
        if let tenant = context.tenant { labels[Self.tenantLabel] = tenant }
        var options = SessionOptions(labels: labels)
        if let priority = submission.context?.tasksPriority { options.priority = priority }
        if let retries = submission.schedulerData?.retryCount { options.maxRetries = retries }
        if let seconds = submission.schedulerData?.taskTimeoutSec, seconds > 0 { options.taskTimeout = Duration(timeInterval: seconds) }
        do {
            _ = try await client.createSession(options, id: session)
            metrics.sessionsCreated.increment()
        } catch let error as GridError where error.code == .conflict {
            // The same submission sent again (the client timed out, the server restarted): resume or
            // answer it under its one idempotency key; anything else under this id is refused.
            let existing = try await client.session(session)
            guard visible(existing, to: context) else { throw missing }
            guard existing.options.labels[Self.protocolLabel] == "htcgrid", existing.options.labels[Self.tenantLabel] == context.tenant else {
                throw GridError(.conflict, "session \(session) was submitted before; HTC-Grid clients submit each session id once")
            }
        }
        let start = ContinuousClock.now
        let ids = try await client.submitStored(session, count: count, key: Self.htcgridSubmissionKey)
        metrics.submitDuration.record(ContinuousClock.now - start)
        metrics.tasksSubmitted.increment(by: Int64(ids.count))
        return try Self.json(SubmitTasksResponse(sessionID: session, taskIDs: ids))
    }

    /// The session under an id, whoever it belongs to; `nil` when there is none.
    private func htcgridExistingSession(_ id: SessionID) async throws -> SessionRecord? {
        do {
            return try await client.session(id)
        } catch let error as GridError where error.code == .notFound {
            return nil
        }
    }

    /// The idempotency key of an HTC-Grid submission: one per session id, which HTC-Grid clients submit once.
    static let htcgridSubmissionKey = try! SubmissionKey("htcgrid-submit")

    /// `GET /result?submission_content=urlsafe_b64({"session_id": …})`: the ids of the session's finished,
    /// cancelled and failed tasks with a placeholder per output, and how many there are.
    ///
    /// The connector has no paging: it polls until `tasks_in_response` is its task count. So the answer
    /// is whole or refused (542) once its lists would pass ``HTCGridCompatibility/maxResultBytes``; the
    /// lists are not built further than that.
    private func htcgridResult(_ request: Request, _ context: ServerRequestContext, _ settings: HTCGridCompatibility) async throws -> Response {
        let query = try Self.decodedContent(request, HTCGridResultQuery.self)
        var body = HTCGridResultBody()
        // An unknown session, or one of another tenant, has no tasks: HTC-Grid answers with empty lists.
        if let session = try await htcgridSession(query.sessionID, context) {
            // Each id is listed once (`"id",`) with one placeholder (`"read_from_dataplane",`).
            let placeholderBytes = Self.dataPlanePlaceholder.utf8.count + 3
            var bytes = 0
            for state in [TaskState.finished, .cancelled, .failed] {
                var cursor: String?
                var ids: [String] = []
                repeat {
                    let page = try await client.backends.state.tasks(session.id, state: state, after: cursor, limit: 10_000)
                    for record in page.items { bytes += record.id.rawValue.utf8.count + 3 + placeholderBytes }
                    guard bytes <= settings.maxResultBytes else {
                        throw GridError(
                            .payloadTooLarge,
                            "session \(session.id) has too many finished, cancelled and failed tasks for one /result answer (over \(ByteCount(settings.maxResultBytes)), --htcgrid-max-result-bytes); "
                                + "page through them with GET /v1/sessions/\(session.id)/results instead"
                        )
                    }
                    ids += page.items.map(\.id.rawValue)
                    cursor = page.next
                } while cursor != nil
                body.set(state, ids)
                metrics.returned(ids.count, state: state)
            }
        }
        return try Self.json(body)
    }

    /// `POST /cancel?submission_content=urlsafe_b64({"session_ids_to_cancel": […]})`: cancels the sessions
    /// and answers HTC-Grid's counters per session.
    private func htcgridCancel(_ request: Request, _ context: ServerRequestContext) async throws -> Response {
        let query = try Self.decodedContent(request, HTCGridCancelQuery.self)
        var body: [String: HTCGridCancelCounts] = [:]
        for text in query.sessionIDsToCancel {
            var counts = CancelCounts()
            // As in HTC-Grid, a session without tasks (unknown, or another tenant's) cancels nothing.
            if let session = try await htcgridSession(text, context) {
                counts = try await client.cancel(session.id)
                metrics.sessionsCancelled.increment()
            }
            body[text] = HTCGridCancelCounts(counts)
        }
        return try Self.json(body)
    }

    /// The session if the caller may see it; `nil` when it does not exist or is another tenant's.
    private func htcgridSession(_ text: String, _ context: ServerRequestContext) async throws -> SessionRecord? {
        do {
            return try await ownedSession(text, context, notFound: "session \(text) does not exist")
        } catch let error as GridError where error.code == .notFound {
            return nil
        }
    }

    /// Runs a handler, turning its errors into HTC-Grid's: `status` with the message as plain text.
    private static func htcgridErrors(status: Int, _ context: ServerRequestContext, _ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch {
            let message: String
            if let error = error as? GridError {
                message = error.message
                if error.code == .unavailable || error.code == .internalError {
                    context.logger.error("HTC-Grid request failed", metadata: ["error": "\(error)"])
                }
            } else {
                context.logger.error("HTC-Grid request failed", metadata: ["error": "\(error)"])
                message = "internal error; see the server log"
            }
            return Response(
                status: HTTPResponse.Status(code: status, reasonPhrase: status == 543 ? "Submit Failed" : "Request Failed"),
                headers: [.contentType: "text/plain; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: message))
            )
        }
    }

    private static func submissionContent(_ request: Request) throws -> String {
        guard let value = request.uri.queryParameters["submission_content"], !value.isEmpty else {
            throw GridError.invalidArgument("the query parameter submission_content is missing")
        }
        return String(value)
    }

    /// `submission_content` decoded as HTC-Grid's Lambdas do: URL-decoded (by the router), then URL-safe
    /// base64 (padding optional), then JSON.
    private static func decodedContent<T: Decodable>(_ request: Request, _ type: T.Type) throws -> T {
        let content = try submissionContent(request)
        guard let json = Base64URL.decode(content) else {
            throw GridError.invalidArgument("submission_content is not URL-safe base64 (urlsafe_b64encode of a JSON document)")
        }
        do {
            return try StrictDecoding.decode(type, from: Data(json))
        } catch let error as GridError {
            throw GridError.invalidArgument("submission_content: \(error.message)")
        }
    }
}

/// The submission document an HTC-Grid client stores under `<session_id>-payload` (fields the grid does
/// not use, such as `stats`, are ignored).
struct HTCGridSubmission: Decodable {
    struct TasksList: Decodable {
        var tasks: [String]
    }

    struct SchedulerData: Decodable {
        var taskTimeoutSec: Double?
        var retryCount: Int?

        enum CodingKeys: String, CodingKey {
            case taskTimeoutSec = "task_timeout_sec"
            case retryCount = "retry_count"
        }
    }

    struct Context: Decodable {
        var tasksPriority: Int?

        enum CodingKeys: String, CodingKey {
            case tasksPriority = "tasks_priority"
        }
    }

    var sessionID: String
    var tasksList: TasksList
    var schedulerData: SchedulerData?
    var context: Context?

    enum CodingKeys: String, CodingKey {
        case sessionID = "session_id"
        case tasksList = "tasks_list"
        case schedulerData = "scheduler_data"
        case context
    }

    /// Checks the document against the session it was stored for; returns the number of tasks.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` naming the field; ``GridKernel/GridError/Code/payloadTooLarge``.
    func validate(session: SessionID, limit: Int) throws -> Int {
        guard sessionID == session.rawValue else {
            throw GridError.invalidArgument("session_id is '\(sessionID)', but the document is stored for session \(session)")
        }
        guard !tasksList.tasks.isEmpty else { throw GridError.invalidArgument("tasks_list.tasks: is empty") }
        guard tasksList.tasks.count <= limit else {
            throw GridError(.payloadTooLarge, "tasks_list.tasks: \(tasksList.tasks.count) tasks; the limit is \(limit) per submission")
        }
        // The grid numbers a session's tasks itself, as HTC-Grid's connector does: <session_id>_<i>.
        for (index, id) in tasksList.tasks.enumerated() where id != "\(session.rawValue)_\(index)" {
            throw GridError.invalidArgument("tasks_list.tasks[\(index)]: is '\(id)'; expected '\(session.rawValue)_\(index)'")
        }
        if let retries = schedulerData?.retryCount, !(0...1_000).contains(retries) {
            throw GridError.invalidArgument("scheduler_data.retry_count: is \(retries); it must be between 0 and 1000")
        }
        if let seconds = schedulerData?.taskTimeoutSec, !seconds.isFinite || seconds < 0 {
            throw GridError.invalidArgument("scheduler_data.task_timeout_sec: is \(seconds); it must be a number of seconds")
        }
        if let priority = context?.tasksPriority, !(0...1_000_000).contains(priority) {
            throw GridError.invalidArgument("context.tasks_priority: is \(priority); it must be between 0 and 1000000")
        }
        return tasksList.tasks.count
    }
}

/// `submission_content` of `GET /result`.
struct HTCGridResultQuery: Decodable {
    var sessionID: String

    enum CodingKeys: String, CodingKey {
        case sessionID = "session_id"
    }
}

/// `submission_content` of `POST /cancel`.
struct HTCGridCancelQuery: Decodable {
    var sessionIDsToCancel: [String]

    enum CodingKeys: String, CodingKey {
        case sessionIDsToCancel = "session_ids_to_cancel"
    }
}

/// HTC-Grid's `GetResponse`: six lists and `metadata.tasks_in_response`.
struct HTCGridResultBody: Encodable {
    struct Metadata: Encodable {
        var tasksInResponse = 0

        enum CodingKeys: String, CodingKey {
            case tasksInResponse = "tasks_in_response"
        }
    }

    var finished: [String] = []
    var finishedOutput: [String] = []
    var cancelled: [String] = []
    var cancelledOutput: [String] = []
    var failed: [String] = []
    var failedOutput: [String] = []
    var metadata = Metadata()

    enum CodingKeys: String, CodingKey {
        case finished
        case finishedOutput = "finished_OUTPUT"
        case cancelled
        case cancelledOutput = "cancelled_OUTPUT"
        case failed
        case failedOutput = "failed_OUTPUT"
        case metadata
    }

    mutating func set(_ state: TaskState, _ ids: [String]) {
        let placeholders = Array(repeating: GridAPI.dataPlanePlaceholder, count: ids.count)
        switch state {
        case .finished: (finished, finishedOutput) = (ids, placeholders)
        case .cancelled: (cancelled, cancelledOutput) = (ids, placeholders)
        case .failed: (failed, failedOutput) = (ids, placeholders)
        case .pending, .processing: return
        }
        metadata.tasksInResponse = finished.count + cancelled.count + failed.count
    }
}

/// HTC-Grid's counters of one cancelled session.
struct HTCGridCancelCounts: Encodable {
    var cancelledPending: Int
    var cancelledProcessing: Int
    var totalCancelledTasks: Int

    enum CodingKeys: String, CodingKey {
        case cancelledPending = "cancelled_pending"
        case cancelledProcessing = "cancelled_processing"
        case totalCancelledTasks = "total_cancelled_tasks"
    }

    init(_ counts: CancelCounts) {
        cancelledPending = counts.pending
        cancelledProcessing = counts.processing
        totalCancelledTasks = counts.total
    }
}
