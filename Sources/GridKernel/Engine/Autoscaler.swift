import Foundation
import Logging

/// One scaling decision: the load that was seen and the agents it asks for.
public struct ScalingDecision: Sendable, Hashable, Codable {
    /// The agents wanted, after the bounds and the scale-in cool-down.
    public var desired: Int
    /// Tasks waiting in the queue (delayed retries included).
    public var waiting: Int
    /// Tasks leased by agents.
    public var inFlight: Int

    /// Creates a decision.
    public init(desired: Int, waiting: Int, inFlight: Int) {
        self.desired = desired
        self.waiting = waiting
        self.inFlight = inFlight
    }
}

/// Applies a ``ScalingPolicy`` to a ``Scaler`` on a fixed interval: reads the queue depth, decides, and
/// asks the scaler for that many agents.
///
/// The scaler may be `nil`: the autoscaler then only decides, for a platform that scales by itself
/// from the published figure (KEDA reading the server's `GET /v1/scaling`).
public actor Autoscaler {
    private let queue: any TaskQueue
    private let scaler: (any Scaler)?
    private var policy: ScalingPolicy
    private let clock: any GridClock
    private let interval: Duration
    private let logger: Logger
    /// The last decision, `nil` before the first tick.
    public private(set) var last: ScalingDecision?

    /// Creates an autoscaler.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for invalid settings.
    public init(
        queue: any TaskQueue,
        scaler: (any Scaler)?,
        configuration: ScalingConfiguration,
        interval: Duration = .seconds(1),
        clock: any GridClock = SystemClock(),
        logger: Logger = Logger(label: "htc.autoscaler")
    ) throws {
        guard interval > .zero else { throw GridError.invalidArgument("the scaling interval must be positive, got \(interval)") }
        self.queue = queue
        self.scaler = scaler
        self.policy = try ScalingPolicy(configuration: configuration)
        self.interval = interval
        self.clock = clock
        self.logger = logger
    }

    /// Decides once and applies the decision.
    ///
    /// - Throws: ``GridError/Code/unavailable`` when the queue or the scaler cannot be reached.
    @discardableResult
    public func tick() async throws -> ScalingDecision {
        let depth = try await queue.depth()
        let desired = policy.desired(for: depth, at: clock.now)
        let decision = ScalingDecision(
            desired: desired,
            waiting: depth.values.reduce(0) { $0 + $1.waiting },
            inFlight: depth.values.reduce(0) { $0 + $1.inFlight }
        )
        if decision.desired != last?.desired {
            logger.info(
                "agents wanted",
                metadata: ["desired": "\(decision.desired)", "waiting": "\(decision.waiting)", "in_flight": "\(decision.inFlight)"]
            )
        }
        last = decision
        try await scaler?.apply(desired: desired)
        return decision
    }

    /// Ticks every interval until the task is cancelled; a failed tick is logged and retried at the next.
    public func run() async {
        while !Task.isCancelled {
            do {
                try await tick()
            } catch {
                logger.warning("scaling tick failed; retrying next interval", metadata: ["error": "\(error)"])
            }
            guard (try? await clock.sleep(for: interval)) != nil else { return }
        }
    }
}
