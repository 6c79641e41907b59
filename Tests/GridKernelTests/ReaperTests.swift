import Foundation
import GridKernel
import Testing

@Suite struct ReaperTests {
    /// A task claimed by an agent that then vanished.
    private func abandonedTask(maxRetries: Int, clock: ManualClock, backends: GridBackends) async throws -> TaskID {
        let client = GridClient(backends: backends, clock: clock)
        let session = try await client.createSession(SessionOptions(maxRetries: maxRetries))
        let id = try await client.submit(session.id, inputs: [[42]])[0]
        let leases = try await backends.queue.lease(max: 1, duration: .seconds(30), order: .highestFirst, wait: .zero)
        #expect(leases.map(\.id) == [id])
        let claimed = try await backends.state.claim([id], owner: AgentID("gone"), token: .random(), leaseExpiry: clock.now.addingTimeInterval(30), now: clock.now)
        #expect(claimed.count == 1)
        return id
    }

    @Test func expiredLeaseGoesBackToPendingAndRunsAgain() async throws {
        let clock = ManualClock()
        let backends = memoryBackends(clock: clock)
        let id = try await abandonedTask(maxRetries: 5, clock: clock, backends: backends)
        let reaper = Reaper(backends: backends, clock: clock)

        #expect(try await reaper.runOnce() == ReaperReport())
        clock.advance(by: .seconds(31))
        var expected = ReaperReport()
        expected.requeued = 1
        #expect(try await reaper.runOnce() == expected)
        let record = try await backends.state.task(id)
        #expect(record.state == .pending)
        #expect(record.retries == 1)
        #expect(record.owner == nil)
        // The original message was never acknowledged: it comes back and the task can be claimed again.
        let again = try await backends.queue.lease(max: 1, duration: .seconds(30), order: .highestFirst, wait: .zero)
        #expect(again.map(\.id) == [id])
        #expect(again.first?.deliveryCount == 2)
        let claimed = try await backends.state.claim([id], owner: AgentID("next"), token: .random(), leaseExpiry: clock.now.addingTimeInterval(30), now: clock.now)
        #expect(claimed.map(\.retries) == [1])
    }

    @Test func retriesExhaustedEndsFailed() async throws {
        let clock = ManualClock()
        let backends = memoryBackends(clock: clock)
        let id = try await abandonedTask(maxRetries: 2, clock: clock, backends: backends)
        let reaper = Reaper(backends: backends, clock: clock)
        for attempt in 1...3 {
            clock.advance(by: .seconds(31))
            let report = try await reaper.runOnce()
            if attempt <= 2 {
                #expect(report.requeued == 1)
                // The next agent takes it and vanishes too.
                _ = try await backends.queue.lease(max: 1, duration: .seconds(30), order: .highestFirst, wait: .zero)
                let claimed = try await backends.state.claim([id], owner: AgentID("gone-\(attempt)"), token: .random(), leaseExpiry: clock.now.addingTimeInterval(30), now: clock.now)
                #expect(claimed.count == 1)
            } else {
                #expect(report.failed == 1)
            }
        }
        let record = try await backends.state.task(id)
        #expect(record.state == .failed)
        #expect(record.retries == 2)
        #expect(record.lastError?.isEmpty == false)
    }

    @Test func deadLetteredMessageFailsItsTaskWithTheReason() async throws {
        let clock = ManualClock()
        let backends = memoryBackends(clock: clock, maxDeliveries: 1)
        let client = GridClient(backends: backends, clock: clock)
        let session = try await client.createSession()
        let id = try await client.submit(session.id, inputs: [[1]])[0]
        _ = try await backends.queue.lease(max: 1, duration: .seconds(5), order: .highestFirst, wait: .zero)
        clock.advance(by: .seconds(6))
        // The second delivery would exceed the redrive limit: the queue moves the message aside.
        #expect(try await backends.queue.lease(max: 1, duration: .seconds(5), order: .highestFirst, wait: .zero).isEmpty)
        let report = try await Reaper(backends: backends, clock: clock).runOnce()
        #expect(report.deadLettered == 1)
        let record = try await backends.state.task(id)
        #expect(record.state == .failed)
        #expect(record.lastError?.contains("deliver") == true)
    }

    @Test func agentRecoversTasksOfADeadAgent() async throws {
        let clock = ManualClock()
        let backends = memoryBackends(clock: clock)
        let client = GridClient(backends: backends, clock: clock)
        let session = try await client.createSession()
        let ids = try await client.submit(session.id, inputs: (0..<20).map { [UInt8($0)] })
        // A dead agent held every message and every task.
        let leases = try await backends.queue.lease(max: 20, duration: .seconds(30), order: .highestFirst, wait: .zero)
        #expect(leases.count == 20)
        _ = try await backends.state.claim(ids, owner: AgentID("dead"), token: .random(), leaseExpiry: clock.now.addingTimeInterval(30), now: clock.now)
        clock.advance(by: .seconds(31))
        #expect(try await Reaper(backends: backends, clock: clock).runOnce().requeued == 20)

        let agent = try Agent(backends: backends, handler: EchoHandler(), configuration: fastAgent(), clock: clock)
        try await withAgent(agent) {
            try await waitUntil("all tasks finished") {
                clock.advance(by: .milliseconds(5))
                return try await client.counts(session.id)[.finished] == 20
            }
        }
        for id in ids {
            #expect(try await client.output(id) == [UInt8(id.index)])
            #expect(try await client.task(id).retries == 1)
        }
    }
}
