import GridKernel
import Prometheus
import Synchronization

/// The names of the server's metrics, one place for dashboards to look them up.
public enum ServerMetricName {
    /// Counter: sessions created.
    public static var sessionsCreated: String { Descriptor.sessionsCreated.name }
    /// Counter: sessions cancelled.
    public static var sessionsCancelled: String { Descriptor.sessionsCancelled.name }
    /// Counter: sessions deleted.
    public static var sessionsDeleted: String { Descriptor.sessionsDeleted.name }
    /// Counter: tasks accepted by submissions.
    public static var tasksSubmitted: String { Descriptor.tasksSubmitted.name }
    /// Histogram: time to store one submission batch, in seconds.
    public static var submitDuration: String { Descriptor.submitDuration.name }
    /// Counter: result items returned, by `state`.
    public static var resultsReturned: String { Descriptor.resultsReturned.name }
    /// Counter: long-polls, by `outcome` (`data`: something arrived; `empty`: the wait ran out).
    public static var longPolls: String { Descriptor.longPolls.name }
    /// Gauge: tasks by `state`, summed over the sessions at every scrape (at most
    /// ``ServerConfiguration/metricsSessionLimit`` sessions).
    public static var tasks: String { Descriptor.tasks.name }
    /// Gauge: how many sessions the last `tasks` sum covered, and 1 when that was all of them.
    public static var tasksSessions: String { Descriptor.tasksSessions.name }
    /// Gauge: messages in the task queue by `priority` and `kind` (`waiting`, `in_flight`), read at
    /// every scrape.
    public static var queueDepth: String { Descriptor.queueDepth.name }
    /// Gauge: the agents the scaling policy wants (what KEDA reads at `GET /v1/scaling`).
    public static var desiredAgents: String { Descriptor.desiredAgents.name }
    /// Gauge: the agents running, when the server scales them (`--local-agents`: its processes;
    /// `--scale-deployment`: the Deployment's `status.replicas`).
    public static var runningAgents: String { Descriptor.runningAgents.name }

    enum Descriptor {
        static var sessionsCreated: MetricNameDescriptor { server("sessions_created", unit: "total", help: "Sessions created.") }
        static var sessionsCancelled: MetricNameDescriptor { server("sessions_cancelled", unit: "total", help: "Sessions cancelled.") }
        static var sessionsDeleted: MetricNameDescriptor { server("sessions_deleted", unit: "total", help: "Sessions deleted.") }
        static var tasksSubmitted: MetricNameDescriptor { server("tasks_submitted", unit: "total", help: "Tasks accepted by submissions.") }
        static var submitDuration: MetricNameDescriptor {
            server("submit_duration", unit: "seconds", help: "Time to store one submission batch.")
        }
        static var resultsReturned: MetricNameDescriptor { server("results_returned", unit: "total", help: "Result items returned, by state.") }
        static var longPolls: MetricNameDescriptor {
            server("long_polls", unit: "total", help: "Long-polls, by outcome: data (results arrived) or empty (the wait ran out).")
        }
        static var tasks: MetricNameDescriptor {
            MetricNameDescriptor(namespace: "htc", metricName: "tasks", unitName: "", helpText: "Tasks by state, summed over the sessions at each scrape.")
        }
        static var tasksSessions: MetricNameDescriptor {
            MetricNameDescriptor(
                namespace: "htc", metricName: "tasks_sessions", unitName: "",
                helpText: "Sessions counted into htc_tasks (kind=counted) and whether that was all of them (kind=complete, 1 or 0)."
            )
        }
        static var queueDepth: MetricNameDescriptor {
            MetricNameDescriptor(
                namespace: "htc", metricName: "queue_depth", unitName: "",
                helpText: "Messages in the task queue by priority and kind (waiting, in_flight), read at each scrape."
            )
        }

        static var desiredAgents: MetricNameDescriptor {
            MetricNameDescriptor(namespace: "htc", metricName: "desired_agents", unitName: "", helpText: "Agents the scaling policy wants.")
        }
        static var runningAgents: MetricNameDescriptor {
            MetricNameDescriptor(namespace: "htc", metricName: "running_agents", unitName: "", helpText: "Agents running, when this server scales them (--local-agents, --scale-deployment).")
        }

        private static func server(_ name: String, unit: String, help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "htc", subsystem: "server", metricName: name, unitName: unit, helpText: help)
        }
    }
}

