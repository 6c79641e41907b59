import Foundation
import GridKernel
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

@Suite struct TaskRouteTests {
    /// A request sent again with its Idempotency-Key answers the same ids and creates nothing; the key
    /// with another number of tasks is a 409; a malformed key is a 400 that names the header.
    @Test func aSubmissionSentAgainWithItsKeyCreatesNoTaskTwice() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self)
            let two = #"{"tasks": [{"payload_json": 1}, {"payload_json": 2}]}"#
            let path = "/v1/sessions/\(session.id)/tasks"
            let first = try await client.send(.post, path, json: two, idempotencyKey: "batch-7")
            #expect(first.status == .created)
            let again = try await client.send(.post, path, json: two, idempotencyKey: "batch-7")
            #expect(again.status == .created)
            #expect(try again.decode(SubmitJSON.self).task_ids == first.decode(SubmitJSON.self).task_ids)
            #expect(try await grid.backends.state.session(try SessionID(session.id)).taskCount == 2)
            let other = try await client.send(.post, path, json: #"{"tasks": [{"payload_json": 3}]}"#, idempotencyKey: "batch-7")
            #expect(other.status == .conflict)
            #expect(try other.decode(ErrorJSON.self).error.message.contains("idempotency key 'batch-7'"))
            let malformed = try await client.send(.post, path, json: two, idempotencyKey: "not a key")
            #expect(malformed.status == .badRequest)
            #expect(try malformed.decode(ErrorJSON.self).error.message.contains("Idempotency-Key"))
            let fresh = try await client.send(.post, path, json: two, idempotencyKey: "batch-8")
            #expect(try fresh.decode(SubmitJSON.self).task_ids == ["\(session.id)_2", "\(session.id)_3"])
        }
    }

    @Test func submittedTasksRunAndTheirResultsArePaged() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self)
            let batch = #"{"tasks": [{"payload_base64": "\#(base64("one"))"}, {"payload_json": {"b": [1, 2.5, true, null], "a": "x/y"}}, {"payload_base64": ""}]}"#
            let submitted = try await client.send(.post, "/v1/sessions/\(session.id)/tasks", json: batch)
            #expect(submitted.status == .created)
            let ids = try submitted.decode(SubmitJSON.self).task_ids
            #expect(ids == ["\(session.id)_0", "\(session.id)_1", "\(session.id)_2"])

            try await withAgent(try grid.agent()) {
                try await waitUntil("all three tasks finished") {
                    try await grid.backends.state.counts(try SessionID(session.id))[.finished] == 3
                }
            }

            let first = try await client.send(.get, "/v1/sessions/\(session.id)/results?limit=2").decode(PageJSON<TaskJSON>.self)
            #expect(first.items.map(\.task_id) == Array(ids.prefix(2)))
            #expect(first.has_more)
            #expect(decodeBase64(first.items[0].output_base64) == "one")
            #expect(decodeBase64(first.items[1].output_base64) == #"{"a":"x/y","b":[1,2.5,true,null]}"#)
            let next = try #require(first.next)

            let second = try await client.send(.get, "/v1/sessions/\(session.id)/results?limit=2&after=\(next)")
                .decode(PageJSON<TaskJSON>.self)
            #expect(second.items.map(\.task_id) == [ids[2]])
            #expect(second.items[0].output_base64 == "")
            #expect(!second.has_more)
            // Even on the last page the cursor points after the last item, so a client can poll from there.
            let resume = try #require(second.next)
            let empty = try await client.send(.get, "/v1/sessions/\(session.id)/results?after=\(resume)").decode(PageJSON<TaskJSON>.self)
            #expect(empty.items.isEmpty)
            #expect(empty.next == resume)

            let task = try await client.send(.get, "/v1/tasks/\(ids[0])")
            #expect(task.status == .ok)
            let taskBody = try task.decode(TaskJSON.self)
            #expect(taskBody.state == "finished")
            #expect(taskBody.session_id == session.id)
            #expect(decodeBase64(taskBody.output_base64) == "one")
            let output = try await client.send(.get, "/v1/tasks/\(ids[0])/output")
            #expect(output.text == "one")

            let counts = try await client.send(.get, "/v1/sessions/\(session.id)").decode(SessionJSON.self).counts
            #expect(counts?["finished"] == 3)
            let failed = try await client.send(.get, "/v1/sessions/\(session.id)/results?state=failed").decode(PageJSON<TaskJSON>.self)
            #expect(failed.items.isEmpty)
        }
    }

    @Test func largeOutputsAreServedPerTask() async throws {
        let grid = TestGrid(configuration: ServerConfiguration(inlineOutputLimit: 4))
        try await grid.application().test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self)
            let batch = #"{"tasks": [{"payload_base64": "\#(base64("abcdefgh"))"}]}"#
            _ = try await client.send(.post, "/v1/sessions/\(session.id)/tasks", json: batch)
            try await withAgent(try grid.agent()) {
                try await waitUntil("the task finished") { try await grid.backends.state.counts(try SessionID(session.id))[.finished] == 1 }
            }
            let page = try await client.send(.get, "/v1/sessions/\(session.id)/results").decode(PageJSON<TaskJSON>.self)
            let item = try #require(page.items.first)
            #expect(item.output_base64 == nil)
            #expect(item.output_size == 8)
            let url = try #require(item.output_url)
            #expect(try await client.send(.get, url).text == "abcdefgh")
        }
    }

    @Test func longPollWakesWhenATaskFinishes() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self)
            let batch = #"{"tasks": [{"payload_json": "a"}, {"payload_json": "b"}]}"#
            _ = try await client.send(.post, "/v1/sessions/\(session.id)/tasks", json: batch)

            try await withThrowingTaskGroup(of: PageJSON<TaskJSON>.self) { group in
                group.addTask {
                    try await client.send(.get, "/v1/sessions/\(session.id)/results?wait=60").decode(PageJSON<TaskJSON>.self)
                }
                // The state store wakes the poll when a task finishes: no clock is advanced here.
                let page = try await withAgent(try grid.agent()) { try #require(try await group.next()) }
                #expect(!page.items.isEmpty)
                let outputs = Dictionary(uniqueKeysWithValues: page.items.map { ($0.task_id, decodeBase64($0.output_base64)) })
                for (id, output) in outputs {
                    #expect(output == (id.hasSuffix("_0") ? #""a""# : #""b""#), "output of \(id)")
                }
            }
        }
    }

    @Test func longPollReturnsAnEmptyPageAfterTheWait() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self)
            // Terminal states wait on the state store's completions, in real time.
            let finished = try await client.send(.get, "/v1/sessions/\(session.id)/results?wait=0.1")
            #expect(finished.status == .ok)
            #expect(try finished.decode(PageJSON<TaskJSON>.self).items.isEmpty)
            try await withThrowingTaskGroup(of: TestResponse.self) { group in
                group.addTask { try await client.send(.get, "/v1/sessions/\(session.id)/results?state=processing&wait=2") }
                // Pending and processing are polled: looks at 0, 0.5, 1 and 1.5 s find nothing and sleep
                // (the delay grows to the 500 ms cap, so each advance wakes the sleeper); at 2 s the wait
                // is over and the empty page comes back.
                for _ in 0..<4 {
                    try await waitUntil("the long-poll is waiting") { grid.clock.sleeperCount == 1 }
                    grid.clock.advance(by: .milliseconds(500))
                }
                let response = try #require(try await group.next())
                #expect(response.status == .ok)
                #expect(try response.decode(PageJSON<TaskJSON>.self).items.isEmpty)
            }
        }
    }

    @Test func resultQueriesAreValidated() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self)
            for query in ["after=not-a-cursor", "state=done", "limit=0", "limit=x", "wait=-1", "wait=3600"] {
                let response = try await client.send(.get, "/v1/sessions/\(session.id)/results?\(query)")
                #expect(response.status == .badRequest, "\(query)")
                #expect(try response.decode(ErrorJSON.self).error.code == "invalid_argument", "\(query)")
            }
        }
    }
}
