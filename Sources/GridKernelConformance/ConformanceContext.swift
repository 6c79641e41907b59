import GridKernel

/// What a conformance case hands to the backend factory.
public struct ConformanceContext: Sendable {
    /// A fresh namespace for this case alone: 16 characters, a lower-case letter then lower-case
    /// letters and digits, so it is valid as a table prefix, a key prefix, a queue or a bucket name.
    /// A backend that shares a server between cases must keep each namespace's data apart.
    public let namespace: String
    /// The clock the backend must use: a ``ManualClock`` in ``ConformanceTime/manual`` mode, the
    /// system clock in ``ConformanceTime/real(unit:)`` mode.
    public let clock: any GridClock

    /// Creates a context.
    public init(namespace: String, clock: any GridClock) {
        self.namespace = namespace
        self.clock = clock
    }
}
