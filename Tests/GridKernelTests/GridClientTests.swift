import Foundation
import GridKernel
import GridKernelConformance
import Synchronization
import Testing

@Suite struct GridClientTests {
    /// A step that fails as `unavailable` (a dropped connection) is repeated under the submission's key:
    /// the submission completes with every task once.
    @Test func aSubmissionStepThatFailsForWantOfTheBackendIsRepeated() async throws {
        let memory = memoryBackends()
        let failures = Mutex(["createTasks": 1, "updateSubmission": 1, "beginSubmission": 1])
        let state = InterceptingStateStore(memory.state) { point in
            let fail = failures.withLock { left -> Bool in
                guard let count = left[point.operation], count > 0, point.applied else { return false }
                left[point.operation] = count - 1
                return true
            }
            // After the call: it took effect, and its reply is lost.
            if fail { throw GridError.unavailable("the reply of \(point.operation) was lost") }
        }
        let client = GridClient(
            backends: GridBackends(queue: memory.queue, state: state, payloads: memory.payloads),
            configuration: ClientConfiguration(submitBatchSize: 4))
        let session = try await client.createSession()
        let ids = try await client.submit(session.id, inputs: (0..<10).map { [UInt8($0)] })
        #expect(ids.map(\.index) == Array(0..<10))
        #expect(failures.withLock { $0.values.allSatisfy { $0 == 0 } }, "every injected failure happened")
        #expect(try await memory.state.session(session.id).taskCount == 10, "no index reserved twice")
        #expect(try await memory.state.counts(session.id)[.pending] == 10)
        var messages = 0
        while true {
            let leases = try await memory.queue.lease(max: 100, duration: .seconds(60), order: .highestFirst, wait: .zero)
            if leases.isEmpty { break }
            messages += leases.count
        }
        #expect(messages == 10, "one message per task")
    }

    /// `follow` yields every result once, in completion order with outputs, while the agent runs, and
    /// ends by itself once the session is complete; a new stream from a kept cursor resumes after it.
    @Test func followYieldsEachResultOnceAndEndsWithTheSession() async throws {
        let backends = memoryBackends()
        let client = GridClient(backends: backends)
        let session = try await client.createSession(SessionOptions(maxRetries: 0))
        let total = 300
        _ = try await client.submit(session.id, inputs: (0..<total).map { Array("\($0)".utf8) })
        // Every tenth task fails; outputs of the others are their inputs reversed.
        let agent = try Agent(
            backends: backends,
            handler: ClosureHandler { input, _ in
                if Int(String(decoding: input, as: UTF8.self))! % 10 == 0 { throw GridError.invalidArgument("a tenth") }
                return input.reversed()
            },
            configuration: fastAgent())
        let (read, cursor) = try await withAgent(agent) {
            var read: [TaskResult] = []
            var iterator = client.follow(session.id).makeAsyncIterator()
            while let result = try await iterator.next() {
                read.append(result)
                if read.count == total / 2 { break }
            }
            // Resume from the cursor with a new stream, to the end of the session.
            let cursor = iterator.cursor
            for try await result in client.follow(session.id, after: cursor) { read.append(result) }
            return (read, cursor)
        }
        #expect(cursor == total / 2)
        #expect(read.count == total)
        #expect(read.map(\.record.completionSequence) == (1...total).map { Optional($0) })
        #expect(Set(read.map(\.record.id.index)) == Set(0..<total))
        for result in read {
            let index = result.record.id.index
            if index % 10 == 0 {
                #expect(result.record.state == .failed && result.output == nil)
            } else {
                #expect(result.record.state == .finished && result.output == Array("\(index)".utf8).reversed())
            }
        }
    }

    @Test func aResultsPageEndsAtItsOutputBudgetAndTheCursorSkipsNoTask() async throws {
        let backends = memoryBackends()
        let client = GridClient(backends: backends)
        let session = try await client.createSession()
        // 40 outputs of 100 bytes, all in the payload store (read in batches), a budget of 1,000 bytes.
        let inputs = (0..<40).map { index in [UInt8](repeating: UInt8(index), count: 100) }
        let ids = try await client.submit(session.id, inputs: inputs)
        var configuration = fastAgent()
        configuration.inlineOutputLimit = 0
        let agent = try Agent(backends: backends, handler: ClosureHandler { input, _ in input }, configuration: configuration)
        try await withAgent(agent) {
            try await waitUntil("every task finished") { try await client.counts(session.id)[.finished] == 40 }
        }
        #expect(try await backends.payloads.get(ids.map { PayloadKey.output($0, attempt: 1) }).count == 40, "outputs are external")

        var pages: [[TaskResult]] = []
        var cursor: String?
        repeat {
            let page = try await client.results(session.id, state: .finished, after: cursor, limit: 1_000, maxOutputBytes: 1_000)
            pages.append(page.items)
            cursor = page.next
        } while cursor != nil && pages.count < 10
        #expect(pages.map(\.count) == [10, 10, 10, 10] || pages.map(\.count) == [10, 10, 10, 10, 0])
        #expect(pages.flatMap { $0.map(\.record.id) } == ids, "every task once, in order")
        #expect(pages.flatMap { $0.map(\.output) } == inputs)
        // A budget smaller than one output still returns one task per page; no budget, the whole page.
        #expect(try await client.results(session.id, state: .finished, after: nil, limit: 1_000, maxOutputBytes: 1).items.count == 1)
        #expect(try await client.results(session.id, state: .finished, limit: 1_000).items.count == 40)
    }

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
        // A task run twice left an output per attempt.
        for attempt in 1...2 {
            let claimed = try await backends.state.claim([ids[1]], owner: AgentID("a"), token: .random(), leaseExpiry: Date().addingTimeInterval(60), now: Date())
            #expect(claimed.map(\.attempt) == [attempt])
            try await backends.payloads.put(PayloadKey.output(ids[1], attempt: attempt), [UInt8(attempt)])
            _ = try await backends.state.release([TaskAttempt(id: ids[1], attempt: attempt)], owner: AgentID("a"))
        }
        let before = try await backends.payloads.get(ids.map { PayloadKey.input($0) })
        #expect(before.count == 2, "the two large inputs are in the payload store")

        #expect(try await client.deleteSession(session.id) == 3)

        await #expect(throws: GridError.self) { try await client.session(session.id) }
        let keys = ids.flatMap { [PayloadKey.input($0), PayloadKey.output($0)] } + [PayloadKey.sessionPayload(session.id)]
            + [PayloadKey.output(ids[1], attempt: 1), PayloadKey.output(ids[1], attempt: 2)]
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
