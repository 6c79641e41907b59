import Foundation
import GridKernel
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

/// HTC-Grid's REST API as its Python connector drives it (docs/server.md, "HTC-Grid compatibility"):
/// the data plane is written and read here in the connector's encodings, independently of the server's
/// codec, straight into the store that holds the encoded values.
@Suite struct HTCGridCompatTests {
    let dataPlane = InMemoryPayloadStore()
    let grid: TestGrid
    let compat = try! HTCGridCompatibility()

    init() {
        grid = TestGrid(dataPlane: dataPlane)
    }

    /// Python's `json.dumps` of `{"x": i}`.
    static func event(_ index: Int) -> String { #"{"x": \#(index)}"# }

    /// `base64.urlsafe_b64encode(json.dumps(object).encode())`, then URL-encoded as the generated client does.
    static func content(_ json: String) -> String {
        let urlsafe = Data(json.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        return urlsafe.replacingOccurrences(of: "=", with: "%3D")
    }

    /// What `AWSConnector.generate_user_task_json` + `submit` store: each input, then the submission.
    func store(session: String, count: Int, priority: Int? = nil, ids: [String]? = nil) async throws {
        for index in 0..<count {
            try await dataPlane.put("\(session)_\(index)-input", Array(Data(Self.event(index).utf8).base64EncodedString().utf8))
        }
        let tasks = (ids ?? (0..<count).map { "\(session)_\($0)" }).map { "\"\($0)\"" }.joined(separator: ", ")
        var submission = #"{"session_id": "\#(session)", "scheduler_data": {"task_timeout_sec": 3600, "retry_count": 5, "#
            + #""tstamp_api_grid_connector_ms": 0, "tstamp_agent_read_from_sqs_ms": 0}, "#
            + #""stats": {"stage1_grid_api_01_task_creation_tstmp": {"label": " ", "tstmp": 1764115200000}}, "#
            + #""tasks_list": {"tasks": [\#(tasks)]}"#
        if let priority { submission += #", "context": {"tasks_priority": \#(priority)}"# }
        submission += "}"
        let urlsafe = Data(submission.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        try await dataPlane.put("\(session)-payload", Array(urlsafe.utf8))
    }

    static func newSession() -> String { UUID().uuidString.lowercased() }

    /// A 200 answer matches its schema in openapi.yaml.
    static func expectDocumented(_ response: TestResponse, _ method: String, _ path: String) throws {
        let schemas = try OpenAPISchemas()
        let schema = try schemas.responseSchema(path: path, method: method, status: Int(response.status.code))
        let value = try JSONDecoder().decode(JSONValue.self, from: Data(response.body.readableBytesView))
        let problems = schemas.violations(of: schema, by: value)
        #expect(problems.isEmpty, "\(method) \(path): \(problems)")
    }

    struct ResultJSON: Decodable {
        struct Metadata: Decodable { var tasks_in_response: Int }
        var finished: [String]
        var finished_OUTPUT: [String]
        var cancelled: [String]
        var cancelled_OUTPUT: [String]
        var failed: [String]
        var failed_OUTPUT: [String]
        var metadata: Metadata
    }

    struct CancelJSON: Decodable {
        var cancelled_pending: Int
        var cancelled_processing: Int
        var total_cancelled_tasks: Int
    }

    @Test func submitResultsAndOutputsAsTheConnectorReadsThem() async throws {
        let session = Self.newSession()
        try await store(session: session, count: 3, priority: 2)
        try await grid.application(auth: .apiKeys(try AuthTests.keys()), htcgrid: compat).test(.router) { client in
            let submitted = try await client.send(.post, "/v1/submit?submission_content=\(session)", key: "key-acme")
            #expect(submitted.status == .ok, "\(submitted.text)")
            try Self.expectDocumented(submitted, "POST", "/v1/submit")
            let body = try submitted.decode(SubmitJSON.self)
            #expect(body.session_id == session)
            #expect(body.task_ids == (0..<3).map { "\(session)_\($0)" })
            let record = try await grid.backends.state.session(SessionID(session))
            #expect(record.options.priority == 2)
            #expect(record.options.maxRetries == 5)
            #expect(record.options.taskTimeout == .seconds(3600))
            #expect(record.options.labels[GridAPI.tenantLabel] == "acme")

            let query = "/v1/result?submission_content=\(Self.content(#"{"session_id": "\#(session)"}"#))"
            let before = try await client.send(.get, query, key: "key-acme").decode(ResultJSON.self)
            #expect(before.metadata.tasks_in_response == 0)
            #expect(before.finished.isEmpty && before.finished_OUTPUT.isEmpty)

            try await withAgent(try grid.agent()) {
                try await waitUntil("the three tasks finished") { try await grid.backends.state.counts(SessionID(session))[.finished] == 3 }
            }
            let response = try await client.send(.get, query, key: "key-acme")
            #expect(response.status == .ok)
            try Self.expectDocumented(response, "GET", "/v1/result")
            let result = try response.decode(ResultJSON.self)
            #expect(result.finished.sorted() == body.task_ids)
            #expect(result.finished_OUTPUT == ["read_from_dataplane", "read_from_dataplane", "read_from_dataplane"])
            #expect(result.cancelled.isEmpty && result.cancelled_OUTPUT.isEmpty && result.failed.isEmpty && result.failed_OUTPUT.isEmpty)
            #expect(result.metadata.tasks_in_response == 3)
            // The connector reads base64(text) under <task_id>-output; the echo agent ran the decoded event.
            for (index, id) in body.task_ids.enumerated() {
                let stored = try await dataPlane.get("\(id)-output")
                #expect(decodeBase64(String(decoding: stored, as: UTF8.self)) == Self.event(index))
            }
            // Deleting the session through API v1 clears HTC-Grid's keys from the data plane too.
            #expect(try await client.send(.delete, "/v1/sessions/\(session)", key: "key-acme").status == .ok)
            let keys = body.task_ids.flatMap { ["\($0)-input", "\($0)-output"] } + ["\(session)-payload"]
            #expect(try await dataPlane.get(keys).isEmpty)
        }
    }

    @Test func cancelAnswersHTCGridsCounters() async throws {
        let session = Self.newSession()
        try await store(session: session, count: 2)
        try await grid.application(auth: .apiKeys(try AuthTests.keys()), htcgrid: compat).test(.router) { client in
            #expect(try await client.send(.post, "/v1/submit?submission_content=\(session)", key: "key-acme").status == .ok)
            let unknown = Self.newSession()
            let content = Self.content(#"{"session_ids_to_cancel": ["\#(session)", "\#(unknown)"]}"#)
            let response = try await client.send(.post, "/v1/cancel?submission_content=\(content)", key: "key-acme")
            #expect(response.status == .ok, "\(response.text)")
            try Self.expectDocumented(response, "POST", "/v1/cancel")
            let counts = try response.decode([String: CancelJSON].self)
            #expect(counts.count == 2)
            #expect(counts[session]?.cancelled_pending == 2)
            #expect(counts[session]?.cancelled_processing == 0)
            #expect(counts[session]?.total_cancelled_tasks == 2)
            #expect(counts[unknown]?.total_cancelled_tasks == 0)

            let result = try await client.send(.get, "/v1/result?submission_content=\(Self.content(#"{"session_id": "\#(session)"}"#))", key: "key-acme")
                .decode(ResultJSON.self)
            #expect(result.cancelled.sorted() == ["\(session)_0", "\(session)_1"])
            #expect(result.cancelled_OUTPUT.count == 2)
            #expect(result.metadata.tasks_in_response == 2)
        }
    }

    @Test func errorsArePlainTextWithHTCGridsStatuses() async throws {
        let session = Self.newSession()
        try await grid.application(auth: .apiKeys(try AuthTests.keys()), htcgrid: compat).test(.router) { client in
            func expectError(_ method: HTTPRequest.Method, _ uri: String, _ status: Int, mentioning text: String) async throws {
                let response = try await client.send(method, uri, key: "key-acme")
                #expect(Int(response.status.code) == status, "\(uri): \(response.status) \(response.text)")
                #expect(response.headers[.contentType] == "text/plain; charset=utf-8")
                #expect(response.text.contains(text), "\(uri): \(response.text)")
            }
            try await expectError(.post, "/v1/submit", 543, mentioning: "submission_content")
            try await expectError(.post, "/v1/submit?submission_content=\(session)", 543, mentioning: "\(session)-payload")
            try await expectError(.post, "/v1/submit?submission_content=a_b", 543, mentioning: "session id")

            // A submission naming tasks the grid would number differently is refused whole.
            try await store(session: session, count: 2, ids: ["\(session)_0", "\(session)_7"])
            try await expectError(.post, "/v1/submit?submission_content=\(session)", 543, mentioning: "tasks_list.tasks[1]")
            await #expect(throws: GridError.self) { try await grid.backends.state.session(SessionID(session)) }

            try await store(session: session, count: 2)
            let first = try await client.send(.post, "/v1/submit?submission_content=\(session)", key: "key-acme")
            #expect(first.status == .ok)
            // The same submission sent again (a timeout, a restarted server) gets the same answer.
            let again = try await client.send(.post, "/v1/submit?submission_content=\(session)", key: "key-acme")
            #expect(again.status == .ok)
            #expect(again.text == first.text)
            #expect(try await grid.backends.state.session(SessionID(session)).taskCount == 2)
            // Another tenant is refused as if the id were unknown (TenantIsolationTests compares the
            // answers); another task list under the same id is refused.
            let foreignSubmit = try await client.send(.post, "/v1/submit?submission_content=\(session)", key: "key-globex")
            #expect(Int(foreignSubmit.status.code) == 543 && foreignSubmit.text.contains("no submission under"), "\(foreignSubmit.text)")
            try await store(session: session, count: 3)
            try await expectError(.post, "/v1/submit?submission_content=\(session)", 543, mentioning: "idempotency key")

            try await expectError(.get, "/v1/result?submission_content=not%20base64!", 542, mentioning: "base64")
            try await expectError(.get, "/v1/result?submission_content=\(Self.content(#"{"session": "x"}"#))", 542, mentioning: "session_id")
            try await expectError(.post, "/v1/cancel?submission_content=\(Self.content(#"{"ids": []}"#))", 542, mentioning: "session_ids_to_cancel")

            // Credentials are checked before anything else, as API Gateway does; another tenant sees no tasks.
            #expect(try await client.send(.post, "/v1/submit?submission_content=\(session)").status == .unauthorized)
            let foreign = try await client.send(.get, "/v1/result?submission_content=\(Self.content(#"{"session_id": "\#(session)"}"#))", key: "key-globex")
            #expect(try foreign.decode(ResultJSON.self).metadata.tasks_in_response == 0)
            let cancel = try await client.send(
                .post, "/v1/cancel?submission_content=\(Self.content(#"{"session_ids_to_cancel": ["\#(session)"]}"#))", key: "key-globex"
            )
            #expect(try cancel.decode([String: CancelJSON].self)[session]?.total_cancelled_tasks == 0)
            #expect(try await grid.backends.state.counts(SessionID(session))[.pending] == 2)
        }
    }

    @Test func aRawCognitoStyleTokenAndAnotherBasePath() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-compat-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let jwks = directory.appendingPathComponent("jwks.json").path
        let issuer = try TokenIssuer.rs256("pool-key")
        try TokenIssuer.writeKeySet([issuer], to: jwks)
        let verifier = try await JWTVerifier(configuration: JWTConfiguration(jwksPath: jwks, audience: "app-client", tenantClaim: "cognito:username"))
        let token = try issuer.token([
            "sub": "u-1", "cognito:username": "alice", "aud": "app-client", "token_use": "id",
            "exp": Int(Date().timeIntervalSince1970) + 3600,
        ])
        let session = Self.newSession()
        try await store(session: session, count: 1)
        try await grid.application(auth: .jwt(verifier), htcgrid: try HTCGridCompatibility(basePath: "/prod/api")).test(.router) { client in
            #expect(try await client.send(.post, "/v1/submit?submission_content=\(session)", authorization: token).status == .notFound)
            #expect(try await client.send(.post, "/prod/api/submit?submission_content=\(session)").status == .unauthorized)
            let submitted = try await client.send(.post, "/prod/api/submit?submission_content=\(session)", authorization: token)
            #expect(submitted.status == .ok, "\(submitted.text)")
            #expect(try await grid.backends.state.session(SessionID(session)).options.labels[GridAPI.tenantLabel] == "alice")
        }
    }
}

@Suite struct HTCGridPayloadStoreTests {
    @Test func valuesAreStoredInHTCGridsEncodings() async throws {
        let base = InMemoryPayloadStore()
        let store = HTCGridPayloadStore(base)
        // Bytes whose base64 holds '+' and '/', so the URL-safe alphabet shows.
        let value: [UInt8] = [0xfb, 0xff, 0xbf, 0x7b, 0x22, 0x61]
        try await store.put([
            PayloadItem(key: "s_0-input", value: value), PayloadItem(key: "s_0-output", value: value),
            PayloadItem(key: "s-payload", value: value), PayloadItem(key: "other", value: value),
        ])
        #expect(String(decoding: try await base.get("s_0-input"), as: UTF8.self) == "+/+/eyJh")
        #expect(String(decoding: try await base.get("s_0-output"), as: UTF8.self) == "+/+/eyJh")
        #expect(String(decoding: try await base.get("s-payload"), as: UTF8.self) == "-_-_eyJh")
        #expect(try await base.get("other") == value)
        #expect(try await store.get(["s_0-input", "s_0-output", "s-payload", "other", "missing"]) == [
            "s_0-input": value, "s_0-output": value, "s-payload": value, "other": value,
        ])
        // Python pads URL-safe base64; unpadded text decodes too; text that is not base64 comes back as it is.
        try await base.put("t-payload", Array("eyJhIjoxfQ==".utf8))
        try await base.put("u-payload", Array("eyJhIjoxfQ".utf8))
        try await base.put("v_0-input", Array("{not base64}".utf8))
        let read = try await store.get(["t-payload", "u-payload", "v_0-input"])
        #expect(read["t-payload"].map { String(decoding: $0, as: UTF8.self) } == #"{"a":1}"#)
        #expect(read["u-payload"].map { String(decoding: $0, as: UTF8.self) } == #"{"a":1}"#)
        #expect(read["v_0-input"].map { String(decoding: $0, as: UTF8.self) } == "{not base64}")
    }
}
