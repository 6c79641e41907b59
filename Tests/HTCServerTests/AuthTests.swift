import Foundation
import GridKernel
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

@Suite struct AuthTests {
    static func keys() throws -> APIKeyStore {
        try APIKeyStore(fileContents: "# tenants\nacme:key-acme\n\nglobex:key-globex\n")
    }

    @Test func missingOrWrongKeyIs401() async throws {
        let grid = TestGrid()
        try await grid.application(auth: .apiKeys(try Self.keys())).test(.router) { client in
            let missing = try await client.send(.get, "/v1/sessions")
            #expect(missing.status == .unauthorized)
            #expect(try missing.decode(ErrorJSON.self).error.code == "unauthorized")
            let wrong = try await client.send(.post, "/v1/sessions", key: "key-nobody")
            #expect(wrong.status == .unauthorized)
            #expect(try await grid.backends.state.sessions(after: nil, limit: 10).items.isEmpty)
            // Health needs no key: load balancers and probes have none.
            #expect(try await client.send(.get, "/healthz").status == .ok)
            #expect(try await client.send(.get, "/readyz").status == .ok)
        }
    }

    @Test func bearerTokenIsAcceptedToo() async throws {
        let grid = TestGrid()
        try await grid.application(auth: .apiKeys(try Self.keys())).test(.router) { client in
            let response = try await client.execute(uri: "/v1/sessions", method: .get, headers: [.authorization: "Bearer key-acme"])
            #expect(response.status == .ok)
        }
    }

    @Test func anotherTenantsSessionIs404() async throws {
        let grid = TestGrid()
        try await grid.application(auth: .apiKeys(try Self.keys())).test(.router) { client in
            let created = try await client.send(.post, "/v1/sessions", key: "key-acme")
            #expect(created.status == .created)
            let session = try created.decode(SessionJSON.self)
            #expect(session.tenant == "acme")
            #expect(session.labels.isEmpty)
            let submitted = try await client.send(
                .post, "/v1/sessions/\(session.id)/tasks", json: #"{"tasks": [{"payload_json": 1}]}"#, key: "key-acme"
            )
            #expect(submitted.status == .created)
            let task = try submitted.decode(SubmitJSON.self).task_ids[0]

            #expect(try await client.send(.get, "/v1/sessions/\(session.id)", key: "key-acme").status == .ok)
            #expect(try await client.send(.get, "/v1/tasks/\(task)", key: "key-acme").status == .ok)

            let requests: [(HTTPRequest.Method, String, String?)] = [
                (.get, "/v1/sessions/\(session.id)", nil),
                (.get, "/v1/sessions/\(session.id)/results", nil),
                (.post, "/v1/sessions/\(session.id)/tasks", #"{"tasks": [{"payload_json": 2}]}"#),
                (.post, "/v1/sessions/\(session.id)/cancel", nil),
                (.get, "/v1/tasks/\(task)", nil),
                (.get, "/v1/tasks/\(task)/output", nil),
            ]
            let unknown = try await client.send(.get, "/v1/sessions/00000000-0000-0000-0000-000000000000", key: "key-globex")
            for (method, uri, body) in requests {
                let response = try await client.send(method, uri, json: body, key: "key-globex")
                #expect(response.status == .notFound, "\(method) \(uri)")
                #expect(try response.decode(ErrorJSON.self).error.code == "not_found")
            }
            #expect(unknown.status == .notFound)

            let listed = try await client.send(.get, "/v1/sessions", key: "key-globex").decode(PageJSON<SessionJSON>.self)
            #expect(listed.items.isEmpty)
            let own = try await client.send(.get, "/v1/sessions", key: "key-acme").decode(PageJSON<SessionJSON>.self)
            #expect(own.items.map(\.id) == [session.id])

            // Nothing the other tenant did had an effect.
            let counts = try await grid.backends.state.counts(try SessionID(session.id))
            #expect(counts[.pending] == 1)
            #expect(counts.total == 1)
        }
    }

    @Test func keyFilesAreParsedAndChecked() throws {
        let store = try Self.keys()
        #expect(store.count == 2)
        #expect(store.tenant(forKey: "key-acme") == "acme")
        #expect(store.tenant(forKey: "key-globex") == "globex")
        #expect(store.tenant(forKey: "key-acme ") == nil)
        #expect(throws: GridError.self) { try APIKeyStore(fileContents: "no-colon\n") }
        #expect(throws: GridError.self) { try APIKeyStore(fileContents: "acme:\n") }
        #expect(throws: GridError.self) { try APIKeyStore(fileContents: "a:same\nb:same\n") }
        #expect(throws: GridError.self) { try APIKeyStore(fileContents: "bad tenant:k\n") }
        #expect(throws: GridError.self) { try APIKeyStore(fileContents: "# only a comment\n") }
    }
}
