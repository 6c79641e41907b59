/// How the suite makes time pass for leases and delays.
public enum ConformanceTime: Sendable {
    /// The suite creates a ``GridKernel/ManualClock``, passes it in the ``ConformanceContext`` and
    /// advances it to expire leases. For backends that take every time from the injected clock.
    case manual
    /// The backend measures leases on real or server time. The suite uses lease durations that are
    /// multiples of `unit` (the backend's time granularity, e.g. one second for SQS) and waits for
    /// conditions by polling them until a deadline, never by a fixed sleep.
    case real(unit: Duration)
}
