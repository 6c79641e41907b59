import Foundation
import GridKernel
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

/// A batch is accepted whole or rejected whole: after any of these errors nothing is written.
@Suite struct SubmissionValidationTests {
    static let badBatches: [(body: String, status: HTTPResponse.Status, mentions: String)] = [
        (#"{"tasks": [{"payload_base64": "AAAA"}, {"payload_base64": "not base64!"}]}"#, .badRequest, "tasks[1].payload_base64"),
        (#"{"tasks": [{"payload_json": 1}, {"payload_json": 2, "priority": 9}]}"#, .badRequest, "tasks[1].priority"),
        (#"{"tasks": [{"payload_json": 1}], "session": "x"}"#, .badRequest, "session"),
        (#"{"tasks": [{"payload_json": 1}, {}]}"#, .badRequest, "tasks[1]"),
        (#"{"tasks": [{"payload_json": 1, "payload_base64": "AA=="}]}"#, .badRequest, "tasks[0]"),
        (#"{"tasks": [{"payload_base64": 12}]}"#, .badRequest, "tasks[0].payload_base64"),
        (#"{"tasks": []}"#, .badRequest, "tasks"),
        (#"{"task": []}"#, .badRequest, "task"),
        (#"{"tasks": [{"payload_json": 1}]"#, .badRequest, "JSON"),
        (#"{"tasks": [{"payload_json": 1}, {"payload_json": 2}, {"payload_json": 3}, {"payload_json": 4}]}"#, .contentTooLarge, "the limit is 3"),
        (#"{"tasks": [{"payload_base64": "\#(base64("0123456789"))"}]}"#, .contentTooLarge, "tasks[0]"),
    ]

    @Test(arguments: badBatches.indices)
    func badBatchIsRejectedWhole(_ index: Int) async throws {
        let (body, status, mentions) = Self.badBatches[index]
        let grid = TestGrid(configuration: ServerConfiguration(maxTasksPerRequest: 3, maxPayloadBytes: 8))
        try await grid.application().test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self)
            let response = try await client.send(.post, "/v1/sessions/\(session.id)/tasks", json: body)
            #expect(response.status == status)
            let error = try response.decode(ErrorJSON.self).error
            #expect(error.message.contains(mentions), "\(error.message)")
            try await expectNothingWritten(grid, session: session.id)
        }
    }

    @Test func bodyLargerThanTheLimitIs413() async throws {
        let grid = TestGrid(configuration: ServerConfiguration(maxBodyBytes: 64))
        try await grid.application().test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self)
            let tasks = Array(repeating: #"{"payload_json": 1}"#, count: 10).joined(separator: ",")
            let response = try await client.send(.post, "/v1/sessions/\(session.id)/tasks", json: #"{"tasks": [\#(tasks)]}"#)
            #expect(response.status == .contentTooLarge)
            #expect(try response.decode(ErrorJSON.self).error.code == "payload_too_large")
            try await expectNothingWritten(grid, session: session.id)
        }
    }

    @Test func theLargestBatchIsAccepted() async throws {
        let grid = TestGrid()
        try await grid.application().test(.router) { client in
            let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self)
            let tasks = Array(repeating: #"{"payload_base64": "AQID"}"#, count: 10_000).joined(separator: ",")
            let response = try await client.send(.post, "/v1/sessions/\(session.id)/tasks", json: #"{"tasks": [\#(tasks)]}"#)
            #expect(response.status == .created)
            #expect(try response.decode(SubmitJSON.self).task_ids.count == 10_000)
            let counts = try await grid.backends.state.counts(try SessionID(session.id))
            #expect(counts[.pending] == 10_000)
        }
    }

    private func expectNothingWritten(_ grid: TestGrid, session: String) async throws {
        let id = try SessionID(session)
        #expect(try await grid.backends.state.session(id).taskCount == 0)
        #expect(try await grid.backends.state.counts(id).total == 0)
        #expect(try await grid.backends.queue.depth().values.allSatisfy { $0.waiting == 0 && $0.inFlight == 0 })
    }
}
