import Foundation
import GridKernel
import HTCCore
import Hummingbird
import ServiceLifecycle

/// How the server decides the number of agents, and, with `--local-agents`, starts them.
///
/// The ``GridKernel/Autoscaler`` ticks on an interval; its last decision is served at
/// `GET /v1/scaling` (what KEDA's `metrics-api` scaler reads) and exported as the gauge
/// `htc_desired_agents`. With a ``HTCCore/LocalProcessScaler`` the server also carries the decision out
/// with `htc-agent` processes on this machine, and drains them when it shuts down.
public struct ServerScaling: Sendable {
    /// Decides (and applies, with a local scaler).
    public let autoscaler: Autoscaler
    /// The local agents, when the server runs them.
    public let local: LocalProcessScaler?
    /// The policy's settings, reported with each decision.
    public let configuration: ScalingConfiguration

    /// Wraps an autoscaler.
    public init(autoscaler: Autoscaler, local: LocalProcessScaler?, configuration: ScalingConfiguration) {
        self.autoscaler = autoscaler
        self.local = local
        self.configuration = configuration
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
    /// Agents running now, when this server runs them (`--local-agents`).
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
        let current = try await scaling.local?.capacity().current
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

/// Runs the autoscaler until shutdown, then drains the local agents.
struct AutoscalerService: Service {
    let scaling: ServerScaling

    func run() async throws {
        await cancelWhenGracefulShutdown { await scaling.autoscaler.run() }
        await scaling.local?.stopAll()
    }
}
