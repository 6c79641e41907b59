/// A conformance case whose expectation a backend did not meet.
///
/// The suites throw it instead of recording an XCTest or Swift Testing issue, so they run under any
/// test framework: the test that calls ``QueueConformance/run(_:)`` (or its siblings) fails with this
/// error's description.
public struct ConformanceFailure: Error, CustomStringConvertible, Sendable {
    /// The suite, e.g. `QueueConformance`.
    public var suite: String
    /// The case that failed, e.g. `leaseExpiryRedelivers`.
    public var caseName: String
    /// What the case expected and what it got.
    public var expectation: String
    /// The suite's source file that holds the expectation.
    public var file: String
    /// The line of the expectation.
    public var line: Int
    /// The error the backend threw, when the case failed because of an unexpected error.
    public var underlying: (any Error)?
    /// Whether the case could not tell, because the machine was too slow for the time unit of
    /// ``ConformanceTime/real(unit:)``; the suites then run the case again with a longer unit.
    public var inconclusive = false

    /// Creates a failure.
    public init(
        suite: String = "", caseName: String = "", expectation: String, file: String, line: Int,
        underlying: (any Error)? = nil
    ) {
        self.suite = suite
        self.caseName = caseName
        self.expectation = expectation
        self.file = file
        self.line = line
        self.underlying = underlying
    }

    public var description: String {
        "\(suite).\(caseName): \(expectation) (\(file):\(line))"
    }
}
