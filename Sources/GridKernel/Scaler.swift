/// The desired and current number of agents, as a scaler reports it.
public struct AgentCapacity: Sendable, Hashable, Codable {
    /// The number of agents last asked for.
    public var desired: Int
    /// The number of agents running now.
    public var current: Int

    /// Creates a capacity report.
    public init(desired: Int, current: Int) {
        self.desired = desired
        self.current = current
    }
}

/// Something that starts and stops agents: local processes, a Kubernetes Deployment, …
///
/// The kernel's ``ScalingPolicy`` decides how many agents are wanted; a scaler only carries it out.
public protocol Scaler: Sendable {
    /// Reports the desired and current agent counts.
    ///
    /// - Throws: ``GridError/Code/unavailable`` when the platform cannot be asked.
    func capacity() async throws -> AgentCapacity

    /// Asks for `desired` agents. Scaling in must never stop an agent that is running a task.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a negative count; ``GridError/Code/unavailable``.
    func apply(desired: Int) async throws
}
