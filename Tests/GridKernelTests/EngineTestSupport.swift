import Foundation
import GridKernel

/// In-memory backends for engine tests.
func memoryBackends(clock: any GridClock = SystemClock(), maxDeliveries: Int? = nil) -> GridBackends {
    GridBackends(
        queue: InMemoryTaskQueue(clock: clock, maxDeliveries: maxDeliveries),
        state: InMemoryStateStore(clock: clock),
        payloads: InMemoryPayloadStore(clock: clock)
    )
}

/// Waits until `condition` holds, polling, or fails after `timeout` of real time.
func waitUntil(
    timeout: Duration = .seconds(20),
    _ what: String,
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw TimedOut(what: what) }
        try await Task.sleep(for: .milliseconds(5))
    }
}

struct TimedOut: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting until \(what)" }
}

/// Runs an agent for the duration of `body`, then stops it gracefully and waits for it.
func withAgent<Result: Sendable>(
    _ agent: Agent,
    _ body: () async throws -> Result
) async throws -> Result {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await agent.run() }
        do {
            let result = try await body()
            agent.stop()
            try await group.waitForAll()
            return result
        } catch {
            group.cancelAll()
            throw error
        }
    }
}

/// A handler whose behaviour a test scripts per call.
struct ClosureHandler: TaskHandler {
    let body: @Sendable ([UInt8], TaskContext) async throws -> [UInt8]
    func run(input: [UInt8], context: TaskContext) async throws -> [UInt8] { try await body(input, context) }
}

/// Test configuration: short intervals so tests on real time finish fast.
func fastAgent(_ id: String = "agent-1", concurrency: Int = 4) -> AgentConfiguration {
    AgentConfiguration(
        id: AgentID(id),
        concurrency: concurrency,
        leaseDuration: .seconds(2),
        heartbeatInterval: .milliseconds(50),
        idleBackoff: .milliseconds(1) ... .milliseconds(5),
        retryDelay: .milliseconds(1),
        drainTimeout: .seconds(10)
    )
}
