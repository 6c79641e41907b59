import Logging

/// Settings of a ``Reaper``.
public struct ReaperConfiguration: Sendable {
    /// How often to look for expired leases and dead letters. Default 5 s.
    public var interval: Duration
    /// How many expired tasks to handle per state-store call. Default 500.
    public var batchSize: Int
    /// The most tasks handled in one pass, so one pass never runs unbounded. Default 50,000.
    public var maxPerPass: Int

    /// Creates a configuration with the defaults.
    public init(interval: Duration = .seconds(5), batchSize: Int = 500, maxPerPass: Int = 50_000) {
        self.interval = interval
        self.batchSize = batchSize
        self.maxPerPass = maxPerPass
    }
}

/// What one pass of the reaper did.
public struct ReaperReport: Sendable, Hashable {
    /// Tasks whose lease expired and that went back to `pending`.
    public var requeued = 0
    /// Tasks whose lease expired once their retries were used up, now `failed`.
    public var failed = 0
    /// Tasks failed because the queue dead-lettered their message.
    public var deadLettered = 0

    /// Creates an empty report.
    public init() {}
}

/// Brings back tasks whose agent died: a `processing` task whose lease expired goes back to `pending`
/// with `retries + 1`, or to `failed` once its retries are used up. Its message was never acknowledged,
/// so the queue delivers it again once its own lease lapses; nothing is stranded. Tasks whose message
/// the queue dead-lettered are failed with the reason.
///
/// Every transition is conditional, so any number of reapers may run at once (each agent runs one).
public struct Reaper: Sendable {
    private let backends: GridBackends
    private let configuration: ReaperConfiguration
    private let clock: any GridClock
    private let logger: Logger
    private let counters = GridCounters()

    /// Creates a reaper.
    public init(
        backends: GridBackends,
        configuration: ReaperConfiguration = ReaperConfiguration(),
        clock: any GridClock = SystemClock(),
        logger: Logger = Logger(label: "htc.reaper")
    ) {
        self.backends = backends
        self.configuration = configuration
        self.clock = clock
        self.logger = logger
    }

    /// Runs passes every ``ReaperConfiguration/interval`` until cancelled; errors are logged and the next
    /// pass tries again.
    public func run() async {
        while !Task.isCancelled {
            do {
                let report = try await runOnce()
                if report != ReaperReport() {
                    logger.info(
                        "reaped tasks",
                        metadata: ["requeued": "\(report.requeued)", "failed": "\(report.failed)", "deadLettered": "\(report.deadLettered)"]
                    )
                }
            } catch {
                logger.warning("reaper pass failed", metadata: ["error": "\(error)"])
            }
            guard (try? await clock.sleep(for: configuration.interval)) != nil else { return }
        }
    }

    /// Runs one pass.
    ///
    /// - Throws: ``GridError/Code/unavailable`` when a backend cannot be reached.
    public func runOnce() async throws -> ReaperReport {
        var report = ReaperReport()
        var handled = 0
        while handled < configuration.maxPerPass {
            let now = clock.now
            let expired = try await backends.state.expiredLeases(now: now, limit: configuration.batchSize)
            guard !expired.isEmpty else { break }
            let outcome = try await backends.state.expire(expired.map(\.id), now: now)
            for state in outcome.values {
                if state == .pending { report.requeued += 1 } else { report.failed += 1 }
            }
            handled += expired.count
            if expired.count < configuration.batchSize { break }
        }
        counters.expiredRequeued.increment(by: report.requeued)
        counters.retriesAfterExpiry.increment(by: report.requeued)
        counters.expiredFailed.increment(by: report.failed)
        if let queue = backends.queue as? any DeadLetteringTaskQueue {
            while report.deadLettered < configuration.maxPerPass {
                let letters = try await queue.drainDeadLetters(max: configuration.batchSize)
                guard !letters.isEmpty else { break }
                let failed = try await backends.state.forceFail(
                    letters.map { TaskFailure(id: $0.id, message: $0.reason, retryable: false) },
                    at: clock.now
                )
                report.deadLettered += failed.count
                if letters.count < configuration.batchSize { break }
            }
        }
        counters.deadLettered.increment(by: report.deadLettered)
        return report
    }
}
