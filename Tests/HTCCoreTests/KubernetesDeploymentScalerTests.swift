import Foundation
import GridKernel
import Logging
import Testing

@testable import HTCCore

/// `htc-server --scale-deployment` sets the agent Deployment's replicas through the scale subresource;
/// here the Kubernetes API is ``FakeKubernetesAPI`` on 127.0.0.1.
@Suite struct KubernetesDeploymentScalerTests {
    private static let scalePath = "/apis/apps/v1/namespaces/grid/deployments/htc-agent/scale"

    /// Runs `body` with a scaler of `grid/deployment` on the API `api` points at, and closes it after
    /// (AsyncHTTPClient insists, in debug builds).
    private func withScaler(
        _ api: Environment, deployment: String = "htc-agent", _ body: (KubernetesDeploymentScaler) async throws -> Void
    ) async throws {
        var environment = api
        environment.values["HTC_KUBERNETES_NAMESPACE"] = environment.values["HTC_KUBERNETES_NAMESPACE"] ?? "grid"
        let scaler = try KubernetesDeploymentScaler.make(deployment: deployment, environment: environment)
        do {
            try await body(scaler)
        } catch {
            await scaler.shutdown()
            throw error
        }
        await scaler.shutdown()
    }

    @Test func readsTheScaleAndPatchesTheReplicasWithTheToken() async throws {
        let server = FakeKubernetesAPI()
        server.setDeployment("grid/htc-agent", .init(replicas: 2, running: 1))
        try await server.serve { _, api in
            try await withScaler(api) { scaler in
                #expect(try await scaler.capacity() == AgentCapacity(desired: 2, current: 1))
                let read = try #require(server.requests.first)
                #expect(read.method == "GET" && read.path == Self.scalePath && read.authorization == "Bearer secret-token")

                try await scaler.apply(desired: 5)
                #expect(server.patches.count == 1)
                let patch = try #require(server.patches.first)
                #expect(patch.path == Self.scalePath)
                #expect(patch.authorization == "Bearer secret-token")
                #expect(patch.contentType == "application/merge-patch+json")
                #expect(patch.body == #"{"spec":{"replicas":5}}"#)
                #expect(server.deployment("grid/htc-agent")?.replicas == 5)
                #expect(try await scaler.capacity() == AgentCapacity(desired: 5, current: 1))

                try await scaler.apply(desired: 5)
                #expect(server.patches.count == 1, "an unchanged count is not patched again")
                // The API server leaves spec.replicas out of a Scale when it is 0.
                try await scaler.apply(desired: 0)
                #expect(server.patches.last?.body == #"{"spec":{"replicas":0}}"#)
                #expect(try await scaler.capacity().desired == 0)
                await #expect(throws: GridError.self) { try await scaler.apply(desired: -1) }
                #expect(server.patches.count == 2)
            }
        }
    }

    @Test func aRefusalNamesTheRBACRuleToAdd() async throws {
        let server = FakeKubernetesAPI()
        server.setDeployment("grid/htc-agent", .init(replicas: 1, running: 1))
        try await server.serve { _, api in
            try await withScaler(api) { scaler in
                server.forbid("patch")
                #expect(try await scaler.capacity().desired == 1, "get is still allowed")
                do {
                    try await scaler.apply(desired: 3)
                    Issue.record("a refused patch passed")
                } catch let error as GridError {
                    #expect(error.code == .unauthorized)
                    for word in ["403", "patch", "deployments/scale", "\"htc-agent\"", "apiGroups [apps]", "verbs [patch]", "cannot patch"] {
                        #expect(error.message.contains(word), "\(word) missing in: \(error.message)")
                    }
            }
            server.forbid("get")
            do {
                _ = try await scaler.capacity()
                Issue.record("a refused get passed")
            } catch let error as GridError {
                #expect(error.code == .unauthorized && error.message.contains("verbs [get]"), "\(error.message)")
            }
            #expect(server.deployment("grid/htc-agent")?.replicas == 1)
            }
        }
    }

    @Test func aMissingDeploymentIsNotFound() async throws {
        let server = FakeKubernetesAPI()
        try await server.serve { _, api in
            try await withScaler(api, deployment: "agents") { scaler in
                do {
                    try await scaler.apply(desired: 1)
                    Issue.record("a missing Deployment was scaled")
                } catch let error as GridError {
                    #expect(error.code == .notFound && error.message.contains("\"agents\""), "\(error.message)")
            }
            #expect(server.patches.isEmpty)
            }
        }
    }

