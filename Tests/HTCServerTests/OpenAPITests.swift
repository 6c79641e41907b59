import Foundation
import GridKernel
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

@Suite struct OpenAPITests {
    /// The document at the repository root, the source of truth.
    static func rootDocument() throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try String(contentsOf: root.appendingPathComponent("openapi.yaml"), encoding: .utf8)
    }

    /// `METHOD /path` for every operation under `paths:`.
    static func documentedOperations(_ yaml: String) -> Set<String> {
        var operations: Set<String> = []
        var inPaths = false
        var path: String?
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "paths:" {
                inPaths = true
                continue
            }
            guard inPaths else { continue }
            if let first = line.first, first != " " { break }
            if line.hasPrefix("  /"), line.hasSuffix(":"), !line.hasPrefix("   ") {
                path = String(line.dropFirst(2).dropLast())
            } else if line.hasPrefix("    "), !line.hasPrefix("     "), let path {
                let key = line.dropFirst(4).prefix { $0 != ":" }
                if ["get", "post", "put", "patch", "delete", "head"].contains(String(key)) {
                    operations.insert("\(key.uppercased()) \(path)")
                }
            }
        }
        return operations
    }

    @Test func theServedDocumentIsTheRepositorysOpenAPIFile() async throws {
        let expected = try Self.rootDocument()
        #expect(
            OpenAPIDocument.yaml.trimmingCharacters(in: .newlines) == expected.trimmingCharacters(in: .newlines),
            "openapi.yaml changed: run `make openapi` to embed it in the server"
        )
        let grid = TestGrid()
        try await grid.application(auth: .apiKeys(try AuthTests.keys())).test(.router) { client in
            let response = try await client.send(.get, "/openapi.yaml")
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "application/yaml; charset=utf-8")
            #expect(response.text == OpenAPIDocument.yaml)
        }
    }

    @Test func everyRouteIsDocumentedAndEveryDocumentedRouteExists() throws {
        let router = TestGrid().api.makeRouter(auth: .none, htcgrid: try HTCGridCompatibility())
        let registered = Set(router.routes.map { "\($0.method) \($0.path)" })
        let documented = Self.documentedOperations(try Self.rootDocument())
        #expect(registered.count >= 15)
        #expect(registered.subtracting(documented).isEmpty, "routes missing from openapi.yaml: \(registered.subtracting(documented).sorted())")
        #expect(documented.subtracting(registered).isEmpty, "documented but not served: \(documented.subtracting(registered).sorted())")
    }
}

