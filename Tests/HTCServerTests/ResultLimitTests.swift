import Foundation
import GridKernel
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCCore
@testable import HTCServer

/// Answers stay bounded in bytes: a results page ends at its byte budget without skipping a task,
/// HTC-Grid's `/result` refuses an answer over its limit, and `htc --server` rides out a missing server
/// for a bounded time.
@Suite struct ResultLimitTests {
    @Test func aResultsPageEndsAtItsByteBudgetAndSkipsNoTask() async throws {
        // 60-byte outputs, one of 150 bytes (over the inline limit: a link), 250 bytes a page.
        let grid = TestGrid(configuration: ServerConfiguration(inlineOutputLimit: 100, resultsPageBytes: 250))
        let inputs = (0..<11).map { index in Array(String(format: "%03d", index).utf8) + Array(repeating: UInt8(ascii: "x"), count: index == 5 ? 147 : 57) }
        try await grid.application().test(.live) { client in
            let session = try await client.send(.post, "/v1/sessions").decode(SessionJSON.self).id
            let tasks = inputs.map { #"{"payload_base64": "\#(Data($0).base64EncodedString())"}"# }.joined(separator: ",")
            #expect(try await client.send(.post, "/v1/sessions/\(session)/tasks", json: #"{"tasks": [\#(tasks)]}"#).status == .created)
            try await withAgent(try grid.agent()) {
                try await waitUntil("every task finished") { try await grid.backends.state.counts(SessionID(session))[.finished] == 11 }
            }

            var pages: [[TaskJSON]] = []
            var cursor: String?
            repeat {
                let page = try await client.send(.get, "/v1/sessions/\(session)/results?limit=100" + (cursor.map { "&after=\($0)" } ?? ""))
                    .decode(PageJSON<TaskJSON>.self)
                pages.append(page.items)
                cursor = page.has_more ? page.next : nil
            } while cursor != nil && pages.count < 20
            #expect(pages.map(\.count).prefix(4) == [4, 2, 4, 1], "pages end where the next output would pass 250 bytes")
            let ids = pages.flatMap { $0.map(\.task_id) }
            #expect(ids == (0..<11).map { "\(session)_\($0)" }, "every task once, in order")
            for page in pages where page.count > 1 {
                #expect(page.reduce(0) { $0 + ($1.output_size ?? 0) } <= 250)
            }
            let linked = try #require(pages.flatMap { $0 }.first { $0.task_id == "\(session)_5" })
            #expect(linked.output_base64 == nil)
            #expect(linked.output_url == "/v1/tasks/\(session)_5/output")

            // `htc results --server` follows the pages and the link.
            let remote = RemoteGridClient(baseURL: URL(string: "http://127.0.0.1:\(try #require(client.port))")!, apiKey: nil)
            var outputs: [[UInt8]] = []
            var next: String?
            repeat {
                let page = try await remote.results(try SessionID(session), state: .finished, after: next, limit: 100)
                outputs += page.items.map { $0.output ?? [] }
                next = page.next
            } while next != nil
            #expect(outputs == inputs)
        }
    }

    @Test func htcgridResultRefusesAnAnswerOverItsLimit() async throws {
        let compat = HTCGridCompatTests()
        let session = HTCGridCompatTests.newSession()
        try await compat.store(session: session, count: 3)
        // Each task costs `"<36-character session>_i",` and `"read_from_dataplane",`: 41 + 22 bytes.
        let fits = try HTCGridCompatibility(maxResultBytes: 3 * 63)
        let tooSmall = try HTCGridCompatibility(maxResultBytes: 3 * 63 - 1)
        let query = "/v1/result?submission_content=\(HTCGridCompatTests.content(#"{"session_id": "\#(session)"}"#))"
        try await compat.grid.application(htcgrid: fits).test(.router) { client in
            #expect(try await client.send(.post, "/v1/submit?submission_content=\(session)").status == .ok)
            #expect(try await client.send(.post, "/v1/sessions/\(session)/cancel").status == .ok)
            let whole = try await client.send(.get, query)
            #expect(whole.status == .ok)
            #expect(try whole.decode(HTCGridCompatTests.ResultJSON.self).metadata.tasks_in_response == 3)
        }
        try await compat.grid.application(htcgrid: tooSmall).test(.router) { client in
            let refused = try await client.send(.get, query)
            #expect(refused.status.code == 542)
            #expect(refused.text.contains("--htcgrid-max-result-bytes"), "\(refused.text)")
            #expect(refused.text.contains("GET /v1/sessions/\(session)/results"), "\(refused.text)")
        }
        #expect(throws: GridError.self) { try HTCGridCompatibility(maxResultBytes: 0) }
    }

    @Test func aRequestThatFindsNoServerIsRetriedThenGivesUpWithTheReason() async throws {
        let log = CapturedLog()
        var remote = RemoteGridClient(baseURL: URL(string: "http://127.0.0.1:1")!, apiKey: nil, logger: log.logger())
        remote.retryTimeout = .seconds(1)
        let start = ContinuousClock.now
        do {
            _ = try await remote.session(SessionID("s1"))
            Issue.record("a request to a closed port succeeded")
        } catch let error as GridError {
            #expect(error.code == .unavailable)
            #expect(error.message.contains("did not answer GET /v1/sessions/s1"), "\(error.message)")
            #expect(error.message.contains("--retry-timeout"), "\(error.message)")
        }
        #expect(ContinuousClock.now - start >= .seconds(1), "sent again with backoff until the retry timeout")
        // Said at most once (one line per retryReportInterval, 10 s), not at every attempt; none when a
        // loaded machine spent the whole second on the first attempt.
        #expect(log.text.split(separator: "\n").filter { $0.contains("retrying") }.count <= 1, "\(log.text)")
    }

    @Test func gatewayStatusesAreRetriedWhateverTheirBody() {
        for status in [502, 503, 504] {
            #expect(RemoteGridClient.error(status: status, data: Data(#"{"error": {"code": "timeout", "message": "m"}}"#.utf8)).code == .unavailable)
        }
        #expect(RemoteGridClient.error(status: 500, data: Data()).code == .internalError)
    }
}