    @Test func anUnreachableAPIIsUnavailable() async throws {
        let token = try FakeKubernetesAPI.tokenFile()
        defer { try? FileManager.default.removeItem(atPath: token) }
        // Nothing listens on port 1 of loopback. AsyncHTTPClient retries a refused connection until the
        // request's deadline, so this takes the scaler's 10 s timeout.
        try await withScaler(Environment(["HTC_KUBERNETES_API": "http://127.0.0.1:1", "HTC_KUBERNETES_TOKEN_FILE": token])) { scaler in
            do {
                _ = try await scaler.capacity()
                Issue.record("an unreachable API answered")
            } catch let error as GridError {
                #expect(error.code == .unavailable && error.message.contains("cannot be reached"), "\(error.message)")
            }
        }
    }

    @Test func outsideAPodItSaysWhatIsMissing() throws {
        do {
            _ = try KubernetesDeploymentScaler.make(deployment: "htc-agent", environment: Environment([:]))
            Issue.record("made a scaler outside a pod")
        } catch let error as GridError {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("KUBERNETES_SERVICE_HOST") && error.message.contains("token"), "\(error.message)")
        }
        #expect(throws: GridError.self) { try KubernetesDeploymentScaler.make(deployment: "", environment: Environment([:])) }
        #expect(throws: GridError.self) { try KubernetesDeploymentScaler.make(deployment: "ns/name", environment: Environment([:])) }
    }

    @Test func inClusterAddressAndNamespace() async throws {
        let token = try FakeKubernetesAPI.tokenFile()
        defer { try? FileManager.default.removeItem(atPath: token) }
        let cluster = Environment([
            "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "6443", "HTC_KUBERNETES_TOKEN_FILE": token,
            "HTC_KUBERNETES_NAMESPACE": "batch",
        ])
        try await withScaler(cluster) { scaler in
            #expect(scaler.url == "https://10.96.0.1:6443/apis/apps/v1/namespaces/batch/deployments/htc-agent/scale")
            #expect(scaler.namespace == "batch" && scaler.deployment == "htc-agent")
        }
        try await withScaler(Environment(["KUBERNETES_SERVICE_HOST": "fd00::1", "HTC_KUBERNETES_TOKEN_FILE": token])) { scaler in
            #expect(scaler.url == "https://[fd00::1]:443/apis/apps/v1/namespaces/grid/deployments/htc-agent/scale")
        }
    }

    /// The kernel's autoscaler drives the Deployment: out at once with the load, in only after the
    /// cool-down, on a ManualClock (no sleeping for time to pass; the waits are for the HTTP round trips).
    @Test func theAutoscalerScalesTheDeploymentOutAndAfterTheCooldownIn() async throws {
        let server = FakeKubernetesAPI()
        server.setDeployment("grid/htc-agent", .init(replicas: 1, running: 1))
        try await server.serve { _, api in
            try await withScaler(api) { scaler in
                let clock = ManualClock()
                let queue = InMemoryTaskQueue(clock: clock)
                let autoscaler = try Autoscaler(
                    queue: queue, scaler: scaler,
                    configuration: ScalingConfiguration(tasksPerAgent: 4, minimum: 1, maximum: 10, scaleInCooldown: .seconds(60)),
                    interval: .seconds(5), clock: clock, logger: Logger(label: "test")
                )
                let session = SessionID.random()
                try await queue.enqueue((0..<14).map { QueuedTask(id: TaskID(session: session, index: $0), priority: 0) })
                func replicas() -> [String] { server.patches.map(\.body) }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { await autoscaler.run() }
                    // 14 tasks at 4 per agent: 4 agents, at the first tick.
                    try await waitFor("the scale-out") { replicas() == [#"{"spec":{"replicas":4}}"#] && clock.sleeperCount == 1 }
                    #expect(server.deployment("grid/htc-agent")?.replicas == 4)

                    // The work is done; within the cool-down the Deployment keeps its 4 agents.
                    let leases = try await queue.lease(max: 14, duration: .seconds(600), order: .highestFirst, wait: .zero)
                    try await queue.acknowledge(leases)
                    clock.advance(by: .seconds(5))
                    try await waitFor("a tick within the cool-down") { await autoscaler.last?.waiting == 0 && clock.sleeperCount == 1 }
                    #expect(await autoscaler.last?.desired == 4)
                    #expect(replicas().count == 1)

                    // After the cool-down it scales in to the minimum.
                    clock.advance(by: .seconds(60))
                    try await waitFor("the scale-in") { replicas().last == #"{"spec":{"replicas":1}}"# && clock.sleeperCount == 1 }
                    #expect(replicas() == [#"{"spec":{"replicas":4}}"#, #"{"spec":{"replicas":1}}"#])
                    #expect(server.deployment("grid/htc-agent")?.replicas == 1)
                    group.cancelAll()
                }
            }
        }
    }
}

