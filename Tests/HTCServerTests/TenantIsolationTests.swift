import Foundation
import GridKernel
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

/// A tenant cannot tell another tenant's session from one that does not exist: every route, of API v1
/// and of HTC-Grid's API, answers both alike (status, headers, body); and the access log names the tenant.
@Suite struct TenantIsolationTests {
    let dataPlane = InMemoryPayloadStore()
    let grid: TestGrid
    let compat = try! HTCGridCompatibility()

    init() {
        grid = TestGrid(dataPlane: dataPlane)
    }

    /// The requests that name a session (or its first task), for session id `id`.
    static func requests(_ id: String) -> [(HTTPRequest.Method, String, String?)] {
        let result = HTCGridCompatTests.content(#"{"session_id": "\#(id)"}"#)
        let cancel = HTCGridCompatTests.content(#"{"session_ids_to_cancel": ["\#(id)"]}"#)
        return [
            (.get, "/v1/sessions/\(id)", nil),
            (.get, "/v1/sessions/\(id)/results", nil),
            (.get, "/v1/sessions/\(id)/results?state=pending&limit=5", nil),
            (.post, "/v1/sessions/\(id)/tasks", #"{"tasks": [{"payload_json": 2}]}"#),
            (.post, "/v1/sessions/\(id)/cancel", nil),
            (.delete, "/v1/sessions/\(id)", nil),
            (.get, "/v1/tasks/\(id)_0", nil),
            (.get, "/v1/tasks/\(id)_0/output", nil),
            (.post, "/v1/submit?submission_content=\(id)", nil),
            (.get, "/v1/result?submission_content=\(result)", nil),
            (.post, "/v1/cancel?submission_content=\(cancel)", nil),
        ]
    }

    /// Status, headers but the request id, and body with the session id written as `SESSION`.
    static func answer(_ response: TestResponse, session: String) -> String {
        var headers = response.headers
        headers[AccessLogMiddleware.requestIDHeader] = nil
        let lines = headers.map { "\($0.name.canonicalName): \($0.value)" }.sorted()
        return "\(response.status.code)\n\(lines.joined(separator: "\n"))\n\(response.text.replacingOccurrences(of: session, with: "SESSION"))"
    }

    @Test func anotherTenantsSessionAnswersAsAnUnknownOne() async throws {
        // acme's session, submitted through HTC-Grid's API so that every route has something to find.
        let owned = HTCGridCompatTests.newSession()
        for index in 0..<2 {
            try await dataPlane.put("\(owned)_\(index)-input", Array(Data(HTCGridCompatTests.event(index).utf8).base64EncodedString().utf8))
        }
        // urlsafe_b64encode(json.dumps(submission)), as the connector stores it.
        let submission = #"{"session_id": "\#(owned)", "tasks_list": {"tasks": ["\#(owned)_0", "\#(owned)_1"]}}"#
        let urlsafe = Data(submission.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        try await dataPlane.put("\(owned)-payload", Array(urlsafe.utf8))
        let unknown = HTCGridCompatTests.newSession()
        try await grid.application(auth: .apiKeys(try AuthTests.keys()), htcgrid: compat).test(.router) { client in
            let submitted = try await client.send(.post, "/v1/submit?submission_content=\(owned)", key: "key-acme")
            #expect(submitted.status == .ok, "\(submitted.text)")

            for (method, path, body) in Self.requests(owned) {
                let foreign = try await client.send(method, path, json: body, key: "key-globex")
                let unknownPath = path.replacingOccurrences(of: owned, with: unknown)
                    .replacingOccurrences(of: HTCGridCompatTests.content(#"{"session_id": "\#(owned)"}"#), with: HTCGridCompatTests.content(#"{"session_id": "\#(unknown)"}"#))
                    .replacingOccurrences(
                        of: HTCGridCompatTests.content(#"{"session_ids_to_cancel": ["\#(owned)"]}"#),
                        with: HTCGridCompatTests.content(#"{"session_ids_to_cancel": ["\#(unknown)"]}"#))
                let missing = try await client.send(method, unknownPath, json: body, key: "key-globex")
                #expect(
                    Self.answer(foreign, session: owned) == Self.answer(missing, session: unknown),
                    "\(method) \(path): another tenant's session and an unknown one must answer alike"
                )
            }

            // Nothing globex sent touched acme's session.
            let id = try SessionID(owned)
            #expect(try await grid.backends.state.counts(id)[.pending] == 2)
            #expect(try await grid.backends.state.session(id).cancelled == false)
            #expect(try await client.send(.get, "/v1/sessions/\(owned)", key: "key-acme").status == .ok)
        }
    }

    @Test func theAccessLogNamesTheTenant() async throws {
        let log = CapturedLog()
        try await grid.application(auth: .apiKeys(try AuthTests.keys()), htcgrid: compat, logger: log.logger()).test(.router) { client in
            let created = try await client.send(.post, "/v1/sessions", key: "key-acme")
            #expect(created.status == .created)
            #expect(try await client.send(.get, "/v1/sessions", key: "key-globex").status == .ok)
            #expect(try await client.send(.get, "/v1/sessions", key: "key-nobody").status == .unauthorized)
            #expect(try await client.send(.get, "/healthz").status == .ok)
        }
        let requests = log.text.split(separator: "\n").filter { $0.contains(" request ") }
        let line = { (method: String, path: String, status: Int) in
            requests.first { $0.contains("method=\(method) ") && $0.contains("path=\(path) ") && $0.contains("status=\(status)") }
        }
        #expect(line("POST", "/v1/sessions", 201)?.contains("tenant=acme") == true, "\(log.text)")
        #expect(line("GET", "/v1/sessions", 200)?.contains("tenant=globex") == true, "\(log.text)")
        // Without a valid key, or on a route without authentication, there is no tenant to name.
        #expect(line("GET", "/v1/sessions", 401).map { !$0.contains("tenant=") } == true, "\(log.text)")
        #expect(line("GET", "/healthz", 200).map { !$0.contains("tenant=") } == true, "\(log.text)")
        #expect(!log.text.contains("key-acme"), "keys never reach the log")
    }
}
