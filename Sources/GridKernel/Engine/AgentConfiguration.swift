/// Settings of an ``Agent``. The defaults suit short tasks on a small machine; every one has a flag
/// and an `HTC_*` variable in `htc-agent` (see docs/configuration.md).
public struct AgentConfiguration: Sendable {
    /// The agent's identity, stored as the owner of the tasks it runs.
    public var id: AgentID
    /// How many tasks run at once. Default 8.
    public var concurrency: Int
    /// The most messages leased in one call. Default 256.
    public var leaseBatchSize: Int
    /// How long a lease (queue visibility and state-store ownership) lasts before it must be renewed.
    /// An agent that dies loses its tasks to others after about this long. Default 30 s.
    public var leaseDuration: Duration
    /// How often running tasks are checked: a task whose lease is due (``renewAfter``) is renewed, the
    /// others' sessions are read, so a cancelled session's tasks stop within one interval. Must be at
    /// most half the ``leaseDuration``. Default 5 s.
    public var heartbeatInterval: Duration
    /// How long one lease call may wait for messages when none is ready: queues that are told of new
    /// messages (Redis, PostgreSQL, SQLite) return within a millisecond of an enqueue, SQS long-polls
    /// (at most 20 s per request), and the in-memory queue answers at once. ``Agent/stop()`` ends a
    /// waiting call at once. Default 20 s: an idle agent costs one request per 20 s on SQS.
    public var pollWait: Duration
    /// Back-off after an empty lease: starts at the lower bound, doubles up to the upper. Default 2–200 ms.
    public var idleBackoff: ClosedRange<Duration>
    /// One lease call in this many serves the lowest priorities first, so a flood of high-priority work
    /// cannot starve the rest; 0 turns the guard off. Default 10.
    public var starvationGuard: Int
    /// Outputs up to this many bytes are kept in the task record instead of the payload store, unless the
    /// payload store is a ``SharedPayloadStore`` (every output goes there). Default 8 KiB.
    public var inlineOutputLimit: Int
    /// A task that failed and will be retried becomes visible again after this delay. Default 1 s.
    public var retryDelay: Duration
    /// On a graceful stop, running tasks get this long to finish before they are stopped and handed
    /// back. Default 30 s.
    public var drainTimeout: Duration
    /// Called with the ids of tasks whose handler ran to completion, once per flush (for `htc bench`'s
    /// duplicate count and for tests).
    public var onRunsCompleted: (@Sendable ([TaskID]) -> Void)?

    /// Creates a configuration with the defaults.
    public init(
        id: AgentID = .unique(),
        concurrency: Int = 8,
        leaseBatchSize: Int = 256,
        leaseDuration: Duration = .seconds(30),
        heartbeatInterval: Duration = .seconds(5),
        pollWait: Duration = .seconds(20),
        idleBackoff: ClosedRange<Duration> = .milliseconds(2) ... .milliseconds(200),
        starvationGuard: Int = 10,
        inlineOutputLimit: Int = 8 * 1024,
        retryDelay: Duration = .seconds(1),
        drainTimeout: Duration = .seconds(30),
        onRunsCompleted: (@Sendable ([TaskID]) -> Void)? = nil
    ) {
        self.id = id
        self.concurrency = concurrency
        self.leaseBatchSize = leaseBatchSize
        self.leaseDuration = leaseDuration
        self.heartbeatInterval = heartbeatInterval
        self.pollWait = pollWait
        self.idleBackoff = idleBackoff
        self.starvationGuard = starvationGuard
        self.inlineOutputLimit = inlineOutputLimit
        self.retryDelay = retryDelay
        self.drainTimeout = drainTimeout
        self.onRunsCompleted = onRunsCompleted
    }

    /// How old a lease gets before a heartbeat renews it: the lease duration less three heartbeat
    /// intervals (none with the shortest allowed lease), so every renewal leaves at least two intervals
    /// to spare and a task shorter than this is never renewed (15 s with the defaults: short tasks
    /// cost no heartbeat writes).
    public var renewAfter: Duration {
        let after = leaseDuration - heartbeatInterval * 3
        return after > .zero ? after : .zero
    }

    /// Checks the settings.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` naming the setting that is out of range.
    public func validate() throws {
        guard concurrency >= 1 else { throw GridError.invalidArgument("concurrency must be at least 1 (HTC_CONCURRENCY)") }
        guard leaseBatchSize >= 1 else { throw GridError.invalidArgument("lease batch size must be at least 1") }
        guard heartbeatInterval > .zero, heartbeatInterval * 2 <= leaseDuration else {
            throw GridError.invalidArgument(
                "heartbeat interval (\(heartbeatInterval)) must be positive and at most half the lease duration (\(leaseDuration))"
            )
        }
    }
}
