import GridKernel

/// Limits and settings of the HTTP API; the defaults suit most grids.
public struct ServerConfiguration: Sendable {
    /// The largest request body accepted; larger ones get 413. Default 64 MiB.
    public var maxBodyBytes: Int
    /// The most tasks one submission may carry; more get 413. Default 10,000.
    public var maxTasksPerRequest: Int
    /// The largest input of one task, after base64 decoding; larger ones get 413. Default 8 MiB.
    public var maxPayloadBytes: Int
    /// Outputs up to this size are returned inline in result pages; larger ones are fetched per task
    /// from `GET /v1/tasks/{id}/output`. Default 1 MiB.
    public var inlineOutputLimit: Int
    /// A results page ends early, with `has_more` and a `next` cursor, once the outputs it read reach
    /// this many bytes (it always holds at least one task). With ``inlineOutputLimit`` it bounds a page:
    /// at most this much output inline (before base64), the rest as links. Default 4 MiB.
    public var resultsPageBytes: Int
    /// The longest long-poll a client may ask for with `wait`; longer waits get 400. Default 60 s.
    public var maxWait: Duration
    /// How long a long-poll waits between looks at the state store, at first and at most; the delay
    /// doubles after every empty look. Default 10 ms to 500 ms.
    public var pollBackoff: ClosedRange<Duration>
    /// `GET /metrics` sums the tasks per state over at most this many sessions (one count query each).
    /// Default 1,000.
    public var metricsSessionLimit: Int

    /// Creates a configuration with the defaults.
    public init(
        maxBodyBytes: Int = 64 * 1024 * 1024,
        maxTasksPerRequest: Int = 10_000,
        maxPayloadBytes: Int = 8 * 1024 * 1024,
        inlineOutputLimit: Int = 1024 * 1024,
        resultsPageBytes: Int = 4 * 1024 * 1024,
        maxWait: Duration = .seconds(60),
        pollBackoff: ClosedRange<Duration> = .milliseconds(10) ... .milliseconds(500),
        metricsSessionLimit: Int = 1_000
    ) {
        self.maxBodyBytes = maxBodyBytes
        self.maxTasksPerRequest = maxTasksPerRequest
        self.maxPayloadBytes = maxPayloadBytes
        self.inlineOutputLimit = inlineOutputLimit
        self.resultsPageBytes = resultsPageBytes
        self.maxWait = maxWait
        self.pollBackoff = pollBackoff
        self.metricsSessionLimit = metricsSessionLimit
    }
}
