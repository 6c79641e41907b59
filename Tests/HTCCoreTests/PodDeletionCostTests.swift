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
    @Test func anAgentMarksItsPodBusyThenIdle() async throws {
        let server = FakeKubernetesAPI()
        try await server.serve { _, api in
            var environment = api
            environment.values["MY_POD_NAME"] = "agent-7"
            environment.values["MY_POD_NAMESPACE"] = "grid"
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
                func annotations() -> [String] { server.patches.map(\.body) }
                let idle = #"{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"0"}}}"#
                let busy = #"{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"100"}}}"#
                try await waitFor("the idle mark") { annotations() == [idle] }
                let session = try await client.createSession()
                try await client.submit(session.id, inputs: [[1]])
                try await waitFor("the busy mark") { annotations() == [idle, busy] }
                release.open()
                try await waitFor("the idle mark after the task") { annotations() == [idle, busy, idle] }
                #expect(try await client.counts(session.id)[.finished] == 1)
                let first = try #require(server.patches.first)
                #expect(first.path == "/api/v1/namespaces/grid/pods/agent-7")
                #expect(first.authorization == "Bearer secret-token")
                #expect(first.contentType == "application/merge-patch+json")
                agent.stop()
                group.cancelAll()
            }
            await pod.shutdown()
        }
    }

    @Test func aRefusedPatchNamesTheRule() async throws {
        let server = FakeKubernetesAPI()
        server.forbid("patch")
        try await server.serve { _, api in
            var environment = api
            environment.values["MY_POD_NAME"] = "agent-7"
            environment.values["MY_POD_NAMESPACE"] = "grid"
            let pod = try #require(try PodDeletionCost.make(setting: "on", environment: environment))
            do {
                try await pod.mark(busy: true)
                Issue.record("a refused patch passed")
            } catch let error as GridError {
                #expect(error.code == .unauthorized)
                #expect(error.message.contains(#"apiGroups [""], resources [pods], verbs [patch]"#), "\(error.message)")
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
