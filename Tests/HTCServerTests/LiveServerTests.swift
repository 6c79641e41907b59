import Foundation
import GridKernel
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

/// The same API over a real socket on 127.0.0.1.
@Suite struct LiveServerTests {
    @Test func aSessionRunsOverTheNetwork() async throws {
        let grid = TestGrid()
        let log = CapturedLog()
        try await grid.application(auth: .apiKeys(try AuthTests.keys()), logger: log.logger()).test(.live) { client in
            let created = try await client.send(.post, "/v1/sessions", json: #"{"labels": {"run": "live"}}"#, key: "key-acme")
            #expect(created.status == .created)
            let requestID = try #require(created.headers[AccessLogMiddleware.requestIDHeader])
            let session = try created.decode(SessionJSON.self)
            let tasks = (0..<100).map { #"{"payload_json": {"i": \#($0)}}"# }.joined(separator: ",")
            let submitted = try await client.send(.post, "/v1/sessions/\(session.id)/tasks", json: #"{"tasks": [\#(tasks)]}"#, key: "key-acme")
            #expect(submitted.status == .created)

            try await withAgent(try grid.agent()) {
                try await waitUntil("every task finished") {
                    let counts = try await client.send(.get, "/v1/sessions/\(session.id)", key: "key-acme").decode(SessionJSON.self).counts
                    return counts?["finished"] == 100
                }
            }
            // Results come in task-index order, so read them from the start once every task is terminal.
            var outputs: [String: String] = [:]
            var cursor: String?
            var pages = 0
            while true {
                let uri = "/v1/sessions/\(session.id)/results?limit=30" + (cursor.map { "&after=\($0)" } ?? "")
                let page = try await client.send(.get, uri, key: "key-acme").decode(PageJSON<TaskJSON>.self)
                for item in page.items { outputs[item.task_id] = decodeBase64(item.output_base64) }
                pages += 1
                guard page.has_more else { break }
                cursor = page.next
            }
            #expect(pages == 4)
            #expect(outputs.count == 100)
            for index in 0..<100 {
                #expect(outputs["\(session.id)_\(index)"] == #"{"i":\#(index)}"#)
            }

            let text = log.text
            #expect(text.contains("hb.request.id=\(requestID)"))
            #expect(text.contains("status=201"))
            #expect(!text.contains("key-acme"), "an API key reached the log")
        }
    }
}
