import GridKernel
import Logging
import Synchronization
import Testing

@testable import HTCCore

/// The gate that lets one invocation at a time reach a Lambda emulator.
@Suite struct LambdaInvocationGateTests {
    let logger = Logger(label: "test")

    private func task(_ index: Int) throws -> TaskID { TaskID(session: try SessionID("s1"), index: index) }

    /// Waits until `count` invocations wait for the gate.
    private func waitForWaiters(_ gate: LambdaInvocationGate, _ count: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while gate.waiting < count {
            guard ContinuousClock.now < deadline else { throw GridError(.timeout, "\(count) waiters never queued") }
            await Task.yield()
        }
    }

    @Test func invocationsTakeTurnsInArrivalOrderAndACancelledOneLeavesTheLine() async throws {
        let gate = LambdaInvocationGate()
        let order = Turns()
        try await gate.acquire(task(0), logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 1...3 {
                let id = try task(index)
                group.addTask {
                    try await gate.acquire(id, logger: logger)
                    order.append(index)
                    gate.release()
                }
                try await waitForWaiters(gate, index)
            }
            // The second in line gives up: the others still get their turn, in order.
            let quitter = Task { try await gate.acquire(try task(9), logger: logger) }
            try await waitForWaiters(gate, 4)
            quitter.cancel()
            await #expect(throws: CancellationError.self) { try await quitter.value }
            #expect(gate.waiting == 3)
            #expect(order.all.isEmpty, "nobody passes while the gate is held")
            gate.release()
            try await group.waitForAll()
        }
        #expect(order.all == [1, 2, 3])
        #expect(gate.holder == nil)
    }

    @Test func anAbandonedInvocationKeepsTheGateUntilItReturns() async throws {
        let gate = LambdaInvocationGate()
        try await gate.acquire(task(0), logger: logger)
        gate.abandon(try task(0), reason: "was cancelled", limit: .seconds(1), logger: logger)
        guard case .abandoned(let abandoned, _)? = gate.holder else {
            Issue.record("the abandoned invocation does not hold the gate: \(String(describing: gate.holder))")
            return
        }
        #expect(abandoned == (try task(0)))
        let next = Task { try await gate.acquire(try task(1), logger: logger) }
        try await waitForWaiters(gate, 1)
        gate.release()
        try await next.value
        #expect(gate.holder == .running(try task(1)))
        gate.release()
        #expect(gate.holder == nil)
    }
}

/// The order in which waiters got the gate.
private final class Turns: Sendable {
    private let list = Mutex<[Int]>([])
    func append(_ index: Int) { list.withLock { $0.append(index) } }
    var all: [Int] { list.withLock { $0 } }
}
