import Foundation
import GridKernel

/// Whether a request may be sent again after an outcome that leaves unknown whether it took effect.
public enum AWSRepeatability: Sendable, Hashable {
    /// Sending it twice has the effect of sending it once (reads, conditional writes, deletes, puts of
    /// the same object, visibility changes, queue messages that are only delivery hints).
    case safe
    /// A second send may add a second effect (a counter increment): only refusals that certainly did
    /// nothing (throttling) are retried.
    case unsafe
}

/// The one retry policy of the AWS backend: exponential backoff with full jitter.
///
/// Throttling is retried for every request, because AWS refused it before doing anything. Server
/// errors (5xx) and transport failures leave the outcome unknown, so they are retried only for
/// requests that are ``AWSRepeatability/safe`` to repeat. Everything else fails at once.
public struct AWSRetryPolicy: Sendable, Hashable {
    /// Attempts in all, the first included.
    public var maxAttempts: Int
    /// The backoff of the first retry, before jitter.
    public var base: Duration
    /// The largest backoff, before jitter.
    public var cap: Duration

    /// Creates a policy; the defaults are 8 attempts, 25 ms doubling up to 5 s.
    public init(maxAttempts: Int = 8, base: Duration = .milliseconds(25), cap: Duration = .seconds(5)) {
        self.maxAttempts = maxAttempts
        self.base = base
        self.cap = cap
    }

    /// What went wrong with one attempt.
    public enum Outcome: Sendable, Hashable {
        /// The service refused the request for rate (it did nothing).
        case throttled
        /// The service answered with a 5xx error.
        case serverError
        /// The request may or may not have reached the service (connection reset, timeout).
        case transportFailure
        /// Any other error: the request is wrong or not allowed; repeating it changes nothing.
        case clientError
    }

    /// Whether attempt number `attempt` (1-based) that ended with `outcome` is tried again.
    public func shouldRetry(_ outcome: Outcome, repeatability: AWSRepeatability, attempt: Int) -> Bool {
        guard attempt < maxAttempts else { return false }
        switch outcome {
        case .throttled: return true
        case .serverError, .transportFailure: return repeatability == .safe
        case .clientError: return false
        }
    }

    /// The wait before retry number `retry` (1-based): uniform in `0…min(cap, base × 2^(retry−1))`.
    ///
    /// - Parameter random: a number in `0..<1`; tests pass fixed values.
    public func backoff(retry: Int, random: Double) -> Duration {
        let exponent = min(max(retry - 1, 0), 30)
        let ceiling = min(cap.timeInterval, base.timeInterval * Double(1 << exponent))
        return Duration(timeInterval: ceiling * min(max(random, 0), 1))
    }
}
