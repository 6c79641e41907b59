import Foundation
import GridKernel
import Hummingbird

/// `POST /v1/sessions`.
struct CreateSessionRequest: Decodable {
    var priority: Int?
    var maxRetries: Int?
    var taskTimeoutSeconds: Double?
    var labels: [String: String]?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case priority
        case maxRetries = "max_retries"
        case taskTimeoutSeconds = "task_timeout_seconds"
        case labels
    }

    init(from decoder: any Decoder) throws {
        try StrictDecoding.rejectUnknownFields(decoder, allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        priority = try container.decodeIfPresent(Int.self, forKey: .priority)
        maxRetries = try container.decodeIfPresent(Int.self, forKey: .maxRetries)
        taskTimeoutSeconds = try container.decodeIfPresent(Double.self, forKey: .taskTimeoutSeconds)
        labels = try container.decodeIfPresent([String: String].self, forKey: .labels)
    }
}

/// One task of `POST /v1/sessions/{id}/tasks`: exactly one of `payload_base64` and `payload_json`.
struct TaskSpec: Decodable {
    enum Payload {
        case bytes([UInt8])
        case json(JSONValue)
    }

    var payload: Payload

    enum CodingKeys: String, CodingKey, CaseIterable {
        case payloadBase64 = "payload_base64"
        case payloadJSON = "payload_json"
    }

    init(from decoder: any Decoder) throws {
        try StrictDecoding.rejectUnknownFields(decoder, allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        let container = try decoder.container(keyedBy: CodingKeys.self)
        switch (container.contains(.payloadBase64), container.contains(.payloadJSON)) {
        case (true, false):
            let text = try container.decode(String.self, forKey: .payloadBase64)
            guard let data = Data(base64Encoded: text) else {
                throw DecodingError.dataCorruptedError(
                    forKey: .payloadBase64, in: container, debugDescription: "is not valid base64 (RFC 4648, with padding)"
                )
            }
            payload = .bytes(Array(data))
        case (false, true):
            payload = .json(try container.decode(JSONValue.self, forKey: .payloadJSON))
        default:
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "give exactly one of payload_base64 and payload_json")
            )
        }
    }
}

/// `POST /v1/sessions/{id}/tasks`.
struct SubmitTasksRequest: Decodable {
    var tasks: [TaskSpec]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case tasks
    }

    init(from decoder: any Decoder) throws {
        try StrictDecoding.rejectUnknownFields(decoder, allowed: Set(CodingKeys.allCases.map(\.rawValue)))
        tasks = try decoder.container(keyedBy: CodingKeys.self).decode([TaskSpec].self, forKey: .tasks)
    }
}

/// The answer to a submission: the new task ids in the order of the request.
struct SubmitTasksResponse: Encodable {
    var sessionID: SessionID
    var taskIDs: [TaskID]

    enum CodingKeys: String, CodingKey {
        case sessionID = "session_id"
        case taskIDs = "task_ids"
    }
}

/// A session as the API shows it.
struct SessionBody: Encodable {
    var id: SessionID
    var tenant: String?
    var priority: Int
    var maxRetries: Int
    var taskTimeoutSeconds: Double?
    var labels: [String: String]
    var createdAt: Date
    var taskCount: Int
    var cancelled: Bool
    var counts: [String: Int]?

    enum CodingKeys: String, CodingKey {
        case id, tenant, priority
        case maxRetries = "max_retries"
        case taskTimeoutSeconds = "task_timeout_seconds"
        case labels
        case createdAt = "created_at"
        case taskCount = "task_count"
        case cancelled, counts
    }

    init(_ record: SessionRecord, counts: StateCounts?) {
        id = record.id
        tenant = record.options.labels[GridAPI.tenantLabel]
        priority = record.options.priority
        maxRetries = record.options.maxRetries
        taskTimeoutSeconds = record.options.taskTimeout?.timeInterval
        labels = record.options.labels.filter { !$0.key.hasPrefix(GridAPI.reservedLabelPrefix) }
        createdAt = record.createdAt
        taskCount = record.taskCount
        cancelled = record.cancelled
        self.counts = counts.map(Self.countsBody)
    }

    static func countsBody(_ counts: StateCounts) -> [String: Int] {
        var body: [String: Int] = [:]
        for state in TaskState.allCases { body[state.rawValue] = counts[state] }
        return body
    }
}

/// A page of a listing.
struct PageBody<Item: Encodable>: Encodable {
    var items: [Item]
    /// Pass as `after` to continue; for results it is set whenever a position is known, so a client can
    /// long-poll from where it stopped.
    var next: String?
    /// Whether more items exist right now after this page.
    var hasMore: Bool

    enum CodingKeys: String, CodingKey {
        case items, next
        case hasMore = "has_more"
    }
}

