import Foundation
import GridKernel

/// The behaviour the engine must show on a backend's three stores together: submissions that are
/// repeated, interrupted, resumed with their idempotency key, or repaired by the reaper.
///
/// These depend on how the state store keeps submissions and task records and how the queue and the
/// payload store answer, so every backend (and every third-party plugin) runs them too:
///
/// ```swift
/// @Test(arguments: GridConformance.Case.allCases)
/// func grid(_ c: GridConformance.Case) async throws {
///     try await GridConformance { ctx in GridBackends(queue: …, state: …, payloads: …) }.run(c)
/// }
/// ```
///
/// The cases inject failures by wrapping the backend's queue and state store; the backends themselves
/// are real. A failed expectation is thrown as a ``ConformanceFailure``.
public struct GridConformance: Sendable {
    /// The cases; each is one behaviour of the engine over the backend.
    public enum Case: String, CaseIterable, Sendable {
        /// A submission sent twice with the same idempotency key returns the same ids and creates no
        /// task, index or message twice; a different count under the key is a conflict.
        case repeatedSubmissionCreatesNoDuplicates
        /// A submission whose queue failed half-way, sent again with its key, completes: every task has
        /// its record and a message, no index is reserved twice.
        case interruptedSubmissionResumesWithItsKey
        /// A submission interrupted for good (queue and state failures) is repaired by the reaper once
        /// the grace period passed: unsent tasks with a stored input get a message, those whose input
        /// travelled only in the message and those never written are failed; every reserved index ends
        /// terminal or pending with a message; the key is then refused.
        case interruptedSubmissionIsRepaired
    }

    private let time: ConformanceTime
    private let make: @Sendable (ConformanceContext) async throws -> GridBackends

    /// Creates the suite.
    ///
    /// - Parameters:
    ///   - time: how the backend measures time; see ``ConformanceTime``.
    ///   - make: creates fresh, empty backends for the context's namespace, using the context's clock.
    public init(time: ConformanceTime = .manual, make: @escaping @Sendable (ConformanceContext) async throws -> GridBackends) {
        self.time = time
        self.make = make
    }

    /// Runs one case against fresh backends.
    ///
    /// - Throws: ``ConformanceFailure`` when the engine over the backends does not behave as the case
    ///   expects, or throws.
    public func run(_ c: Case) async throws {
        try await Harness.withRetries(time) { time in
            let harness = Harness(suite: "GridConformance", caseName: c.rawValue, time: time)
            try await harness.run {
                let cases = Cases(backends: try await make(harness.context), time: harness.timeline)
                switch c {
                case .repeatedSubmissionCreatesNoDuplicates: try await cases.repeatedSubmissionCreatesNoDuplicates()
                case .interruptedSubmissionResumesWithItsKey: try await cases.interruptedSubmissionResumesWithItsKey()
                case .interruptedSubmissionIsRepaired: try await cases.interruptedSubmissionIsRepaired()
                }
            }
        }
    }
}
