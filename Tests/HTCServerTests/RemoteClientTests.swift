import ArgumentParser
import Foundation
import GridKernel
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCCore
@testable import HTCServer

/// `htc --server`'s client against a real server on a loopback socket.
@Suite struct RemoteClientTests {
    @Test func theRemoteClientDrivesASessionThroughTheServer() async throws {
        let grid = TestGrid(configuration: ServerConfiguration(inlineOutputLimit: 50))
        try await grid.application(auth: .apiKeys(try AuthTests.keys())).test(.live) { client in
            let base = URL(string: "http://127.0.0.1:\(try #require(client.port))")!
            var remote = RemoteGridClient(baseURL: base, apiKey: "key-acme")
            remote.submitBatchSize = 3  // several requests per submission

            let options = SessionOptions(priority: 2, maxRetries: 1, taskTimeout: .seconds(30), labels: ["team": "risk"])
            let session = try await remote.createSession(options, id: nil)
            #expect(session.options == options)
            #expect(abs(session.createdAt.timeIntervalSinceNow) < 60, "created_at must be a full date-time: \(session.createdAt)")
            let inputs: [[UInt8]] = [Array("one".utf8), Array("two".utf8), [0, 255, 10], Array(repeating: 7, count: 100)]
            let ids = try await remote.submit(session.id, inputs: inputs, key: nil)
            #expect(ids == (0..<4).map { TaskID(session: session.id, index: $0) })
            #expect(try await remote.session(session.id).taskCount == 4)

            try await withAgent(try grid.agent()) {
                let counts = try await remote.wait(for: session.id, expected: nil, pollInterval: .milliseconds(10), timeout: .seconds(20)) { _ in }
                #expect(counts[.finished] == 4)
            }

            var outputs: [TaskID: [UInt8]] = [:]
            let first = try await remote.results(session.id, state: .finished, after: nil, limit: 3)
            #expect(first.items.count == 3)
            let next = try #require(first.next)
            let second = try await remote.results(session.id, state: .finished, after: next, limit: 3)
            #expect(second.items.count == 1)
            #expect(second.next == nil, "the last page must end paging, or `htc results --all` never stops")
            for result in first.items + second.items {
                #expect(result.record.state == .finished)
                outputs[result.record.id] = result.output
            }
            // The 100-byte output is over the inline limit: the client fetched it from its output URL.
            #expect(ids.map { outputs[$0] } == inputs)

            let listed = try await remote.sessions(after: nil, limit: 10)
            #expect(listed.items.map(\.id) == [session.id])
            #expect(listed.next == nil)
            #expect(try await remote.counts(session.id)[.finished] == 4)
            #expect(try await remote.cancel(session.id) == CancelCounts())
            #expect(try await remote.session(session.id).cancelled)
            #expect(try await remote.deleteSession(session.id) == 4)
            await #expect(throws: GridError.self) { try await remote.session(session.id) }
        }
    }

    @Test func serverErrorsComeBackAsGridErrors() async throws {
        let grid = TestGrid()
        try await grid.application(auth: .apiKeys(try AuthTests.keys())).test(.live) { client in
            let base = URL(string: "http://127.0.0.1:\(try #require(client.port))")!
            let remote = RemoteGridClient(baseURL: base, apiKey: "key-acme")
            let session = try await remote.createSession(SessionOptions(), id: nil)
            let cases: [(GridError.Code, @Sendable () async throws -> Void)] = [
                (.notFound, { _ = try await remote.session(SessionID("no-such-session")) }),
                (.invalidArgument, { _ = try await remote.createSession(SessionOptions(), id: SessionID("mine")) }),
                (.invalidArgument, { _ = try await remote.createSession(SessionOptions(maxRetries: -1), id: nil) }),
                (.invalidArgument, { _ = try await remote.results(session.id, state: .finished, after: "not-a-cursor", limit: 10) }),
                (.unauthorized, { _ = try await RemoteGridClient(baseURL: base, apiKey: "wrong").session(session.id) }),
                (.notFound, { _ = try await RemoteGridClient(baseURL: base, apiKey: "key-globex").session(session.id) }),
                (.unavailable, { _ = try await RemoteGridClient.once(URL(string: "http://127.0.0.1:1")!).session(session.id) }),
            ]
            for (index, (code, call)) in cases.enumerated() {
                do {
                    try await call()
                    Issue.record("case \(index) succeeded")
                } catch let error as GridError {
                    #expect(error.code == code, "case \(index): \(error)")
                }
            }
            _ = try await remote.cancel(session.id)
            await #expect(throws: GridError.self) { _ = try await remote.submit(session.id, inputs: [[1]], key: nil) }
        }
    }

    @Test func retryTimeoutFromTheFlagOrTheVariable() throws {
        let server = ["--server", "http://127.0.0.1:8080"]
        #expect(try ClientOptions.parse(server).remoteClient(Environment([:]))?.retryTimeout == .seconds(60))
        #expect(try ClientOptions.parse(server + ["--retry-timeout", "5"]).remoteClient(Environment(["HTC_RETRY_TIMEOUT": "9"]))?.retryTimeout == .seconds(5))
        #expect(try ClientOptions.parse(server).remoteClient(Environment(["HTC_RETRY_TIMEOUT": "0"]))?.retryTimeout == .zero)
        #expect(try ClientOptions.parse([]).retryDuration(Environment(["HTC_RETRY_TIMEOUT": "2.5"])) == .milliseconds(2_500))
        #expect(throws: ValidationError.self) { try ClientOptions.parse(server + ["--retry-timeout=-1"]).remoteClient(Environment([:])) }
        #expect(throws: GridError.self) { try ClientOptions.parse(server).remoteClient(Environment(["HTC_RETRY_TIMEOUT": "soon"])) }
    }

    @Test func serverOptionChoosesTheRemoteClient() throws {
        let parsed = try ClientOptions.parse(["--server", "http://127.0.0.1:8080", "--api-key", "k"])
        #expect(try parsed.remoteClient(Environment([:]))?.baseURL.absoluteString == "http://127.0.0.1:8080")
        let fromEnvironment = try ClientOptions.parse([])
        #expect(try fromEnvironment.remoteClient(Environment(["HTC_SERVER": "https://grid.example"]))?.baseURL.host == "grid.example")
        #expect(try fromEnvironment.remoteClient(Environment([:])) == nil)
        #expect(throws: ValidationError.self) { try ClientOptions.parse(["--server", "grid:8080"]).remoteClient(Environment([:])) }
    }
}

extension RemoteGridClient {
    /// A client that sends every request once, for tests of what a failure looks like.
    static func once(_ base: URL) -> RemoteGridClient {
        var client = RemoteGridClient(baseURL: base, apiKey: nil)
        client.retryTimeout = .zero
        return client
    }
}
