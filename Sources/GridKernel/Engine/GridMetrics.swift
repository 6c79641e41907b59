import CoreMetrics

/// The names of the kernel's metrics. The kernel records them through swift-metrics and never
/// bootstraps it: `htc-server` exports them on `/metrics`, `htc-agent --metrics-listen` on its own
/// `/metrics`; without a bootstrapped backend they cost nothing.
public enum GridMetricName {
    /// Counter: tasks submitted through a ``GridClient``.
    public static let tasksSubmitted = "htc_tasks_submitted_total"
    /// Counter: run outcomes an agent stored, by `outcome`: `finished`, `retried` (failed, back to
    /// pending), `failed` (for good), `discarded` (cancelled or lease lost while running).
    public static let taskOutcomes = "htc_task_outcomes_total"
    /// Counter: expired leases a reaper handled, by `outcome`: `requeued` or `failed`.
    public static let leaseExpiries = "htc_lease_expiries_total"
    /// Counter: retries, i.e. tasks sent back to pending, by `cause`: `failure` or `lease_expired`.
    public static let retries = "htc_task_retries_total"
    /// Counter: tasks failed because the queue dead-lettered their message.
    public static let deadLettered = "htc_tasks_dead_lettered_total"
    /// Counter: interrupted submissions a reaper repaired.
    public static let submissionsRepaired = "htc_submissions_repaired_total"
    /// Counter: tasks an agent gave back unrun (its input could not be read, or it stopped first).
    public static let released = "htc_tasks_released_total"
}

/// The kernel's counters, made once per component (swift-metrics unregisters a metric when its last
/// handle goes away, so components keep theirs for their lifetime).
struct GridCounters: Sendable {
    let submitted = Counter(label: GridMetricName.tasksSubmitted)
    let finished = Counter(label: GridMetricName.taskOutcomes, dimensions: [("outcome", "finished")])
    let retried = Counter(label: GridMetricName.taskOutcomes, dimensions: [("outcome", "retried")])
    let failed = Counter(label: GridMetricName.taskOutcomes, dimensions: [("outcome", "failed")])
    let discarded = Counter(label: GridMetricName.taskOutcomes, dimensions: [("outcome", "discarded")])
    let expiredRequeued = Counter(label: GridMetricName.leaseExpiries, dimensions: [("outcome", "requeued")])
    let expiredFailed = Counter(label: GridMetricName.leaseExpiries, dimensions: [("outcome", "failed")])
    let retriesAfterFailure = Counter(label: GridMetricName.retries, dimensions: [("cause", "failure")])
    let retriesAfterExpiry = Counter(label: GridMetricName.retries, dimensions: [("cause", "lease_expired")])
    let deadLettered = Counter(label: GridMetricName.deadLettered)
    let submissionsRepaired = Counter(label: GridMetricName.submissionsRepaired)
    let released = Counter(label: GridMetricName.released)
}
