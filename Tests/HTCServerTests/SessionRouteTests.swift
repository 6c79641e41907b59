import Foundation
import GridKernel
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

@Suite struct SessionRouteTests {
    @Test func healthAndReadiness() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let health = try await client.send(.get, "/healthz")
            #expect(health.status == .ok)
            #expect(health.text.contains("ok"))
            let ready = try await client.send(.get, "/readyz")
            #expect(ready.status == .ok)
        }
    }

    @Test func createGetAndCancelASession() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let created = try await client.send(
                .post, "/v1/sessions",
                json: #"{"priority": 3, "max_retries": 2, "task_timeout_seconds": 1.5, "labels": {"team": "risk"}}"#
            )
            #expect(created.status == .created)
            let session = try created.decode(SessionJSON.self)
            #expect(session.priority == 3)
            #expect(session.max_retries == 2)
            #expect(session.task_timeout_seconds == 1.5)
            #expect(session.labels == ["team": "risk"])
            let createdAt = try #require(created.text.firstMatch(of: /"created_at":"([^"]+)"/)?.output.1)
            #expect(createdAt.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/) != nil, "\(createdAt)")

            let fetched = try await client.send(.get, "/v1/sessions/\(session.id)")
            #expect(fetched.status == .ok)
            let counts = try fetched.decode(SessionJSON.self).counts
            #expect(counts == ["pending": 0, "processing": 0, "finished": 0, "failed": 0, "cancelled": 0])

            let submitted = try await client.send(
                .post, "/v1/sessions/\(session.id)/tasks", json: #"{"tasks": [{"payload_json": 1}, {"payload_json": 2}]}"#
            )
            #expect(submitted.status == .created)

            let cancelled = try await client.send(.post, "/v1/sessions/\(session.id)/cancel")
            #expect(cancelled.status == .ok)
            #expect(cancelled.text.contains(#""total_cancelled":2"#))
            let after = try await client.send(.get, "/v1/sessions/\(session.id)").decode(SessionJSON.self)
            #expect(after.cancelled)
            #expect(after.counts?["cancelled"] == 2)

            let refused = try await client.send(.post, "/v1/sessions/\(session.id)/tasks", json: #"{"tasks": [{"payload_json": 3}]}"#)
            #expect(refused.status == .conflict)
            #expect(try refused.decode(ErrorJSON.self).error.code == "conflict")
        }
    }

    @Test func deleteRemovesTheSessionItsTasksAndTheirPayloads() async throws {
        let grid = TestGrid()
        try await grid.application(auth: .apiKeys(try AuthTests.keys())).test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions", json: "{}", key: "key-acme").decode(SessionJSON.self)
            // 10 KiB is over the inline limits of the client and the agent: input and output go to the payload store.
            let large = String(repeating: "x", count: 10 * 1024)
            let tasks = #"{"tasks": [{"payload_base64": "\#(base64("small"))"}, {"payload_base64": "\#(base64(large))"}]}"#
            let ids = try await client.send(.post, "/v1/sessions/\(session.id)/tasks", json: tasks, key: "key-acme").decode(SubmitJSON.self).task_ids
            try await withAgent(try grid.agent()) {
                try await waitUntil("both tasks finished") { try await grid.backends.state.counts(SessionID(session.id))[.finished] == 2 }
            }
            let keys = ids.flatMap { ["\($0)-input", "\($0)-output", "\($0)-output.1"] }
            #expect(try await grid.backends.payloads.get(keys).keys.sorted() == ["\(ids[1])-input", "\(ids[1])-output.1"])

            #expect(try await client.send(.delete, "/v1/sessions/\(session.id)", key: "key-globex").status == .notFound)
            let deleted = try await client.send(.delete, "/v1/sessions/\(session.id)", key: "key-acme")
            #expect(deleted.status == .ok, "\(deleted.text)")
            try HTCGridCompatTests.expectDocumented(deleted, "DELETE", "/v1/sessions/{session_id}")
            #expect(deleted.text == #"{"deleted_tasks":2,"session_id":"\#(session.id)"}"#)
            #expect(try await client.send(.get, "/v1/sessions/\(session.id)", key: "key-acme").status == .notFound)
            #expect(try await client.send(.get, "/v1/tasks/\(ids[0])", key: "key-acme").status == .notFound)
            #expect(try await grid.backends.payloads.get(keys).isEmpty)
            #expect(try await client.send(.delete, "/v1/sessions/\(session.id)", key: "key-acme").status == .notFound)
        }
    }

    @Test func emptyBodyCreatesASessionWithDefaults() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let created = try await client.send(.post, "/v1/sessions")
            #expect(created.status == .created)
            let session = try created.decode(SessionJSON.self)
            #expect(session.priority == 0)
            #expect(session.max_retries == SessionOptions.defaultMaxRetries)
            #expect(session.task_timeout_seconds == nil)
        }
    }

    @Test func sessionRequestsAreValidated() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let unknown = try await client.send(.post, "/v1/sessions", json: #"{"priority": 1, "prio": 2}"#)
            #expect(unknown.status == .badRequest)
            let error = try unknown.decode(ErrorJSON.self).error
            #expect(error.code == "invalid_argument")
            #expect(error.message.contains("prio"))

            let reserved = try await client.send(.post, "/v1/sessions", json: #"{"labels": {"htc.tenant": "someone-else"}}"#)
            #expect(reserved.status == .badRequest)
            #expect(try reserved.decode(ErrorJSON.self).error.message.contains("labels.htc.tenant"))

            let wrongType = try await client.send(.post, "/v1/sessions", json: #"{"priority": "high"}"#)
            #expect(wrongType.status == .badRequest)
            #expect(try wrongType.decode(ErrorJSON.self).error.message.contains("priority"))

            let badTimeout = try await client.send(.post, "/v1/sessions", json: #"{"task_timeout_seconds": 0}"#)
            #expect(badTimeout.status == .badRequest)

            let notJSON = try await client.send(.post, "/v1/sessions", json: "{")
            #expect(notJSON.status == .badRequest)

            let sessions = try await grid.backends.state.sessions(after: nil, limit: 10)
            #expect(sessions.items.isEmpty)
        }
    }

    @Test func unknownSessionsAndTasksAre404() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            for uri in ["/v1/sessions/nope", "/v1/sessions/nope/results", "/v1/tasks/nope_0", "/v1/tasks/nope_0/output"] {
                let response = try await client.send(.get, uri)
                #expect(response.status == .notFound, "\(uri)")
                #expect(try response.decode(ErrorJSON.self).error.code == "not_found")
            }
            let submit = try await client.send(.post, "/v1/sessions/nope/tasks", json: #"{"tasks": [{"payload_json": 1}]}"#)
            #expect(submit.status == .notFound)
            let cancel = try await client.send(.post, "/v1/sessions/nope/cancel")
            #expect(cancel.status == .notFound)
            let malformedTask = try await client.send(.get, "/v1/tasks/no-index")
            #expect(malformedTask.status == .badRequest)
        }
    }

    @Test func sessionsArePagedWithACursor() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            var created: Set<String> = []
            for _ in 0..<5 {
                created.insert(try await client.send(.post, "/v1/sessions").decode(SessionJSON.self).id)
            }
            var seen: [String] = []
            var cursor: String?
            var pages = 0
            repeat {
                let uri = "/v1/sessions?limit=2" + (cursor.map { "&after=\($0)" } ?? "")
                let page = try await client.send(.get, uri).decode(PageJSON<SessionJSON>.self)
                #expect(page.items.count <= 2)
                seen += page.items.map(\.id)
                cursor = page.has_more ? page.next : nil
                pages += 1
            } while cursor != nil && pages < 10
            #expect(pages == 3)
            #expect(Set(seen) == created)
            #expect(seen.count == 5)

            let badLimit = try await client.send(.get, "/v1/sessions?limit=0")
            #expect(badLimit.status == .badRequest)
        }
    }
}

