import Foundation
import GridKernel
import HTTPTypes
import Hummingbird
import NIOCore
import ServiceLifecycle

/// The routes of API v1, written over a ``GridKernel/GridClient``: sessions, task submission, results
/// with long-polling, single tasks, health.
///
/// Tenancy: a session belongs to the tenant that created it (stored as the label ``tenantLabel``);
/// any other tenant gets 404, as if the session did not exist.
public struct GridAPI: Sendable {
    /// The session label that records the owning tenant.
    public static let tenantLabel = "htc.tenant"
    /// Labels with this prefix are the server's own; clients may not set them.
    static let reservedLabelPrefix = "htc."

    /// The client the routes call.
    public let client: GridClient
    /// Limits and settings.
    public let configuration: ServerConfiguration
    /// The metrics the routes record and `GET /metrics` exports.
    public let metrics: ServerMetrics
    /// The scaling decisions served at `GET /v1/scaling`; `nil` answers 404 there.
    public let scaling: ServerScaling?
    let clock: any GridClock

    /// Creates the API over a client.
    public init(
        client: GridClient,
        configuration: ServerConfiguration = ServerConfiguration(),
        metrics: ServerMetrics = ServerMetrics(),
        scaling: ServerScaling? = nil,
        clock: any GridClock = SystemClock()
    ) {
        self.client = client
        self.configuration = configuration
        self.metrics = metrics
        self.scaling = scaling
        self.clock = clock
    }

