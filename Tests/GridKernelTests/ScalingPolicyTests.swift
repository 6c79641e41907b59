import Foundation
import GridKernel
import Testing

@Suite struct ScalingPolicyTests {
    private func depth(waiting: Int, inFlight: Int) -> [Int: QueueDepth] {
        [0: QueueDepth(waiting: waiting / 2, inFlight: inFlight), 5: QueueDepth(waiting: waiting - waiting / 2, inFlight: 0)]
    }

    @Test func countsBacklogAndInFlightTasksAcrossPriorities() throws {
        let policy = try ScalingPolicy(configuration: ScalingConfiguration(tasksPerAgent: 4, minimum: 1, maximum: 10))
        #expect(policy.needed(for: [:]) == 1)
        #expect(policy.needed(for: depth(waiting: 0, inFlight: 8)) == 2, "busy agents are not scaled away")
        #expect(policy.needed(for: depth(waiting: 9, inFlight: 0)) == 3)
        #expect(policy.needed(for: depth(waiting: 9, inFlight: 8)) == 5)
        #expect(policy.needed(for: depth(waiting: 1_000, inFlight: 0)) == 10)
    }

    @Test func scalesOutAtOnceAndInOnlyAfterTheCooldown() throws {
        let clock = ManualClock()
        var policy = try ScalingPolicy(configuration: ScalingConfiguration(tasksPerAgent: 1, minimum: 0, maximum: 50, scaleInCooldown: .seconds(60)))
        #expect(policy.desired(for: depth(waiting: 2, inFlight: 0), at: clock.now) == 2)
        clock.advance(by: .seconds(1))
        #expect(policy.desired(for: depth(waiting: 10, inFlight: 0), at: clock.now) == 10)
        clock.advance(by: .seconds(30))
        #expect(policy.desired(for: depth(waiting: 0, inFlight: 3), at: clock.now) == 10, "within the cool-down")
        clock.advance(by: .seconds(29))
        #expect(policy.desired(for: depth(waiting: 0, inFlight: 3), at: clock.now) == 10)
        clock.advance(by: .seconds(1))
        #expect(policy.desired(for: depth(waiting: 0, inFlight: 3), at: clock.now) == 3, "60 s after the last change")
        clock.advance(by: .seconds(1))
        #expect(policy.desired(for: depth(waiting: 40, inFlight: 3), at: clock.now) == 43, "out again at once")
    }

    @Test func invalidBoundsAreRejected() {
        #expect(throws: GridError.self) { try ScalingPolicy(configuration: ScalingConfiguration(minimum: 5, maximum: 2)) }
        #expect(throws: GridError.self) { try ScalingPolicy(configuration: ScalingConfiguration(tasksPerAgent: 0)) }
    }
}
