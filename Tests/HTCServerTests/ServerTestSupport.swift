import Foundation
import Synchronization
import GridKernel
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore

@testable import HTCServer

/// A grid on in-memory backends with the API over it.
struct TestGrid {
    let backends: GridBackends
    let clock: ManualClock
    let api: GridAPI

    /// `clock` drives only the server's long-poll; the backends and agents run on real time. With
    /// `dataPlane`, payloads live in that store in HTC-Grid's layout (the store holds the encoded values).
    init(configuration: ServerConfiguration = ServerConfiguration(), dataPlane: InMemoryPayloadStore? = nil) {
        let payloads: any PayloadStore = dataPlane.map { HTCGridPayloadStore($0) } ?? InMemoryPayloadStore()
        backends = GridBackends(queue: InMemoryTaskQueue(), state: InMemoryStateStore(), payloads: payloads)
        clock = ManualClock()
        api = GridAPI(client: GridClient(backends: backends), configuration: configuration, clock: clock)
    }

    /// The server on this grid; `port: 0` picks a free port for live tests. It binds 127.0.0.1 only.
    func application(auth: AuthMode = .none, htcgrid: HTCGridCompatibility? = nil, logger: Logger? = nil) -> some ApplicationProtocol {
        Application(
            router: api.makeRouter(auth: auth, htcgrid: htcgrid),
            configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: 0)),
            logger: logger
        )
    }

    /// An agent with short intervals, echoing its input.
    func agent() throws -> Agent {
        try Agent(
            backends: backends,
            handler: EchoHandler(),
            configuration: AgentConfiguration(
                id: AgentID("test-agent"),
                concurrency: 4,
                leaseDuration: .seconds(5),
                heartbeatInterval: .milliseconds(100),
                idleBackoff: .milliseconds(1) ... .milliseconds(5),
                retryDelay: .milliseconds(1),
                drainTimeout: .seconds(5)
            )
        )
    }
}

/// Runs an agent for the duration of `body`, then stops it gracefully and waits for it.
func withAgent<Result: Sendable>(_ agent: Agent, _ body: () async throws -> Result) async throws -> Result {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await agent.run() }
        do {
            let result = try await body()
            agent.stop()
            try await group.waitForAll()
            return result
        } catch {
            group.cancelAll()
            throw error
        }
    }
}

/// Waits until `condition` holds, polling, or fails after `timeout` of real time.
func waitUntil(timeout: Duration = .seconds(20), _ what: String, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw TimedOut(what: what) }
        try await Task.sleep(for: .milliseconds(5))
    }
}

struct TimedOut: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting until \(what)" }
}

extension TestClientProtocol {
    /// Sends a request with an optional JSON body, API key and raw `Authorization` value.
    func send(
        _ method: HTTPRequest.Method, _ uri: String, json body: String? = nil, key: String? = nil, authorization: String? = nil,
        idempotencyKey: String? = nil
    ) async throws -> TestResponse {
        var headers: HTTPFields = [:]
        if let idempotencyKey { headers[HTTPField.Name("Idempotency-Key")!] = idempotencyKey }
        if body != nil { headers[.contentType] = "application/json" }
        if let key { headers[HTTPField.Name("x-api-key")!] = key }
        if let authorization { headers[.authorization] = authorization }
        return try await execute(uri: uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) })
    }
}

extension TestResponse {
    /// The body decoded as `T`.
    func decode<T: Decodable>(_ type: T.Type = T.self) throws -> T {
        try JSONDecoder().decode(type, from: Data(body.readableBytesView))
    }

    /// The body as text.
    var text: String { String(buffer: body) }
}

struct SessionJSON: Decodable, Sendable {
    var id: String
    var tenant: String?
    var priority: Int
    var max_retries: Int
    var task_timeout_seconds: Double?
    var labels: [String: String]
    var task_count: Int
    var cancelled: Bool
    var counts: [String: Int]?
}

struct SubmitJSON: Decodable {
    var session_id: String
    var task_ids: [String]
}

struct TaskJSON: Decodable, Sendable {
    var task_id: String
    var session_id: String
    var state: String
    var retries: Int
    var output_base64: String?
    var output_size: Int?
    var output_url: String?
    var last_error: String?
    var sequence: Int?
}

struct PageJSON<Item: Decodable & Sendable>: Decodable, Sendable {
    var items: [Item]
    var next: String?
    var has_more: Bool
    var complete: Bool?
    var task_count: Int?
}

struct ErrorJSON: Decodable {
    struct Detail: Decodable {
        var code: String
        var message: String
    }

    var error: Detail
}

func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

func decodeBase64(_ text: String?) -> String? {
    text.flatMap { Data(base64Encoded: $0) }.map { String(decoding: $0, as: UTF8.self) }
}

/// A log handler that keeps every line, for tests that read the log.
final class CapturedLog: Sendable {
    private let lines = Mutex<[String]>([])

    var text: String { lines.withLock { $0.joined(separator: "\n") } }

    func logger() -> Logger {
        var logger = Logger(label: "test") { _ in Handler(log: self) }
        logger.logLevel = .trace
        return logger
    }

    struct Handler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var all = metadata
            if let extra = event.metadata { all.merge(extra) { $1 } }
            let fields = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            log.lines.withLock { $0.append("\(event.level) \(event.message) \(fields)") }
        }
    }
}
