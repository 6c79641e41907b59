import Foundation
import GridKernel

/// Runs one case: a fresh namespace and clock, and failures stamped with the suite and case names.
struct Harness: Sendable {
    let suite: String
    let caseName: String
    let context: ConformanceContext
    let timeline: Timeline

    init(suite: String, caseName: String, time: ConformanceTime) {
        self.suite = suite
        self.caseName = caseName
        timeline = Timeline(time)
        context = ConformanceContext(namespace: Self.freshNamespace(), clock: timeline.clock)
    }

    /// Runs `body`; any error becomes a ``ConformanceFailure`` naming the suite and the case.
    func run(file: String = #fileID, line: Int = #line, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch var failure as ConformanceFailure {
            failure.suite = suite
            failure.caseName = caseName
            throw failure
        } catch {
            throw ConformanceFailure(
                suite: suite, caseName: caseName,
                expectation: "the case to run without errors, but the backend threw \(type(of: error)): \(error)",
                file: file, line: line, underlying: error
            )
        }
    }

    /// Runs a case; in ``ConformanceTime/real(unit:)`` mode a case the machine was too slow to decide
    /// runs again with twice the unit, up to three times, so load on a shared machine gives neither a
    /// false failure nor a pass that proved nothing.
    static func withRetries(_ time: ConformanceTime, _ body: (ConformanceTime) async throws -> Void) async throws {
        var time = time
        for attempt in 1... {
            do {
                return try await body(time)
            } catch let failure as ConformanceFailure where failure.inconclusive && attempt < 3 {
                guard case .real(let unit) = time else { throw failure }
                time = .real(unit: unit * 2)
            }
        }
    }

    /// `c` followed by 15 lower-case hex digits.
    private static func freshNamespace() -> String {
        let hex = UUID().uuidString.lowercased().filter { $0 != "-" }
        return "c" + hex.prefix(15)
    }
}

/// Time as a case sees it: advanced by hand in ``ConformanceTime/manual`` mode, waited for by polling
/// in ``ConformanceTime/real(unit:)`` mode.
struct Timeline: Sendable {
    /// The clock the backend gets.
    let clock: any GridClock
    /// The time granularity durations are multiples of.
    let unit: Duration
    private let manual: ManualClock?

    init(_ time: ConformanceTime) {
        switch time {
        case .manual:
            let clock = ManualClock()
            self.clock = clock
            manual = clock
            unit = .seconds(10)
        case .real(let unit):
            clock = SystemClock()
            manual = nil
            self.unit = unit
        }
    }

    /// `count` units of time.
    func units(_ count: Int) -> Duration { unit * count }

    /// A base date in whole seconds, for explicit times handed to the backend.
    var wholeSecondNow: Date { Date(timeIntervalSince1970: clock.now.timeIntervalSince1970.rounded(.down)) }

    /// Manual: advances the clock by `after`, then checks `condition` once.
    /// Real: polls `condition` until it holds, for up to `within`.
    func eventually(
        after: Duration, within: Duration, _ what: @autoclosure () -> String, file: String = #fileID, line: Int = #line,
        _ condition: () async throws -> Bool
    ) async throws {
        if let manual {
            manual.advance(by: after)
            try expect(try await condition(), "\(what()) (checked after advancing the clock by \(after))", file: file, line: line)
        } else {
            try await waitUntil(deadline: .now + within, poll: poll, what(), file: file, line: line, condition)
        }
    }

    /// Manual: checks `condition` right away. Real: polls it until it holds, for up to 20 units; for
    /// reads that are only eventually consistent, such as queue depth.
    func settled(
        _ what: @autoclosure () -> String, file: String = #fileID, line: Int = #line, _ condition: () async throws -> Bool
    ) async throws {
        try await eventually(after: .zero, within: units(20), what(), file: file, line: line, condition)
    }

    /// A point in time to measure a window from; take it just before the call that starts a lease,
    /// an extension or a delay, so the window cannot outlast them however slow the machine is.
    struct Mark {
        fileprivate let instant: ContinuousClock.Instant
        fileprivate let date: Date
    }

    /// The current time, as a ``Mark``.
    func mark() -> Mark { Mark(instant: .now, date: clock.now) }

    /// Manual: advances the clock to `span` after `mark`, then checks `condition` once.
    /// Real: polls `condition` until `span` after `mark` and fails as soon as it does not hold.
    func throughout(
        _ span: Duration, from mark: Mark? = nil, _ what: @autoclosure () -> String, file: String = #fileID,
        line: Int = #line, _ condition: () async throws -> Bool
    ) async throws {
        let mark = mark ?? self.mark()
        if let manual {
            let remaining = mark.date.addingTimeInterval(span.timeInterval).timeIntervalSince(manual.now)
            if remaining > 0 { manual.advance(by: Duration(timeInterval: remaining)) }
            try expect(try await condition(), "\(what()) (checked \(span) after the start of the window)", file: file, line: line)
        } else {
            try await holdsUntil(
                deadline: mark.instant + span, halfway: mark.instant + span / 2, poll: poll, what(), file: file, line: line,
                condition
            )
        }
    }

    /// A tenth of a unit, between 10 ms and 250 ms.
    private var poll: Duration {
        min(max(unit / 10, .milliseconds(10)), .milliseconds(250))
    }
}