    /// Builds the router: an access log with request ids, request metrics, errors as JSON documents,
    /// `/healthz`, `/readyz`, `/metrics` and `/openapi.yaml` without authentication, `/v1/...` behind `auth`,
    /// and with `htcgrid` HTC-Grid's `submit`, `result` and `cancel` under its base path, behind `auth` too.
    public func makeRouter(auth: AuthMode, htcgrid: HTCGridCompatibility? = nil) -> Router<ServerRequestContext> {
        let router = Router(context: ServerRequestContext.self)
        router.add(middleware: AccessLogMiddleware())
        router.add(middleware: MetricsMiddleware<ServerRequestContext>())
        router.add(middleware: ErrorMiddleware<ServerRequestContext>())
        router.get("healthz") { _, _ in try Self.json(HealthBody(status: "ok")) }
        router.get("readyz") { _, _ in try await self.ready() }
        router.get("metrics") { _, context in await self.exportMetrics(context) }
        router.get("openapi.yaml") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "application/yaml; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: OpenAPIDocument.yaml))
            )
        }
        let v1 = router.group("v1").add(middleware: AuthMiddleware(mode: auth))
        v1.post("sessions") { request, context in try await self.createSession(request, context) }
        v1.get("sessions") { request, context in try await self.listSessions(request, context) }
        v1.get("sessions/{session_id}") { _, context in try await self.getSession(context) }
        v1.post("sessions/{session_id}/cancel") { _, context in try await self.cancelSession(context) }
        v1.delete("sessions/{session_id}") { _, context in try await self.deleteSession(context) }
        v1.post("sessions/{session_id}/tasks") { request, context in try await self.submitTasks(request, context) }
        v1.get("sessions/{session_id}/results") { request, context in try await self.results(request, context) }
        v1.get("sessions/{session_id}/results/stream") { request, context in try await self.resultStream(request, context) }
        v1.get("tasks/{task_id}") { _, context in try await self.getTask(context) }
        v1.get("tasks/{task_id}/output") { _, context in try await self.getOutput(context) }
        v1.get("scaling") { _, _ in try await self.scalingDecision() }
        if let htcgrid { addHTCGridRoutes(to: router, htcgrid, auth: auth) }
        return router
    }

    // MARK: - Health

    private func ready() async throws -> Response {
        do {
            _ = try await client.backends.state.sessions(after: nil, limit: 1)
            _ = try await client.backends.queue.depth()
        } catch {
            throw GridError.unavailable("a backend is not reachable: \(error)")
        }
        // Ready all the same: the grid works, but what it holds would not survive a restart of its
        // backend, and the probe's reader (an operator, a dashboard) should see it.
        let warnings = await client.backends.durabilityWarnings()
        return try Self.json(HealthBody(status: "ready", warnings: warnings.isEmpty ? nil : warnings))
    }

    private func exportMetrics(_ context: ServerRequestContext) async -> Response {
        do {
            metrics.queueDepth(try await client.backends.queue.depth())
        } catch {
            context.logger.warning("cannot read the queue depth for /metrics", metadata: ["error": "\(error)"])
        }
        if let scaling, let decision = await scaling.autoscaler.last {
            metrics.scaling(desired: decision.desired, current: await scaling.currentAgents())
        }
        do {
            metrics.tasksByState(try await tasksByState())
        } catch {
            context.logger.warning("cannot count the tasks for /metrics", metadata: ["error": "\(error)"])
        }
        return Response(
            status: .ok,
            headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: metrics.registry.emitToBuffer()))
        )
    }

    /// The tasks per state summed over the first ``ServerConfiguration/metricsSessionLimit`` sessions.
    private func tasksByState() async throws -> (counts: StateCounts, sessions: Int, complete: Bool) {
        var total = StateCounts()
        var cursor: String?
        var sessions = 0
        repeat {
            let page = try await client.backends.state.sessions(after: cursor, limit: min(500, configuration.metricsSessionLimit - sessions))
            for record in page.items {
                let counts = try await client.backends.state.counts(record.id)
                for state in TaskState.allCases { total[state] += counts[state] }
            }
            sessions += page.items.count
            cursor = page.next
        } while cursor != nil && sessions < configuration.metricsSessionLimit
        return (total, sessions, cursor == nil)
    }

    // MARK: - Sessions

    private func createSession(_ request: Request, _ context: ServerRequestContext) async throws -> Response {
        let body = try await collect(request)
        let spec = body.isEmpty ? nil : try StrictDecoding.decode(CreateSessionRequest.self, from: body)
        var labels = spec?.labels ?? [:]
        if let reserved = labels.keys.sorted().first(where: { $0.hasPrefix(Self.reservedLabelPrefix) }) {
            throw GridError.invalidArgument("labels.\(reserved): labels starting with '\(Self.reservedLabelPrefix)' are reserved for the server")
        }
        if let tenant = context.tenant { labels[Self.tenantLabel] = tenant }
        var options = SessionOptions(labels: labels)
        if let priority = spec?.priority { options.priority = priority }
        if let maxRetries = spec?.maxRetries { options.maxRetries = maxRetries }
        if let seconds = spec?.taskTimeoutSeconds {
            guard seconds > 0, seconds.isFinite else {
                throw GridError.invalidArgument("task_timeout_seconds is \(seconds); it must be a positive number of seconds")
            }
            options.taskTimeout = Duration(timeInterval: seconds)
        }
        let record = try await client.createSession(options)
        metrics.sessionsCreated.increment()
        return try Self.json(SessionBody(record, counts: StateCounts()), status: .created)
    }

    private func listSessions(_ request: Request, _ context: ServerRequestContext) async throws -> Response {
        let limit = try Self.integer(request, "limit", default: 100, range: 1...1_000)
        var cursor = Self.string(request, "after")
        var items: [SessionRecord] = []
        var more = false
        var calls = 0
        // Other tenants' sessions are filtered out, so a page may need several backend pages; the scan
        // is bounded and a short page with `has_more` tells the client to go on.
        repeat {
            let page = try await client.backends.state.sessions(after: cursor, limit: limit - items.count)
            items += page.items.filter { visible($0, to: context) }
            cursor = page.next
            more = page.next != nil
            calls += 1
        } while more && items.count < limit && calls < 16
        let body = PageBody(items: items.map { SessionBody($0, counts: nil) }, next: more ? cursor : nil, hasMore: more)
        return try Self.json(body)
    }

    private func getSession(_ context: ServerRequestContext) async throws -> Response {
        let record = try await ownedSession(context)
        let counts = try await client.counts(record.id)
        return try Self.json(SessionBody(record, counts: counts))
    }

    private func cancelSession(_ context: ServerRequestContext) async throws -> Response {
        let record = try await ownedSession(context)
        let counts = try await client.cancel(record.id)
        metrics.sessionsCancelled.increment()
        return try Self.json(
            CancelBody(sessionID: record.id, cancelledPending: counts.pending, cancelledProcessing: counts.processing, totalCancelled: counts.total)
        )
    }

    private func deleteSession(_ context: ServerRequestContext) async throws -> Response {
        let record = try await ownedSession(context)
        let removed = try await client.deleteSession(record.id)
        metrics.sessionsDeleted.increment()
        return try Self.json(DeleteBody(sessionID: record.id, deletedTasks: removed))
    }

    // MARK: - Tasks

    private func submitTasks(_ request: Request, _ context: ServerRequestContext) async throws -> Response {
        let record = try await ownedSession(context)
        let inputs = try await decodeBatch(collect(request))
        if record.cancelled {
            throw GridError(.conflict, "session \(record.id) is cancelled; create a new session for more tasks")
        }
        let key = try Self.idempotencyKey(request)
        let start = ContinuousClock.now
        let ids = try await client.submit(record.id, inputs: inputs, key: key)
        metrics.submitDuration.record(ContinuousClock.now - start)
        metrics.tasksSubmitted.increment(by: Int64(ids.count))
        return try Self.json(SubmitTasksResponse(sessionID: record.id, taskIDs: ids), status: .created)
    }

    /// The `Idempotency-Key` header: a request sent again with the same key and body creates no task
    /// twice and answers the same task ids.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a malformed key.
    static func idempotencyKey(_ request: Request) throws -> SubmissionKey? {
        guard let name = HTTPField.Name("Idempotency-Key"), let text = request.headers[name] else { return nil }
        do {
            return try SubmissionKey(text)
        } catch let error as GridError {
            throw GridError.invalidArgument("Idempotency-Key header: \(error.message)")
        }
    }

    /// Decodes and checks a whole batch before anything is written, so a bad batch leaves nothing behind.
    func decodeBatch(_ body: Data) throws -> [[UInt8]] {
        guard !body.isEmpty else { throw GridError.invalidArgument("the request body is empty; send {\"tasks\": [...]}") }
        let batch = try StrictDecoding.decode(SubmitTasksRequest.self, from: body)
        guard !batch.tasks.isEmpty else { throw GridError.invalidArgument("tasks: is empty; send at least one task") }
        guard batch.tasks.count <= configuration.maxTasksPerRequest else {
            throw GridError(
                .payloadTooLarge,
                "tasks: \(batch.tasks.count) tasks in one request; the limit is \(configuration.maxTasksPerRequest) (--max-tasks-per-request): split the batch"
            )
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var inputs: [[UInt8]] = []
        inputs.reserveCapacity(batch.tasks.count)
        for (index, task) in batch.tasks.enumerated() {
            let input: [UInt8]
            switch task.payload {
            case .bytes(let bytes): input = bytes
            case .json(let value): input = Array(try encoder.encode(value))
            }
            guard input.count <= configuration.maxPayloadBytes else {
                throw GridError(
                    .payloadTooLarge,
                    "tasks[\(index)]: the input is \(input.count) bytes; the limit is \(configuration.maxPayloadBytes) (--max-payload-bytes)"
                )
            }
            inputs.append(input)
        }
        return inputs
    }

    private func results(_ request: Request, _ context: ServerRequestContext) async throws -> Response {
        let record = try await ownedSession(context)
        switch Self.string(request, "order") ?? "index" {
        case "index": break
        case "completion": return try await completionResults(request, record)
        case let other: throw GridError.invalidArgument("order '\(other)' is not one of index, completion")
        }
        let stateText = Self.string(request, "state") ?? TaskState.finished.rawValue
        guard let state = TaskState(rawValue: stateText) else {
            throw GridError.invalidArgument(
                "state '\(stateText)' is not one of \(TaskState.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        let limit = try Self.integer(request, "limit", default: 1_000, range: 1...10_000)
        let wait = try Self.seconds(request, "wait", max: configuration.maxWait)
        let after = Self.string(request, "after")
        // Completions wake the wait in real time; pending and processing are looked at again on the
        // server's clock.
        let realDeadline = ContinuousClock.now + wait
        let deadline = clock.now.addingTimeInterval(wait.timeInterval)
        var delay = configuration.pollBackoff.lowerBound
        // For terminal states, the number of terminal tasks before the read: a completion after it is
        // what may bring a new item, and the state store wakes the wait when one happens.
        var terminal = state.isTerminal ? try await client.counts(record.id).terminal : 0
        var page = try await client.results(record.id, state: state, after: after, limit: limit, maxOutputBytes: configuration.resultsPageBytes)
        // Long-poll until something arrives or the wait is over. A graceful shutdown ends the wait at
        // once (with what there is), so a rolling restart is not held up by clients waiting for results.
        while page.items.isEmpty && !Task.isShuttingDownGracefully {
            if state.isTerminal {
                let remaining = realDeadline - ContinuousClock.now
                guard remaining > .zero else { break }
                let session = record.id
                let seen = terminal
                _ = try? await cancelWhenGracefulShutdown {
                    try await self.client.backends.state.waitForCompletions(session, after: seen, timeout: remaining)
                }
                terminal = try await client.counts(record.id).terminal
            } else {
                // Pending and processing tasks are not announced: look again with a growing delay.
                let remaining = Duration(timeInterval: deadline.timeIntervalSince(clock.now))
                guard remaining > .zero else { break }
                let pause = min(delay, remaining)
                try? await cancelWhenGracefulShutdown { try await self.clock.sleep(for: pause) }
                delay = min(delay * 2, configuration.pollBackoff.upperBound)
            }
            try Task.checkCancellation()
            page = try await client.results(record.id, state: state, after: after, limit: limit, maxOutputBytes: configuration.resultsPageBytes)
        }
        metrics.returned(page.items.count, state: state)
        if wait > .zero { metrics.longPoll(foundData: !page.items.isEmpty) }
        // The backends' task cursors are task indices (IntegerCursor); resuming after the last item
        // lets a client long-poll from where it stopped even when this was the last page.
        let next = page.next ?? page.items.last.map { IntegerCursor.make($0.record.id.index) } ?? after
        let items: [TaskBody] = page.items.map { TaskBody($0.record, output: $0.output, inlineLimit: configuration.inlineOutputLimit) }
        return try Self.json(PageBody(items: items, next: next, hasMore: page.next != nil))
    }

    /// `order=completion`: the session's results in the order they became terminal, after the
    /// completion number `after` (0 by default), long-polling up to `wait`.
    private func completionResults(_ request: Request, _ record: SessionRecord) async throws -> Response {
        let query = try CompletionQuery(request, maxWait: configuration.maxWait)
        let page = try await readCompletions(record.id, query, wait: query.wait)
        if query.wait > .zero { metrics.longPoll(foundData: !page.items.isEmpty) }
        return try Self.json(CompletionPageBody(page, inlineLimit: configuration.inlineOutputLimit))
    }

    /// `results/stream`: the session's results in completion order as NDJSON, one line per task as it
    /// becomes terminal, until the session is complete. Between results, a progress line
    /// (`{"complete":false,"next":…}`) every 15 s at most keeps proxies from closing the connection; the
    /// last line is `{"complete":true,…}`. A client that loses the connection resumes with
    /// `after=<next>` (the last `sequence` it got): nothing is skipped or repeated.
    private func resultStream(_ request: Request, _ context: ServerRequestContext) async throws -> Response {
        let record = try await ownedSession(context)
        let query = try CompletionQuery(request, maxWait: .seconds(15))
        let inlineLimit = configuration.inlineOutputLimit
        let body = ResponseBody { writer in
            var after = query.after
            while !Task.isShuttingDownGracefully {
                let page = try await self.readCompletions(record.id, CompletionQuery(query, after: after), wait: .seconds(15))
                var lines = ByteBuffer()
                for item in page.items {
                    lines.writeBytes(try Self.jsonLine(TaskBody(item.record, output: item.output, inlineLimit: inlineLimit)))
                }
                after = page.next
                if page.items.isEmpty || page.complete {
                    lines.writeBytes(try Self.jsonLine(StreamProgress(complete: page.complete, next: String(after), taskCount: page.taskCount)))
                }
                try await writer.write(lines)
                if page.complete { break }
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: body)
    }

    /// Reads one page in completion order, waiting for the next completion up to `wait` (ended early by
    /// a graceful shutdown).
    private func readCompletions(_ session: SessionID, _ query: CompletionQuery, wait: Duration) async throws -> CompletionPage {
        let read = { (wait: Duration) in
            try await self.client.completions(
                session, after: query.after, limit: query.limit, outputs: query.outputs,
                maxOutputBytes: self.configuration.resultsPageBytes, wait: wait)
        }
        var page = try await read(.zero)
        if page.items.isEmpty && !page.complete && wait > .zero && !Task.isShuttingDownGracefully {
            let client = self.client
            let after = query.after
            _ = try? await cancelWhenGracefulShutdown { try await client.backends.state.waitForCompletions(session, after: after, timeout: wait) }
            try Task.checkCancellation()
            page = try await read(.zero)
        }
        for state in TaskState.terminal {
            let count = page.items.filter { $0.record.state == state }.count
            if count > 0 { metrics.returned(count, state: state) }
        }
        return page
    }

    private static func jsonLine<Body: Encodable>(_ body: Body) throws -> [UInt8] {
        var bytes = try encoder.encode(body)
        bytes.append(UInt8(ascii: "\n"))
        return Array(bytes)
    }

    private func getTask(_ context: ServerRequestContext) async throws -> Response {
        let id = try await ownedTask(context)
        let record = try await client.task(id)
        let output = record.state == .finished ? try await client.output(id) : nil
        return try Self.json(TaskBody(record, output: output, inlineLimit: configuration.inlineOutputLimit))
    }

    private func getOutput(_ context: ServerRequestContext) async throws -> Response {
        let id = try await ownedTask(context)
        let output = try await client.output(id)
        return Response(
            status: .ok,
            headers: [.contentType: "application/octet-stream"],
            body: .init(byteBuffer: ByteBuffer(bytes: output))
        )
    }

    // MARK: - Helpers

    func visible(_ record: SessionRecord, to context: ServerRequestContext) -> Bool {
        guard let tenant = context.tenant else { return true }
        return record.options.labels[Self.tenantLabel] == tenant
    }

    /// The session named in the path, if the caller may see it; the same 404 otherwise, so a tenant
    /// cannot tell another tenant's session from a missing one.
    private func ownedSession(_ context: ServerRequestContext) async throws -> SessionRecord {
        let text = try context.parameters.require("session_id")
        return try await ownedSession(text, context, notFound: "session '\(text)' does not exist")
    }

    func ownedSession(_ text: String, _ context: ServerRequestContext, notFound message: String) async throws -> SessionRecord {
        guard let id = try? SessionID(text) else { throw GridError.notFound(message) }
        let record: SessionRecord
        do {
            record = try await client.session(id)
        } catch let error as GridError where error.code == .notFound {
            throw GridError.notFound(message)
        }
        guard visible(record, to: context) else { throw GridError.notFound(message) }
        return record
    }

    private func ownedTask(_ context: ServerRequestContext) async throws -> TaskID {
        let text = try context.parameters.require("task_id")
        guard let id = try? TaskID(text) else {
            throw GridError.invalidArgument("task id '\(text)' is not of the form <session>_<index>")
        }
        _ = try await ownedSession(id.session.rawValue, context, notFound: "task '\(text)' does not exist")
        return id
    }

    private func collect(_ request: Request) async throws -> Data {
        var request = request
        let buffer = try await request.collectBody(upTo: configuration.maxBodyBytes)
        return Data(buffer.readableBytesView)
    }

    /// The encoder of every JSON answer: sorted keys, dates in ISO 8601 with milliseconds.
    private static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        // Milliseconds matter: clients measure latencies from these timestamps.
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true)))
        }
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    static func json<Body: Encodable>(_ body: Body, status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try encoder.encode(body)
        return Response(
            status: status,
            headers: [.contentType: "application/json; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: data))
        )
    }

    static func string(_ request: Request, _ name: String) -> String? {
        guard let value = request.uri.queryParameters[Substring(name)], !value.isEmpty else { return nil }
        return String(value)
    }

    static func integer(
        _ request: Request, _ name: String, default fallback: Int, range: ClosedRange<Int>
    ) throws -> Int {
        guard let text = string(request, name) else { return fallback }
        guard let value = Int(text), range.contains(value) else {
            throw GridError.invalidArgument("\(name)=\(text): expected an integer from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    static func seconds(_ request: Request, _ name: String, max: Duration) throws -> Duration {
        guard let text = string(request, name) else { return .zero }
        guard let value = Double(text), value >= 0, value <= max.timeInterval else {
            throw GridError.invalidArgument("\(name)=\(text): expected a number of seconds from 0 to \(max.timeInterval)")
        }
        return Duration(timeInterval: value)
    }
}
