import Foundation

/// Settings of a ``ScalingPolicy``.
public struct ScalingConfiguration: Sendable, Hashable {
    /// Tasks one agent is expected to handle at once (waiting and running together). Default 8.
    public var tasksPerAgent: Int
    /// Never fewer agents than this. Default 0.
    public var minimum: Int
    /// Never more agents than this. Default 100.
    public var maximum: Int
    /// After a change, do not scale in again before this long; scaling out is never delayed. Default 60 s.
    public var scaleInCooldown: Duration

    /// Creates a configuration with the defaults.
    public init(tasksPerAgent: Int = 8, minimum: Int = 0, maximum: Int = 100, scaleInCooldown: Duration = .seconds(60)) {
        self.tasksPerAgent = tasksPerAgent
        self.minimum = minimum
        self.maximum = maximum
        self.scaleInCooldown = scaleInCooldown
    }

    /// Checks the settings.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` naming the setting that is out of range.
    public func validate() throws {
        guard tasksPerAgent >= 1 else { throw GridError.invalidArgument("tasks per agent must be at least 1") }
        guard minimum >= 0, maximum >= minimum else {
            throw GridError.invalidArgument("agent bounds \(minimum)..\(maximum) are invalid: need 0 ≤ minimum ≤ maximum")
        }
    }
}

/// Turns load into a desired number of agents.
///
/// Load is the backlog **and** the tasks in flight: HTC-Grid counts only visible messages and so scales
/// in while pods are busy. The desired count is `ceil((waiting + inFlight) / tasksPerAgent)`, clamped to
/// the bounds. Scaling out happens at once; scaling in waits for the cool-down since the last change and
/// then goes down to what the load needs, so a burst of short tasks does not make the pool flap.
public struct ScalingPolicy: Sendable {
    /// The settings.
    public let configuration: ScalingConfiguration
    private var current: Int?
    private var lastChange: Date?

    /// Creates a policy.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for invalid settings.
    public init(configuration: ScalingConfiguration) throws {
        try configuration.validate()
        self.configuration = configuration
    }

    /// The agents the load needs, ignoring the cool-down.
    public func needed(for depth: [Int: QueueDepth]) -> Int {
        let load = depth.values.reduce(0) { $0 + $1.waiting + $1.inFlight }
        let agents = (load + configuration.tasksPerAgent - 1) / configuration.tasksPerAgent
        return min(configuration.maximum, max(configuration.minimum, agents))
    }

    /// The desired number of agents now, given the queue depth; call it on every scaling tick.
    public mutating func desired(for depth: [Int: QueueDepth], at now: Date) -> Int {
        let needed = needed(for: depth)
        guard let current else {
            self.current = needed
            lastChange = now
            return needed
        }
        if needed > current {
            self.current = needed
            lastChange = now
        } else if needed < current {
            let quietFor = lastChange.map { now.timeIntervalSince($0) } ?? .infinity
            if quietFor >= configuration.scaleInCooldown.timeInterval {
                self.current = needed
                lastChange = now
            }
        }
        return self.current ?? needed
    }
}
