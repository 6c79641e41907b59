import Foundation
import GridKernel
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

/// `results?order=completion` and `results/stream`: results in the order tasks became terminal.
@Suite struct CompletionRouteTests {
    /// Submits `count` tasks through the API and claims them all for one agent, so the test finishes,
    /// fails and cancels them in the order it wants, straight through the state store.
    private func submitAndClaim(_ grid: TestGrid, _ client: some TestClientProtocol, count: Int) async throws -> (SessionJSON, [TaskRecord]) {
        let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self)
        let tasks = (0..<count).map { #"{"payload_json": "\#($0)"}"# }.joined(separator: ",")
        let ids = try await client.send(.post, "/v1/sessions/\(session.id)/tasks", json: #"{"tasks": [\#(tasks)]}"#)
            .decode(SubmitJSON.self).task_ids.map { try TaskID($0) }
        let claimed = try await grid.backends.state.claim(ids, owner: Self.owner, token: .random(), leaseExpiry: Date() + 600, now: Date())
        try #require(claimed.count == count)
        return (session, claimed.sorted { $0.id.index < $1.id.index })
    }

    private static let owner = AgentID("test-owner")

    private func finish(_ grid: TestGrid, _ record: TaskRecord, _ output: String) async throws {
        let done = try await grid.backends.state.finish(
            [TaskCompletion(id: record.id, attempt: record.attempt, output: Array(output.utf8))], owner: Self.owner, at: Date())
        try #require(done == [record.id])
    }

    @Test func outOfOrderFinishesAreReadInCompletionOrderOnceEach() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let (session, tasks) = try await submitAndClaim(grid, client, count: 6)
            try await finish(grid, tasks[4], "four")
            try await finish(grid, tasks[1], "one")
            _ = try await grid.backends.state.fail(
                [TaskFailure(id: tasks[2].id, attempt: tasks[2].attempt, message: "bad input", retryable: false)], owner: Self.owner, at: Date())
            _ = try await grid.backends.state.cancel([tasks[3].id], at: Date())
            try await finish(grid, tasks[0], "zero")

            var read: [TaskJSON] = []
            var after = "0"
            var complete = false
            for _ in 0..<10 where !complete {
                let page = try await client.send(.get, "/v1/sessions/\(session.id)/results?order=completion&after=\(after)&limit=2")
                    .decode(PageJSON<TaskJSON>.self)
                #expect(page.items.count <= 2)
                read += page.items
                after = try #require(page.next)
                complete = page.complete ?? false
                if page.items.isEmpty { break }
            }
            #expect(read.map(\.task_id) == [4, 1, 2, 3, 0].map { "\(session.id)_\($0)" })
            #expect(read.map(\.sequence) == [1, 2, 3, 4, 5])
            #expect(read.map(\.state) == ["finished", "finished", "failed", "cancelled", "finished"])
            #expect(read.map { decodeBase64($0.output_base64) } == ["four", "one", nil, nil, "zero"])
            #expect(read[2].last_error == "bad input")
            #expect(!complete, "task 5 is still running")
            #expect(after == "5")

            // Task 5 completes: the same cursor gets exactly it, and the session is complete.
            try await finish(grid, tasks[5], "five")
            let last = try await client.send(.get, "/v1/sessions/\(session.id)/results?order=completion&after=\(after)&outputs=false")
                .decode(PageJSON<TaskJSON>.self)
            #expect(last.items.map(\.task_id) == ["\(session.id)_5"])
            #expect(last.items.first?.output_base64 == nil, "outputs=false")
            #expect(last.complete == true)
            #expect(last.task_count == 6)
            #expect(last.next == "6")
        }
    }

    @Test func aLongPollInCompletionOrderWakesOnTheNextCompletion() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let (session, tasks) = try await submitAndClaim(grid, client, count: 2)
            try await withThrowingTaskGroup(of: PageJSON<TaskJSON>.self) { group in
                group.addTask {
                    try await client.send(.get, "/v1/sessions/\(session.id)/results?order=completion&after=0&wait=60")
                        .decode(PageJSON<TaskJSON>.self)
                }
                try await finish(grid, tasks[1], "one")
                let page = try #require(try await group.next())
                #expect(page.items.map(\.task_id) == ["\(session.id)_1"])
                #expect(page.complete == false)
            }
        }
    }

    @Test func theStreamPushesEachResultAndEndsWhenTheSessionIsComplete() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let (session, tasks) = try await submitAndClaim(grid, client, count: 3)
            try await finish(grid, tasks[2], "two")
            try await withThrowingTaskGroup(of: TestResponse.self) { group in
                group.addTask { try await client.send(.get, "/v1/sessions/\(session.id)/results/stream") }
                try await finish(grid, tasks[0], "zero")
                _ = try await grid.backends.state.cancel([tasks[1].id], at: Date())
                // The response ends by itself once the session is complete.
                let response = try #require(try await group.next())
                #expect(response.status == .ok)
                #expect(response.headers[.contentType] == "application/x-ndjson")
                let lines = response.text.split(separator: "\n").map { Data($0.utf8) }
                // Result lines carry a task_id; progress lines (while waiting) do not.
                let results = try lines.dropLast().filter { String(decoding: $0, as: UTF8.self).contains(#""task_id""#) }
                    .map { try JSONDecoder().decode(TaskJSON.self, from: $0) }
                #expect(results.map(\.task_id) == [2, 0, 1].map { "\(session.id)_\($0)" })
                #expect(results.map(\.sequence) == [1, 2, 3])
                let end = try JSONDecoder().decode(StreamEnd.self, from: try #require(lines.last))
                #expect(end.complete && end.next == "3" && end.task_count == 3)
            }
            // Resuming after the last number of a complete session: only the last line.
            let resumed = try await client.send(.get, "/v1/sessions/\(session.id)/results/stream?after=3&outputs=false")
            #expect(resumed.text == #"{"complete":true,"next":"3","task_count":3}"# + "\n")
        }
    }

    @Test func badCompletionQueriesAreRefused() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self)
            for query in ["order=random", "order=completion&after=-1", "order=completion&after=x", "order=completion&outputs=maybe",
                "order=completion&limit=0"]
            {
                let response = try await client.send(.get, "/v1/sessions/\(session.id)/results?\(query)")
                #expect(response.status == .badRequest, "\(query)")
                #expect(try response.decode(ErrorJSON.self).error.code == "invalid_argument", "\(query)")
            }
            let stream = try await client.send(.get, "/v1/sessions/\(session.id)/results/stream?after=-3")
            #expect(stream.status == .badRequest)
            let missing = try await client.send(.get, "/v1/sessions/s-nope/results/stream")
            #expect(missing.status == .notFound)
        }
    }
}

private struct StreamEnd: Decodable {
    var complete: Bool
    var next: String
    var task_count: Int?
}
