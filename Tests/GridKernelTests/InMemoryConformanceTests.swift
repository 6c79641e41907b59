import GridKernel
import GridKernelConformance
import Testing

@Test(arguments: QueueConformance.Case.allCases)
func queue(_ c: QueueConformance.Case) async throws {
    try await QueueConformance { ctx in InMemoryTaskQueue(clock: ctx.clock) }.run(c)
}

@Test(arguments: QueueConformance.Case.allCases)
func deadLetteringQueue(_ c: QueueConformance.Case) async throws {
    try await QueueConformance { ctx in InMemoryTaskQueue(clock: ctx.clock, maxDeliveries: 5) }.run(c)
}

/// Exercises the suite's `.real` mode (polling with deadlines) against the system clock.
@Test(arguments: QueueConformance.Case.allCases)
func realTimeQueue(_ c: QueueConformance.Case) async throws {
    try await QueueConformance(time: .real(unit: .milliseconds(500))) { _ in InMemoryTaskQueue() }.run(c)
}

@Test(arguments: StateConformance.Case.allCases)
func state(_ c: StateConformance.Case) async throws {
    try await StateConformance { ctx in InMemoryStateStore(clock: ctx.clock) }.run(c)
}

@Test(arguments: PayloadConformance.Case.allCases)
func payloads(_ c: PayloadConformance.Case) async throws {
    try await PayloadConformance { ctx in InMemoryPayloadStore(clock: ctx.clock) }.run(c)
}

@Test(arguments: PayloadConformance.Case.allCases)
func limitedPayloads(_ c: PayloadConformance.Case) async throws {
    try await PayloadConformance { ctx in InMemoryPayloadStore(clock: ctx.clock, maxPayloadBytes: 8 * 1_024 * 1_024) }.run(c)
}

/// What the conformance suite cannot know: the in-memory queue's own redrive limit.
@Suite struct InMemoryDeadLetterTests {
    let clock = ManualClock()

    @Test func messageIsDeadLetteredInsteadOfItsExtraDelivery() async throws {
        let queue = InMemoryTaskQueue(clock: clock, maxDeliveries: 2)
        let id = TaskID(session: .random(), index: 0)
        try await queue.enqueue([QueuedTask(id: id, priority: 0)])
        for delivery in 1...2 {
            let leases = try await queue.lease(max: 1, duration: .seconds(10), order: .highestFirst, wait: .zero)
            #expect(leases.map(\.deliveryCount) == [delivery])
            #expect(try await queue.drainDeadLetters(max: 10).isEmpty)
            clock.advance(by: .seconds(11))
        }
        let dead = try await queue.drainDeadLetters(max: 10)
        #expect(dead == [DeadLetter(id: id, reason: "message was delivered 2 times; the queue's redrive limit is 2")])
        #expect(try await queue.lease(max: 1, duration: .seconds(10), order: .highestFirst, wait: .zero).isEmpty)
        #expect(try await queue.depth().isEmpty)
        #expect(try await queue.drainDeadLetters(max: 10).isEmpty, "draining removes the dead letters")
    }

    @Test func releasedMessageAtTheLimitIsDeadLettered() async throws {
        let queue = InMemoryTaskQueue(clock: clock, maxDeliveries: 1)
        let ids = (0..<3).map { TaskID(session: .random(), index: $0) }
        try await queue.enqueue(ids.map { QueuedTask(id: $0, priority: 0) })
        let leases = try await queue.lease(max: 3, duration: .seconds(10), order: .highestFirst, wait: .zero)
        try await queue.release(leases, delay: .zero)
        let first = try await queue.drainDeadLetters(max: 2)
        let rest = try await queue.drainDeadLetters(max: 2)
        #expect(first.map(\.id) == Array(ids.prefix(2)), "oldest first, at most max")
        #expect(rest.map(\.id) == [ids[2]])
    }

    @Test func acknowledgedMessageIsNeverDeadLettered() async throws {
        let queue = InMemoryTaskQueue(clock: clock, maxDeliveries: 1)
        try await queue.enqueue([QueuedTask(id: TaskID(session: .random(), index: 0), priority: 0)])
        let leases = try await queue.lease(max: 1, duration: .seconds(10), order: .highestFirst, wait: .zero)
        try await queue.acknowledge(leases)
        clock.advance(by: .seconds(60))
        #expect(try await queue.drainDeadLetters(max: 10).isEmpty)
    }
}

@Test(arguments: GridConformance.Case.allCases)
func grid(_ c: GridConformance.Case) async throws {
    try await GridConformance { ctx in
        GridBackends(queue: InMemoryTaskQueue(clock: ctx.clock), state: InMemoryStateStore(clock: ctx.clock), payloads: InMemoryPayloadStore(clock: ctx.clock))
    }.run(c)
}

/// Exercises the grid suite's `.real` mode against the system clock.
@Test(arguments: GridConformance.Case.allCases)
func realTimeGrid(_ c: GridConformance.Case) async throws {
    try await GridConformance(time: .real(unit: .milliseconds(200))) { _ in
        GridBackends(queue: InMemoryTaskQueue(), state: InMemoryStateStore(), payloads: InMemoryPayloadStore())
    }.run(c)
}
