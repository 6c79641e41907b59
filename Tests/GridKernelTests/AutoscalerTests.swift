import Foundation
import GridKernel
import Synchronization
import Testing

/// A scaler that records what it was asked for, and can be made to fail.
private final class RecordingScaler: Scaler {
    private let state = Mutex<(applied: [Int], failing: Bool)>(([], false))
    var applied: [Int] { state.withLock { $0.applied } }
    func fail(_ failing: Bool) { state.withLock { $0.failing = failing } }

    func capacity() async throws -> AgentCapacity {
        let last = applied.last ?? 0
        return AgentCapacity(desired: last, current: last)
    }

    func apply(desired: Int) async throws {
        try state.withLock { state in
            if state.failing { throw GridError.unavailable("scaler down") }
            state.applied.append(desired)
        }
    }
}

@Suite struct AutoscalerTests {
    private func queue(_ clock: ManualClock, tasks: Int) async throws -> InMemoryTaskQueue {
        let queue = InMemoryTaskQueue(clock: clock)
        let session = SessionID.random()
        try await queue.enqueue((0..<tasks).map { QueuedTask(id: TaskID(session: session, index: $0), priority: $0 % 2) })
        return queue
    }

    @Test func appliesTheBacklogAtOnceAndScalesInAfterTheCooldown() async throws {
        let clock = ManualClock()
        let queue = try await queue(clock, tasks: 20)
        let scaler = RecordingScaler()
        let autoscaler = try Autoscaler(
            queue: queue, scaler: scaler,
            configuration: ScalingConfiguration(tasksPerAgent: 5, minimum: 1, maximum: 3, scaleInCooldown: .seconds(60)),
            clock: clock
        )
        #expect(try await autoscaler.tick() == ScalingDecision(desired: 3, waiting: 20, inFlight: 0), "20 tasks need 4 agents, capped at 3")

        let leases = try await queue.lease(max: 20, duration: .seconds(600), order: .highestFirst, wait: .zero)
        try await queue.acknowledge(Array(leases.dropFirst(2)))
        #expect(try await autoscaler.tick() == ScalingDecision(desired: 3, waiting: 0, inFlight: 2), "within the cool-down")
        clock.advance(by: .seconds(59))
        #expect(try await autoscaler.tick().desired == 3)
        clock.advance(by: .seconds(1))
        #expect(try await autoscaler.tick().desired == 1, "two tasks in flight need one agent, 60 s after the last change")
        try await queue.acknowledge(Array(leases.prefix(2)))
        clock.advance(by: .seconds(120))
        #expect(try await autoscaler.tick().desired == 1, "never below the minimum")
        #expect(scaler.applied == [3, 3, 3, 1, 1])
        #expect(await autoscaler.last == ScalingDecision(desired: 1, waiting: 0, inFlight: 0))
    }

    @Test func withoutAScalerItOnlyDecides() async throws {
        let clock = ManualClock()
        let autoscaler = try Autoscaler(
            queue: try await queue(clock, tasks: 7), scaler: nil, configuration: ScalingConfiguration(tasksPerAgent: 2), clock: clock
        )
        #expect(try await autoscaler.tick().desired == 4)
    }

    @Test func runKeepsTickingThroughScalerFailures() async throws {
        let clock = ManualClock()
        let queue = try await queue(clock, tasks: 4)
        let scaler = RecordingScaler()
        scaler.fail(true)
        let autoscaler = try Autoscaler(
            queue: queue, scaler: scaler, configuration: ScalingConfiguration(tasksPerAgent: 1, maximum: 10), interval: .seconds(5), clock: clock
        )
        let running = Task { await autoscaler.run() }
        try await waitUntil("the first tick failed and the loop sleeps") { clock.sleeperCount == 1 }
        #expect(scaler.applied.isEmpty)
        scaler.fail(false)
        clock.advance(by: .seconds(5))
        try await waitUntil("the second tick applied") { scaler.applied == [4] }
        running.cancel()
        await running.value
        #expect(await autoscaler.last?.desired == 4)
    }

    @Test func aNonPositiveIntervalIsRejected() async throws {
        let clock = ManualClock()
        let queue = InMemoryTaskQueue(clock: clock)
        #expect(throws: GridError.self) {
            try Autoscaler(queue: queue, scaler: nil, configuration: ScalingConfiguration(), interval: .zero, clock: clock)
        }
    }
}
