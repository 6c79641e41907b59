import Foundation
import GridKernel

// The suites' expectations: each throws a `ConformanceFailure` that names the suite's file and line.
// The suite and case names are filled in by `Harness.run`.

/// Fails unless `condition` holds.
func expect(
    _ condition: Bool, _ expectation: @autoclosure () -> String, file: String = #fileID, line: Int = #line
) throws {
    guard condition else { throw ConformanceFailure(expectation: expectation(), file: file, line: line) }
}

/// Fails unless `actual == expected`.
func expectEqual<T: Equatable>(
    _ actual: T, _ expected: T, _ what: @autoclosure () -> String, file: String = #fileID, line: Int = #line
) throws {
    guard actual == expected else {
        throw ConformanceFailure(
            expectation: "\(what()): expected \(clipped(expected)), got \(clipped(actual))", file: file, line: line
        )
    }
}

/// Fails unless `actual` is within a millisecond of `expected` (backends may store milliseconds).
func expectSameTime(
    _ actual: Date?, _ expected: Date, _ what: @autoclosure () -> String, file: String = #fileID, line: Int = #line
) throws {
    guard let actual, abs(actual.timeIntervalSince(expected)) <= 0.001 else {
        throw ConformanceFailure(
            expectation: "\(what()): expected \(expected.timeIntervalSince1970), got \(actual.map { "\($0.timeIntervalSince1970)" } ?? "nil")",
            file: file, line: line
        )
    }
}

/// Fails unless `body` throws a ``GridError`` with `code`.
func expectThrows<T>(
    code: GridError.Code, _ what: @autoclosure () -> String, file: String = #fileID, line: Int = #line,
    _ body: () async throws -> T
) async throws {
    let outcome: String
    do {
        let value = try await body()
        outcome = "it returned \(clipped(value))"
    } catch let error as GridError {
        if error.code == code { return }
        outcome = "it threw code \(error.code): \(error)"
    } catch {
        outcome = "it threw \(type(of: error)): \(error)"
    }
    throw ConformanceFailure(
        expectation: "\(what()): expected a GridError with code \(code), but \(outcome)", file: file, line: line
    )
}

/// Polls `condition` until it holds; fails once `deadline` has passed. Used in ``ConformanceTime/real(unit:)``
/// mode only: the sleep between two polls is the suite's only sleep.
func waitUntil(
    deadline: ContinuousClock.Instant, poll: Duration, _ what: @autoclosure () -> String,
    file: String = #fileID, line: Int = #line, _ condition: () async throws -> Bool
) async throws {
    while true {
        if try await condition() { return }
        guard ContinuousClock.now < deadline else {
            throw ConformanceFailure(expectation: "\(what()) (still not so at the deadline)", file: file, line: line)
        }
        try await Task.sleep(for: poll)
    }
}

/// Polls `condition` until `deadline` and fails as soon as it does not hold. Used in
/// ``ConformanceTime/real(unit:)`` mode only.
///
/// A check that completes after the deadline may have seen the state after the window, so it does not
/// count. The window must contain at least one check in its second half (from `halfway`), or nothing
/// was shown: the machine was too slow for the time unit.
func holdsUntil(
    deadline: ContinuousClock.Instant, halfway: ContinuousClock.Instant, poll: Duration, _ what: @autoclosure () -> String,
    file: String = #fileID, line: Int = #line, _ condition: () async throws -> Bool
) async throws {
    var checkedLate = false
    while true {
        let started = ContinuousClock.now
        let holds = try await condition()
        let finished = ContinuousClock.now
        guard finished < deadline else {
            guard holds else {
                var failure = ConformanceFailure(
                    expectation: "\(what()) (a check that ended \(finished - deadline) after the window saw it change; the machine is too slow for this time unit)",
                    file: file, line: line
                )
                failure.inconclusive = true
                throw failure
            }
            break
        }
        guard holds else {
            throw ConformanceFailure(expectation: "\(what()) (stopped holding before the deadline)", file: file, line: line)
        }
        if started >= halfway { checkedLate = true }
        try await Task.sleep(for: poll)
    }
    guard checkedLate else {
        var failure = ConformanceFailure(
            expectation: "\(what()) (no check fitted in the second half of the window; the machine is too slow for this time unit)",
            file: file, line: line
        )
        failure.inconclusive = true
        throw failure
    }
}

/// Returns `value`, or fails when it is `nil`.
func expectSome<T>(
    _ value: T?, _ what: @autoclosure () -> String, file: String = #fileID, line: Int = #line
) throws -> T {
    guard let value else { throw ConformanceFailure(expectation: "\(what()): expected a value, got nil", file: file, line: line) }
    return value
}

/// A value's description, cut to 300 characters so a failure about a large value stays readable.
func clipped(_ value: Any) -> String {
    let text = String(describing: value)
    return text.count <= 300 ? text : text.prefix(300) + "… (\(text.count) characters)"
}
