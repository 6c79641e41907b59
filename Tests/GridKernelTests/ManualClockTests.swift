import Foundation
import GridKernel
import Testing

@Suite struct ManualClockTests {
    let start = Date(timeIntervalSince1970: 1_000)

    /// Yields until `count` tasks sleep on the clock (no wall-clock sleep).
    private func waitForSleepers(_ clock: ManualClock, count: Int) async {
        while clock.sleeperCount < count { await Task.yield() }
    }

    @Test func advanceMovesNow() {
        let clock = ManualClock(start: start)
        #expect(clock.now == start)
        clock.advance(by: .milliseconds(1_500))
        #expect(clock.now == start.addingTimeInterval(1.5))
    }

    @Test func sleeperResumesOnlyOnceAdvancedPastItsDeadline() async throws {
        let clock = ManualClock(start: start)
        let sleeper = Task { try await clock.sleep(for: .seconds(10)) }
        await waitForSleepers(clock, count: 1)
        clock.advance(by: .seconds(9))
        #expect(clock.sleeperCount == 1, "one second before its deadline the sleeper still sleeps")
        clock.advance(by: .seconds(1))
        #expect(clock.sleeperCount == 0)
        try await sleeper.value
    }

    @Test func sleepersResumeInTurn() async throws {
        let clock = ManualClock(start: start)
        let sleepers = (1...3).map { seconds in Task { try await clock.sleep(for: .seconds(seconds)) } }
        await waitForSleepers(clock, count: 3)
        clock.advance(by: .milliseconds(1_500))
        #expect(clock.sleeperCount == 2)
        try await sleepers[0].value
        clock.advance(by: .seconds(5))
        #expect(clock.sleeperCount == 0)
        for sleeper in sleepers { try await sleeper.value }
    }

    @Test func zeroSleepReturnsAtOnce() async throws {
        let clock = ManualClock(start: start)
        try await clock.sleep(for: .zero)
        try await clock.sleep(for: .seconds(-1))
        #expect(clock.now == start)
    }

    @Test func cancellingASleeperThrows() async {
        let clock = ManualClock(start: start)
        let sleeper = Task { try await clock.sleep(for: .seconds(60)) }
        await waitForSleepers(clock, count: 1)
        sleeper.cancel()
        await #expect(throws: CancellationError.self) { try await sleeper.value }
        #expect(clock.sleeperCount == 0)
        #expect(clock.now == start, "cancelling does not move the clock")
    }

    @Test func sleepingInACancelledTaskThrowsAtOnce() async {
        let clock = ManualClock(start: start)
        let sleeper = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await clock.sleep(for: .seconds(60))
        }
        await #expect(throws: CancellationError.self) { try await sleeper.value }
        #expect(clock.sleeperCount == 0)
    }
}
