import Foundation
import GridKernel
import Hummingbird
import Logging
import NIOCore
import Synchronization
import Testing

@testable import HTCCore

/// The agent marks its pod through the Kubernetes API while it owns tasks; here the API is a local
/// HTTP server on 127.0.0.1 that records the PATCH requests.
@Suite struct PodDeletionCostTests {
    struct Patch: Sendable, Equatable {
        var path: String
        var authorization: String
        var contentType: String
        var body: String
    }

    final class Patches: Sendable {
        private let list = Mutex<[Patch]>([])
        func append(_ patch: Patch) { list.withLock { $0.append(patch) } }
        var all: [Patch] { list.withLock { $0 } }
    }

    private func withFakeAPI(_ body: @escaping @Sendable (Int, Patches) async throws -> Void) async throws {
        let patches = Patches()
        let router = Router()
        router.patch("api/v1/namespaces/{namespace}/pods/{pod}") { request, _ -> HTTPResponse.Status in
            let data = try await request.body.collect(upTo: 10_000)
            patches.append(
                Patch(
                    path: request.uri.path, authorization: request.headers[.authorization] ?? "",
                    contentType: request.headers[.contentType] ?? "", body: String(buffer: data)
                )
            )
            return .ok
        }
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            try await body(client.port ?? 0, patches)
        }
    }

    private func tokenFile() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("htc-token-\(UUID().uuidString.prefix(8))").path
        try "secret-token\n".write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func anAgentMarksItsPodBusyThenIdle() async throws {
        try await withFakeAPI { port, patches in
            let token = try tokenFile()
            defer { try? FileManager.default.removeItem(atPath: token) }
            let environment = Environment([
                "HTC_KUBERNETES_API": "http://127.0.0.1:\(port)", "HTC_KUBERNETES_TOKEN_FILE": token,
                "MY_POD_NAME": "agent-7", "MY_POD_NAMESPACE": "grid",
            ])
            let pod = try #require(try PodDeletionCost.make(setting: nil, environment: environment))
            let backends = GridBackends(queue: InMemoryTaskQueue(), state: InMemoryStateStore(), payloads: InMemoryPayloadStore())
            let release = Gate()
            let agent = try Agent(
                backends: backends,
                handler: GatedHandler(release: release),
                configuration: AgentConfiguration(id: AgentID("agent-7"), concurrency: 2, idleBackoff: .milliseconds(1) ... .milliseconds(5))
            )
            let service = AgentStatusService(agent: agent, path: nil, pod: pod, logger: Logger(label: "test"))
            let client = GridClient(backends: backends)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await agent.run() }
                group.addTask { try await service.run() }
                func annotations() -> [String] { patches.all.map(\.body) }
                let idle = #"{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"0"}}}"#
                let busy = #"{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"100"}}}"#
                try await waitFor("the idle mark") { annotations() == [idle] }
                let session = try await client.createSession()
                try await client.submit(session.id, inputs: [[1]])
                try await waitFor("the busy mark") { annotations() == [idle, busy] }
                release.open()
                try await waitFor("the idle mark after the task") { annotations() == [idle, busy, idle] }
                #expect(try await client.counts(session.id)[.finished] == 1)
                let first = try #require(patches.all.first)
                #expect(first.path == "/api/v1/namespaces/grid/pods/agent-7")
                #expect(first.authorization == "Bearer secret-token")
                #expect(first.contentType == "application/merge-patch+json")
                agent.stop()
                group.cancelAll()
            }
            await pod.shutdown()
        }
    }

    @Test func settingsOutsideAPod() throws {
        #expect(try PodDeletionCost.make(setting: nil, environment: Environment([:])) == nil, "auto is off outside a pod")
        #expect(try PodDeletionCost.make(setting: "off", environment: Environment(["MY_POD_NAME": "p"])) == nil)
        #expect(throws: GridError.self) { try PodDeletionCost.make(setting: "on", environment: Environment([:])) }
        #expect(throws: GridError.self) { try PodDeletionCost.make(setting: "sometimes", environment: Environment([:])) }
        do {
            _ = try PodDeletionCost.make(setting: "on", environment: Environment(["KUBERNETES_SERVICE_HOST": "10.0.0.1"]))
            Issue.record("on without a pod name was accepted")
        } catch let error as GridError {
            #expect(error.message.contains("MY_POD_NAME"))
        }
    }
}

/// Opened once by the test.
private final class Gate: Sendable {
    private let opened = Mutex(false)
    func open() { opened.withLock { $0 = true } }
    var isOpen: Bool { opened.withLock { $0 } }
}

/// Holds each task until the gate opens.
private struct GatedHandler: TaskHandler {
    let release: Gate
    func run(input: [UInt8], context: TaskContext) async throws -> [UInt8] {
        while !release.isOpen { try await Task.sleep(for: .milliseconds(5)) }
        return input
    }
}

private func waitFor(_ what: String, timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw GridError(.timeout, "timed out waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(10))
    }
}
