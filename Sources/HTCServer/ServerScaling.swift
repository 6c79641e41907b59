import Foundation
import GridKernel
import HTCCore
import Hummingbird
import ServiceLifecycle

/// How the server decides the number of agents, and, with `--local-agents` or `--scale-deployment`,
/// carries the decision out.
///
/// The ``GridKernel/Autoscaler`` ticks on an interval; its last decision is served at
/// `GET /v1/scaling` (what KEDA's `metrics-api` scaler reads) and exported as the gauge
/// `htc_desired_agents`. With a scaler the server also applies the decision: a
/// ``HTCCore/LocalProcessScaler`` runs `htc-agent` processes on this machine (and drains them when the
/// server shuts down), a ``HTCCore/KubernetesDeploymentScaler`` sets the agent Deployment's replicas.
public struct ServerScaling: Sendable {
    /// Decides (and applies, with a scaler).
    public let autoscaler: Autoscaler
    /// What carries the decisions out, when the server does; `nil` when a platform reads them (KEDA).
    public let scaler: (any Scaler)?
    /// The policy's settings, reported with each decision.
    public let configuration: ScalingConfiguration

    /// Wraps an autoscaler and the scaler it applies its decisions with.
    public init(autoscaler: Autoscaler, scaler: (any Scaler)?, configuration: ScalingConfiguration) {
        self.autoscaler = autoscaler
        self.scaler = scaler
        self.configuration = configuration
    }

    /// The local agents, when the server runs them.
    public var local: LocalProcessScaler? { scaler as? LocalProcessScaler }

    /// The agents running now, when the server scales them; `nil` without a scaler or when it cannot
    /// be asked (the Kubernetes API is down: the decision is still served).
    func currentAgents() async -> Int? {
        try? await scaler?.capacity().current
    }

    /// Stops what the scaler started: drains the local agents, closes the Kubernetes client. The agent
    /// Deployment keeps its replicas.
    func shutdown() async {
        await local?.stopAll()
        await (scaler as? KubernetesDeploymentScaler)?.shutdown()
    }

    /// The last decision, or a fresh one before the first tick.
    func decision() async throws -> ScalingDecision {
        if let last = await autoscaler.last { return last }
        return try await autoscaler.tick()
    }
}

/// `GET /v1/scaling`.
struct ScalingBody: Codable, Equatable {
    /// The agents wanted: backlog and running tasks over tasks per agent, within the bounds, after the
    /// scale-in cool-down.
    var desired_agents: Int
    /// Tasks waiting in the queue.
    var backlog: Int
    /// Tasks leased by agents.
    var in_flight: Int
    /// Agents running now, when this server scales them (`--local-agents`, `--scale-deployment`).
    var current_agents: Int?
    var minimum_agents: Int
    var maximum_agents: Int
    var tasks_per_agent: Int
}

extension GridAPI {
    func scalingDecision() async throws -> Response {
        guard let scaling else {
            throw GridError.notFound("this server does not decide scaling; it was started without a scaling policy")
        }
        let decision = try await scaling.decision()
        let current = await scaling.currentAgents()
        metrics.scaling(desired: decision.desired, current: current)
        return try Self.json(
            ScalingBody(
                desired_agents: decision.desired, backlog: decision.waiting, in_flight: decision.inFlight, current_agents: current,
                minimum_agents: scaling.configuration.minimum, maximum_agents: scaling.configuration.maximum,
                tasks_per_agent: scaling.configuration.tasksPerAgent
            )
        )
    }
}

/// Runs the autoscaler until shutdown, then drains the local agents (a scaled Deployment keeps its
/// replicas).
struct AutoscalerService: Service {
    let scaling: ServerScaling

    func run() async throws {
        await cancelWhenGracefulShutdown { await scaling.autoscaler.run() }
        await scaling.shutdown()
    }
}