/// The control plane's metrics, exported in the Prometheus text format at `GET /metrics`.
///
/// HTTP request counts and latencies come from Hummingbird's metrics middleware through swift-metrics;
/// the executable bootstraps swift-metrics with a factory over the same ``registry``.
public final class ServerMetrics: Sendable {
    /// The registry every metric of the server lives in.
    public let registry: PrometheusCollectorRegistry
    let sessionsCreated: Counter
    let sessionsCancelled: Counter
    let sessionsDeleted: Counter
    let tasksSubmitted: Counter
    let submitDuration: DurationHistogram
    private let results: [TaskState: Counter]
    private let longPollsWithData: Counter
    private let longPollsEmpty: Counter
    private let depthGauges = Mutex<[Int: (waiting: Gauge, inFlight: Gauge)]>([:])
    private let taskGauges: [TaskState: Gauge]
    private let sessionsCounted: Gauge
    private let sessionsComplete: Gauge
    private let desiredAgents: Gauge
    private let runningAgents: Gauge

    /// Creates the metrics in `registry`.
    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        sessionsCreated = registry.makeCounter(descriptor: ServerMetricName.Descriptor.sessionsCreated)
        sessionsCancelled = registry.makeCounter(descriptor: ServerMetricName.Descriptor.sessionsCancelled)
        sessionsDeleted = registry.makeCounter(descriptor: ServerMetricName.Descriptor.sessionsDeleted)
        tasksSubmitted = registry.makeCounter(descriptor: ServerMetricName.Descriptor.tasksSubmitted)
        submitDuration = registry.makeDurationHistogram(
            descriptor: ServerMetricName.Descriptor.submitDuration,
            buckets: [.milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
                      .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5)]
        )
        var results: [TaskState: Counter] = [:]
        for state in TaskState.allCases {
            results[state] = registry.makeCounter(descriptor: ServerMetricName.Descriptor.resultsReturned, labels: [("state", state.rawValue)])
        }
        self.results = results
        longPollsWithData = registry.makeCounter(descriptor: ServerMetricName.Descriptor.longPolls, labels: [("outcome", "data")])
        longPollsEmpty = registry.makeCounter(descriptor: ServerMetricName.Descriptor.longPolls, labels: [("outcome", "empty")])
        var taskGauges: [TaskState: Gauge] = [:]
        for state in TaskState.allCases {
            taskGauges[state] = registry.makeGauge(descriptor: ServerMetricName.Descriptor.tasks, labels: [("state", state.rawValue)])
        }
        self.taskGauges = taskGauges
        sessionsCounted = registry.makeGauge(descriptor: ServerMetricName.Descriptor.tasksSessions, labels: [("kind", "counted")])
        sessionsComplete = registry.makeGauge(descriptor: ServerMetricName.Descriptor.tasksSessions, labels: [("kind", "complete")])
        desiredAgents = registry.makeGauge(descriptor: ServerMetricName.Descriptor.desiredAgents)
        runningAgents = registry.makeGauge(descriptor: ServerMetricName.Descriptor.runningAgents)
    }

    /// Sets the scaling gauges.
    func scaling(desired: Int, current: Int?) {
        desiredAgents.set(to: Double(desired))
        if let current { runningAgents.set(to: Double(current)) }
    }

    /// Sets the tasks-by-state gauges.
    func tasksByState(_ sum: (counts: StateCounts, sessions: Int, complete: Bool)) {
        for state in TaskState.allCases { taskGauges[state]?.set(to: Double(sum.counts[state])) }
        sessionsCounted.set(to: Double(sum.sessions))
        sessionsComplete.set(to: sum.complete ? 1 : 0)
    }

    func returned(_ count: Int, state: TaskState) {
        results[state]?.increment(by: Int64(count))
    }

    func longPoll(foundData: Bool) {
        (foundData ? longPollsWithData : longPollsEmpty).increment()
    }

    /// Sets the queue-depth gauges; priorities that emptied drop to zero.
    func queueDepth(_ depth: [Int: QueueDepth]) {
        depthGauges.withLock { gauges in
            for (priority, gauge) in gauges where depth[priority] == nil {
                gauge.waiting.set(to: 0)
                gauge.inFlight.set(to: 0)
            }
            for (priority, value) in depth {
                let gauge =
                    gauges[priority]
                    ?? (
                        waiting: registry.makeGauge(descriptor: ServerMetricName.Descriptor.queueDepth, labels: [("priority", "\(priority)"), ("kind", "waiting")]),
                        inFlight: registry.makeGauge(descriptor: ServerMetricName.Descriptor.queueDepth, labels: [("priority", "\(priority)"), ("kind", "in_flight")])
                    )
                gauges[priority] = gauge
                gauge.waiting.set(to: Double(value.waiting))
                gauge.inFlight.set(to: Double(value.inFlight))
            }
        }
    }
}