/// A task as the API shows it.
struct TaskBody: Encodable {
    var taskID: TaskID
    var sessionID: SessionID
    var state: TaskState
    var owner: String?
    var retries: Int
    var maxRetries: Int
    var priority: Int
    var submittedAt: Date
    var startedAt: Date?
    var completedAt: Date?
    var lastError: String?
    var outputBase64: String?
    var outputSize: Int?
    var outputURL: String?
    /// The task's place in its session's completion order, once terminal.
    var sequence: Int?

    enum CodingKeys: String, CodingKey {
        case sequence
        case taskID = "task_id"
        case sessionID = "session_id"
        case state, owner, retries
        case maxRetries = "max_retries"
        case priority
        case submittedAt = "submitted_at"
        case startedAt = "started_at"
        case completedAt = "completed_at"
        case lastError = "last_error"
        case outputBase64 = "output_base64"
        case outputSize = "output_size"
        case outputURL = "output_url"
    }

    /// A task with its output inline when it is at most `inlineLimit` bytes, otherwise with the URL that
    /// serves it.
    init(_ record: TaskRecord, output: [UInt8]?, inlineLimit: Int) {
        taskID = record.id
        sessionID = record.id.session
        state = record.state
        owner = record.owner?.rawValue
        retries = record.retries
        maxRetries = record.maxRetries
        priority = record.priority
        submittedAt = record.submittedAt
        startedAt = record.startedAt
        completedAt = record.completedAt
        lastError = record.lastError
        sequence = record.completionSequence
        if let output {
            outputSize = output.count
            if output.count <= inlineLimit {
                outputBase64 = Data(output).base64EncodedString()
            } else {
                outputURL = "/v1/tasks/\(record.id.rawValue)/output"
            }
        }
    }
}

/// The answer to a cancel: how many tasks were cancelled, by the state they were in.
struct CancelBody: Encodable {
    var sessionID: SessionID
    var cancelledPending: Int
    var cancelledProcessing: Int
    var totalCancelled: Int

    enum CodingKeys: String, CodingKey {
        case sessionID = "session_id"
        case cancelledPending = "cancelled_pending"
        case cancelledProcessing = "cancelled_processing"
        case totalCancelled = "total_cancelled"
    }
}

/// The answer to a delete: how many task records were removed.
struct DeleteBody: Encodable {
    var sessionID: SessionID
    var deletedTasks: Int

    enum CodingKeys: String, CodingKey {
        case sessionID = "session_id"
        case deletedTasks = "deleted_tasks"
    }
}

/// `GET /healthz` and `GET /readyz`.
struct HealthBody: Encodable {
    var status: String
    /// `/readyz`: what the backends would lose on a restart of their servers (absent when nothing).
    var warnings: [String]? = nil
}

/// The query of `order=completion` results and of the result stream: `after` (a completion number,
/// default 0), `limit` (1 to 10,000, default 1,000), `outputs` (`true`/`false`, default true) and `wait`.
struct CompletionQuery {
    var after: Int
    var limit: Int
    var outputs: Bool
    var wait: Duration

    init(_ request: Request, maxWait: Duration) throws {
        after = try GridAPI.integer(request, "after", default: 0, range: 0...Int.max)
        limit = try GridAPI.integer(request, "limit", default: 1_000, range: 1...10_000)
        switch GridAPI.string(request, "outputs") ?? "true" {
        case "true": outputs = true
        case "false": outputs = false
        case let other: throw GridError.invalidArgument("outputs=\(other): expected true or false")
        }
        wait = try GridAPI.seconds(request, "wait", max: maxWait)
    }

    init(_ query: CompletionQuery, after: Int) {
        self = query
        self.after = after
    }
}

/// A page of results in completion order.
struct CompletionPageBody: Encodable {
    var items: [TaskBody]
    /// The completion number of the last item (or the `after` asked for): pass it as `after` next.
    var next: String
    /// Whether more results are known to follow right now.
    var hasMore: Bool
    /// Whether every task of the session is terminal and was returned.
    var complete: Bool
    /// The session's task count, when the page caught up with the session.
    var taskCount: Int?

    enum CodingKeys: String, CodingKey {
        case items, next, complete
        case hasMore = "has_more"
        case taskCount = "task_count"
    }

    init(_ page: CompletionPage, inlineLimit: Int) {
        items = page.items.map { TaskBody($0.record, output: $0.output, inlineLimit: inlineLimit) }
        next = String(page.next)
        hasMore = page.taskCount == nil
        complete = page.complete
        taskCount = page.taskCount
    }
}

/// A line of the result stream that is not a result: progress while waiting, and the last line.
struct StreamProgress: Encodable {
    var complete: Bool
    var next: String
    var taskCount: Int?

    enum CodingKeys: String, CodingKey {
        case complete, next
        case taskCount = "task_count"
    }
}
