import Foundation
import GridKernel
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import Synchronization
import Testing

@testable import HTCCore

/// `htc-agent --lambda`: a small server in the test speaks the Lambda Runtime Interface Emulator's
/// invoke protocol on 127.0.0.1 and behaves as the event asks.
/// The invocations the test emulator received, in order, and how many ran at once.
final class Invocations: Sendable {
    private struct State {
        var list: [String] = []
        var running = 0
        var mostAtOnce = 0
    }

    private let state = Mutex(State())
    func append(_ text: String) { state.withLock { $0.list.append(text) } }
    var all: [String] { state.withLock { $0.list } }
    var running: Int { state.withLock { $0.running } }
    var mostAtOnce: Int { state.withLock { $0.mostAtOnce } }

    func begin() {
        state.withLock { state in
            state.running += 1
            state.mostAtOnce = max(state.mostAtOnce, state.running)
        }
    }

    func end() { state.withLock { $0.running -= 1 } }
}

@Suite struct LambdaHandlerTests {
    struct Event: Decodable {
        var mode: String
        var x: Int?
        var milliseconds: Int?
    }

    /// The emulator: `ok` answers `x * x`, `raise` a function error with `X-Amz-Function-Error` (as the
    /// emulator reports an exception), `error-body` an error document without the header, `bootstrap`
    /// the provided runtime's marker, `crash` HTTP 502, `hang` answers after 3 s, `slow` answers after
    /// `milliseconds`, even when the client has left (as the real emulator finishes the function).
    static func emulator(invocations: Invocations) -> some ApplicationProtocol {
        let router = Router()
        router.post("/2015-03-31/functions/{function}/invocations") { request, context -> Response in
            let function = try context.parameters.require("function")
            let body = try await request.body.collect(upTo: 1 << 20)
            let event = try JSONDecoder().decode(Event.self, from: Data(body.readableBytesView))
            invocations.append("\(function):\(event.mode)")
            invocations.begin()
            defer { invocations.end() }
            switch event.mode {
            case "ok":
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: String((event.x ?? 0) * (event.x ?? 0)))))
            case "raise":
                return Response(
                    status: .ok, headers: [HTTPField.Name("X-Amz-Function-Error")!: "Unhandled"],
                    body: .init(byteBuffer: ByteBuffer(string: #"{"errorMessage": "x must be positive", "errorType": "ValueError", "stackTrace": []}"#))
                )
            case "error-body":
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: #"{"errorMessage": "out of memory", "errorType": "Runtime.ExitError"}"#)))
            case "bootstrap":
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "BOOTSTRAP ERROR: mock_compute_engine not found")))
            case "crash":
                return Response(status: .badGateway, body: .init(byteBuffer: ByteBuffer(string: "runtime exited")))
            case "slow":
                // Not Task.sleep: the function runs to its end whether or not the server cancels the handler.
                await withCheckedContinuation { continuation in
                    DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(event.milliseconds ?? 0)) { continuation.resume() }
                }
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "slept")))
            default:
                // Longer than the impatient handler's 300 ms time limit, short enough not to hold up the server's shutdown (the agent test's limit is one second).
                try await Task.sleep(for: .seconds(3))
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "too late")))
            }
        }
        return Application(router: router, configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: 0)))
    }

    private func context() throws -> TaskContext {
        TaskContext(id: TaskID(session: try SessionID("s1"), index: 0), attempt: 1, timeout: nil, logger: Logger(label: "test"))
    }

    @Test func invocationsSucceedFailAndTimeOut() async throws {
        let invocations = Invocations()
        try await Self.emulator(invocations: invocations).test(.live) { client in
            let port = try #require(client.port)
            // A generous limit for the answers (a loaded machine can take longer than 300 ms to connect);
            // the 300 ms limit only where the function hangs.
            let handler = try LambdaHandler(url: "http://127.0.0.1:\(port)", function: "pricer", timeout: .seconds(10))
            let impatient = try LambdaHandler(url: "http://127.0.0.1:\(port)", function: "pricer", timeout: .milliseconds(300))
            let output = try await handler.run(input: Array(#"{"mode": "ok", "x": 12}"#.utf8), context: context())
            #expect(String(decoding: output, as: UTF8.self) == "144")
            #expect(invocations.all == ["pricer:ok"])

            for (mode, text) in [("raise", "ValueError: x must be positive"), ("error-body", "Runtime.ExitError: out of memory"),
                                 ("bootstrap", "bootstrap error"), ("crash", "HTTP 502")] {
                do {
                    _ = try await handler.run(input: Array(#"{"mode": "\#(mode)"}"#.utf8), context: context())
                    Issue.record("\(mode) succeeded")
                } catch let error as LambdaFunctionError {
                    #expect(error.message.contains(text), "\(mode): \(error.message)")
                }
            }
            let start = ContinuousClock.now
            do {
                _ = try await impatient.run(input: Array(#"{"mode": "hang"}"#.utf8), context: context())
                Issue.record("a hanging invocation succeeded")
            } catch let error as GridError {
                #expect(error.code == .timeout)
            }
            #expect(ContinuousClock.now - start < .seconds(3))
        }
        // Nothing listens on a port that was just closed: the runtime is unreachable, not a function error.
        let closed = try await Self.emulator(invocations: invocations).test(.live) { client in try #require(client.port) }
        await #expect(throws: GridError.self) {
            _ = try await LambdaHandler(url: "http://127.0.0.1:\(closed)").run(input: Array("{}".utf8), context: context())
        }
    }

    /// The emulator runs one invocation at a time (the real one crashes on a second): invocations queue
    /// whatever the concurrency, and a cancelled one keeps the emulator until its function has returned,
    /// although its task ends at once.
    @Test func oneInvocationAtATimeEvenAfterACancel() async throws {
        let invocations = Invocations()
        try await Self.emulator(invocations: invocations).test(.live) { client in
            let port = try #require(client.port)
            let handler = try LambdaHandler(url: "http://127.0.0.1:\(port)", timeout: .seconds(30))
            try await withThrowingTaskGroup(of: [UInt8].self) { group in
                for _ in 0..<3 {
                    group.addTask { try await handler.run(input: Array(#"{"mode": "slow", "milliseconds": 200}"#.utf8), context: context()) }
                }
                for try await output in group { #expect(String(decoding: output, as: UTF8.self) == "slept") }
            }
            #expect(invocations.mostAtOnce == 1)

            let cancelled = Task { try await handler.run(input: Array(#"{"mode": "slow", "milliseconds": 1500}"#.utf8), context: context()) }
            let deadline = ContinuousClock.now + .seconds(20)
            while invocations.running == 0 {
                guard ContinuousClock.now < deadline else { throw GridError(.timeout, "the slow invocation never arrived") }
                try await Task.sleep(for: .milliseconds(5))
            }
            let start = ContinuousClock.now
            cancelled.cancel()
            await #expect(throws: CancellationError.self) { _ = try await cancelled.value }
            #expect(ContinuousClock.now - start < .seconds(1), "the cancelled task ends at once")
            #expect(handler.gate.holder.map { if case .abandoned = $0 { true } else { false } } == true)
            let output = try await handler.run(input: Array(#"{"mode": "ok", "x": 5}"#.utf8), context: context())
            #expect(String(decoding: output, as: UTF8.self) == "25")
            #expect(invocations.mostAtOnce == 1, "an invocation reached the emulator while the cancelled one still ran")
            #expect(ContinuousClock.now - start >= .milliseconds(1000), "the next invocation waited for the abandoned one")
            #expect(handler.gate.holder == nil)
        }
    }

    /// Unlike HTC-Grid's agent, a function error fails the task (and is retried per the session), it is
    /// never stored as the output of a finished task; a timeout is a retried failure too.
    @Test func anAgentFailsTasksWhoseFunctionFails() async throws {
        let invocations = Invocations()
        try await Self.emulator(invocations: invocations).test(.live) { client in
            let port = try #require(client.port)
            let backends = GridBackends(queue: InMemoryTaskQueue(), state: InMemoryStateStore(), payloads: InMemoryPayloadStore())
            let grid = GridClient(backends: backends)
            let session = try await grid.createSession(SessionOptions(maxRetries: 1)).id
            let ids = try await grid.submit(session, inputs: [#"{"mode": "ok", "x": 3}"#, #"{"mode": "raise"}"#, #"{"mode": "hang"}"#].map { Array($0.utf8) })
            let agent = try Agent(
                backends: backends,
                handler: try LambdaHandler(url: "http://127.0.0.1:\(port)", timeout: .seconds(1)),
                configuration: AgentConfiguration(
                    concurrency: 1, leaseDuration: .seconds(10), heartbeatInterval: .seconds(1),
                    idleBackoff: .milliseconds(1) ... .milliseconds(5), retryDelay: .milliseconds(1)
                )
            )
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await agent.run() }
                let deadline = ContinuousClock.now + .seconds(30)
                while try await grid.counts(session).terminal < 3 {
                    guard ContinuousClock.now < deadline else { throw GridError(.timeout, "the three tasks did not end") }
                    try await Task.sleep(for: .milliseconds(5))
                }
                agent.stop()
                try await group.waitForAll()
            }
            #expect(String(decoding: try await grid.output(ids[0]), as: UTF8.self) == "9")
            let raised = try await grid.task(ids[1])
            #expect(raised.state == .failed)
            #expect(raised.retries == 1)
            #expect(raised.lastError?.contains("ValueError: x must be positive") == true)
            let hung = try await grid.task(ids[2])
            #expect(hung.state == .failed)
            #expect(hung.retries == 1)
            #expect(hung.lastError?.contains("longer than") == true)
            #expect(invocations.all.filter { $0 == "function:raise" }.count == 2)
        }
    }
}