/// Every JSON response of a tour through the API, success and error, matches openapi.yaml.
@Suite struct OpenAPIResponseTests {
    @Test func responsesMatchTheDocumentedSchemas() async throws {
        let grid = TestGrid(configuration: ServerConfiguration(maxTasksPerRequest: 5, inlineOutputLimit: 4))
        try await grid.application(auth: .apiKeys(try AuthTests.keys())).test(.router) { client in
            let schemas = try OpenAPISchemas()
            var checked = 0
            func check(_ method: HTTPRequest.Method, _ uri: String, _ template: String, json body: String? = nil, key: String? = "key-acme") async throws -> TestResponse {
                let response = try await client.send(method, uri, json: body, key: key)
                let schema = try schemas.responseSchema(path: template, method: method.rawValue, status: Int(response.status.code))
                let value = try JSONDecoder().decode(JSONValue.self, from: Data(response.body.readableBytesView))
                let problems = schemas.violations(of: schema, by: value)
                #expect(problems.isEmpty, "\(method) \(uri) → \(response.status.code): \(problems)")
                checked += 1
                return response
            }

            _ = try await check(.get, "/healthz", "/healthz")
            _ = try await check(.get, "/readyz", "/readyz")
            let created = try await check(.post, "/v1/sessions", "/v1/sessions", json: #"{"priority": 1, "task_timeout_seconds": 5, "labels": {"a": "b"}}"#)
            let session = try created.decode(SessionJSON.self).id
            _ = try await check(.get, "/v1/sessions?limit=1", "/v1/sessions")
            let tasks = #"{"tasks": [{"payload_base64": "aGVsbG8="}, {"payload_json": {"x": [1, 2.5, null]}}]}"#
            _ = try await check(.post, "/v1/sessions/\(session)/tasks", "/v1/sessions/{session_id}/tasks", json: tasks)
            try await withAgent(try grid.agent()) {
                try await waitUntil("both tasks finished") { try await grid.backends.state.counts(try SessionID(session))[.finished] == 2 }
            }
            _ = try await check(.get, "/v1/sessions/\(session)", "/v1/sessions/{session_id}")
            _ = try await check(.get, "/v1/sessions/\(session)/results?limit=1", "/v1/sessions/{session_id}/results")
            _ = try await check(.get, "/v1/sessions/\(session)/results?after=1&state=finished", "/v1/sessions/{session_id}/results")
            _ = try await check(.get, "/v1/tasks/\(session)_0", "/v1/tasks/{task_id}")

            // Errors.
            _ = try await check(.get, "/v1/sessions", "/v1/sessions", key: nil)
            _ = try await check(.post, "/v1/sessions", "/v1/sessions", json: #"{"colour": "red"}"#)
            _ = try await check(.get, "/v1/sessions/missing", "/v1/sessions/{session_id}")
            _ = try await check(.get, "/v1/sessions/\(session)/results?after=x", "/v1/sessions/{session_id}/results")
            _ = try await check(.get, "/v1/tasks/nonsense", "/v1/tasks/{task_id}")
            let six = Array(repeating: #"{"payload_json": 1}"#, count: 6).joined(separator: ",")
            _ = try await check(.post, "/v1/sessions/\(session)/tasks", "/v1/sessions/{session_id}/tasks", json: #"{"tasks": [\#(six)]}"#)
            _ = try await check(.post, "/v1/sessions/\(session)/cancel", "/v1/sessions/{session_id}/cancel")
            _ = try await check(.post, "/v1/sessions/\(session)/tasks", "/v1/sessions/{session_id}/tasks", json: tasks)
            #expect(checked == 17)
        }
    }
}

@Suite struct OpenAPIValidatorTests {
    /// The validator must find what is wrong, or the response test would pass on anything.
    @Test func theValidatorFindsViolations() throws {
        let schemas = try OpenAPISchemas()
        let session = try schemas.responseSchema(path: "/v1/sessions/{session_id}", method: "GET", status: 200)
        let wrong = try JSONDecoder().decode(
            JSONValue.self,
            from: Data(#"{"priority": "high", "max_retries": 1.5, "labels": {"a": 1}, "created_at": "x", "task_count": 0, "cancelled": false, "extra": true, "counts": {"pending": 0}}"#.utf8)
        )
        let problems = schemas.violations(of: session, by: wrong)
        for expected in ["$.id: required", "$.priority: expected", "$.max_retries: expected", "$.labels.a: expected", "$.extra: not in the schema", "$.counts.finished: required"] {
            #expect(problems.contains { $0.hasPrefix(expected) }, "\(expected) not found in \(problems)")
        }
        let error = try schemas.responseSchema(path: "/v1/sessions", method: "POST", status: 400)
        let badCode = try JSONDecoder().decode(JSONValue.self, from: Data(#"{"error": {"code": "oops", "message": "m"}}"#.utf8))
        #expect(schemas.violations(of: error, by: badCode).count == 1)
        let task = try schemas.responseSchema(path: "/v1/sessions/{session_id}/tasks", method: "POST", status: 201)
        let good = try JSONDecoder().decode(JSONValue.self, from: Data(#"{"session_id": "s", "task_ids": ["s_0"]}"#.utf8))
        #expect(schemas.violations(of: task, by: good).isEmpty)
    }
}
