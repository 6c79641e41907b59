import Foundation
import GridKernel
import Synchronization
import Testing

@Suite struct GridClientTests {
    @Test func deletingASessionRemovesItsRecordsPayloadsAndQueuedWork() async throws {
        let backends = memoryBackends()
        let client = GridClient(backends: backends)
        let session = try await client.createSession()
        let kept = try await client.createSession()
        // Inputs above the inline limit go to the payload store under `<task>-input`.
        let big = [UInt8](repeating: 7, count: 20_000)
        let ids = try await client.submit(session.id, inputs: [big, big, [1]])
        let keptIDs = try await client.submit(kept.id, inputs: [big])
        try await backends.payloads.put(PayloadKey.sessionPayload(session.id), [1, 2])
        try await backends.payloads.put(PayloadKey.output(ids[2]), [3])
        let before = try await backends.payloads.get(ids.map { PayloadKey.input($0) })
        #expect(before.count == 2, "the two large inputs are in the payload store")

        #expect(try await client.deleteSession(session.id) == 3)

        await #expect(throws: GridError.self) { try await client.session(session.id) }
        let keys = ids.flatMap { [PayloadKey.input($0), PayloadKey.output($0)] } + [PayloadKey.sessionPayload(session.id)]
        #expect(try await backends.payloads.get(keys).isEmpty, "no payload of the deleted session is left")
        #expect(try await backends.payloads.get([PayloadKey.input(keptIDs[0])]).count == 1, "another session's payloads stay")

        // The deleted session's queued messages are dropped without running; the other session runs.
        let ran = Mutex<[TaskID]>([])
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { input, context in ran.withLock { $0.append(context.id) }; return input },
            configuration: fastAgent()
        )
        try await withAgent(agent) {
            try await waitUntil("the queue is drained") {
                try await backends.queue.depth().values.reduce(0) { $0 + $1.waiting + $1.inFlight } == 0
            }
        }
        #expect(ran.withLock { $0 } == keptIDs)
        await #expect(throws: GridError.self) { try await client.deleteSession(session.id) }
    }
}
