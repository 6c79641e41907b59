import Foundation
import GridKernel
import Synchronization

/// A live progress line on stderr: submitted / running / finished / failed and tasks per second.
///
/// On a terminal the line is redrawn in place at most ten times a second; otherwise a line is printed
/// every few seconds so logs stay readable.
final class ProgressReporter: Sendable {
    private struct State {
        var submitted = 0
        var total = 0
        var lastDraw: ContinuousClock.Instant?
        var lastTerminal = 0
        var lastRateSample: ContinuousClock.Instant
        var rate: Double = 0
    }

    private let state: Mutex<State>
    private let interactive: Bool
    private let started = ContinuousClock.now

    init(interactive: Bool = isatty(STDERR_FILENO) == 1) {
        self.interactive = interactive
        state = Mutex(State(lastRateSample: .now))
    }

    func submitted(_ count: Int, of total: Int) {
        state.withLock { state in
            state.submitted = count
            state.total = total
        }
    }

    func update(_ counts: StateCounts, total: Int) {
        let now = ContinuousClock.now
        let line: String? = state.withLock { state in
            state.total = total
            let minimum: Duration = interactive ? .milliseconds(100) : .seconds(5)
            if let last = state.lastDraw, now - last < minimum, counts.terminal < total { return nil }
            let elapsed = (now - state.lastRateSample).timeInterval
            if elapsed > 0 {
                let instant = Double(counts.terminal - state.lastTerminal) / elapsed
                state.rate = state.lastDraw == nil ? instant : 0.5 * state.rate + 0.5 * instant
            }
            state.lastTerminal = counts.terminal
            state.lastRateSample = now
            state.lastDraw = now
            return Self.render(counts: counts, submitted: state.submitted, total: total, rate: state.rate)
        }
        guard let line else { return }
        let text = interactive ? "\r\u{1B}[2K" + line : line + "\n"
        FileHandle.standardError.write(Data(text.utf8))
    }

    func finish() {
        if interactive { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    static func render(counts: StateCounts, submitted: Int, total: Int, rate: Double) -> String {
        let width = 30
        let done = total == 0 ? width : min(width, counts.terminal * width / total)
        let bar = String(repeating: "#", count: done) + String(repeating: ".", count: width - done)
        return "[\(bar)] \(counts.terminal.grouped)/\(total.grouped)  submitted \(submitted.grouped) · running \(counts[.processing].grouped)"
            + " · finished \(counts[.finished].grouped) · failed \(counts[.failed].grouped) · \(Int(rate).grouped) tasks/s"
    }
}

extension Int {
    /// The number with thousands separators: `100,000`.
    var grouped: String {
        let digits = String(self.magnitude)
        var result = ""
        for (offset, character) in digits.enumerated() {
            if offset > 0 && (digits.count - offset) % 3 == 0 { result.append(",") }
            result.append(character)
        }
        return self < 0 ? "-" + result : result
    }
}