@Suite struct MetricsRouteTests {
    @Test func metricsCountSubmissionsResultsAndQueueDepth() async throws {
        let grid = TestGrid()
        try await grid.application(auth: .apiKeys(try AuthTests.keys())).test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions", json: #"{"priority": 7}"#, key: "key-acme").decode(SessionJSON.self)
            let batch = #"{"tasks": [{"payload_json": 1}, {"payload_json": 2}, {"payload_json": 3}]}"#
            #expect(try await client.send(.post, "/v1/sessions/\(session.id)/tasks", json: batch, key: "key-acme").status == .created)
            _ = try await client.send(.get, "/v1/sessions/\(session.id)/results?state=pending", key: "key-acme")

            // Scrapers carry no API key.
            let scraped = try await client.send(.get, "/metrics")
            #expect(scraped.status == .ok)
            let text = scraped.text
            #expect(text.contains("\(ServerMetricName.sessionsCreated) 1"))
            #expect(text.contains("\(ServerMetricName.tasksSubmitted) 3"))
            #expect(text.contains(#"\#(ServerMetricName.resultsReturned){state="pending"} 3"#))
            #expect(text.contains(#"\#(ServerMetricName.queueDepth){priority="7",kind="waiting"} 3"#))
            #expect(text.contains(#"\#(ServerMetricName.tasks){state="pending"} 3"#))
            #expect(text.contains(#"\#(ServerMetricName.tasks){state="finished"} 0"#))
            #expect(text.contains(#"\#(ServerMetricName.tasksSessions){kind="counted"} 1"#))
            #expect(text.contains(#"\#(ServerMetricName.tasksSessions){kind="complete"} 1"#))
            #expect(text.contains("\(ServerMetricName.submitDuration)_count 1"))
            #expect(!text.contains("acme"), "tenants or keys must not appear in metrics")
        }
    }
}
