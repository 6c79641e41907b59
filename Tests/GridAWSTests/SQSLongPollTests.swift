import Foundation
import GridKernel
import Testing

@testable import GridAWS

// Long polling of the SQS queue on moto_server (scripts/moto-server.py serves a long poll as short
// receives until a message comes or the wait is over, as SQS answers it).

private let skipMessage = "HTC_TEST_AWS_ENDPOINT is unset: run the tests through scripts/with-moto.sh (or make test)"

/// A queue with the given priorities, and the meter of its client.
private func queue(_ name: String, priorities: [Int]) async throws -> (SQSTaskQueue, AWSRequestMeter) {
    let client = try awsTests.client("sqs")
    let queue = SQSTaskQueue(
        client: client, configuration: SQSConfiguration(region: awsTests.region, prefix: "\(name)-\(UUID().uuidString.prefix(8).lowercased())"))
    try await queue.createQueues(priorities: priorities)
    return (queue, client.meter)
}

/// Waits (bounded) until the meter has counted `count` receives: a lease is then waiting in SQS.
private func receives(_ meter: AWSRequestMeter, reach count: Int) async throws {
    let deadline = ContinuousClock.now + .seconds(30)
    while meter.requests["sqs:ReceiveMessage", default: 0] < count {
        try #require(ContinuousClock.now < deadline, "\(count) receive(s) sent within 30 s")
        try await Task.sleep(for: .milliseconds(1))
    }
}

/// A lease waiting 20 s on an empty queue is one long poll; cancelling its task aborts the request
/// and the call ends at once with `CancellationError`.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func sqsWaitingLeaseEndsWhenCancelled() async throws {
    let (queue, meter) = try await queue("cancel", priorities: [0])
    let waiting = Task { try await queue.lease(max: 5, duration: .seconds(30), order: .highestFirst, wait: .seconds(20)) }
    try await receives(meter, reach: 1)
    let cancelled = ContinuousClock.now
    waiting.cancel()
    let outcome = await waiting.result
    #expect(ContinuousClock.now - cancelled < .seconds(2), "the lease ended \(ContinuousClock.now - cancelled) after the cancel")
    #expect(throws: CancellationError.self) { try outcome.get() }
    #expect(meter.requests["sqs:ReceiveMessage", default: 0] == 1, "one long poll, not retried after the cancel")
}

/// A message enqueued while a lease waits in its long poll is leased by that poll, long before the
/// wait ends; the idle wait before it cost one receive.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func sqsWaitingLeaseGetsAMessageSentMeanwhile() async throws {
    let (queue, meter) = try await queue("arrive", priorities: [0])
    let waiting = Task { try await queue.lease(max: 5, duration: .seconds(30), order: .highestFirst, wait: .seconds(20)) }
    try await receives(meter, reach: 1)
    let id = TaskID(session: .random(), index: 3)
    let sent = ContinuousClock.now
    try await queue.enqueue([QueuedTask(id: id, priority: 0)])
    let leases = try await waiting.value
    #expect(leases.map(\.id) == [id])
    #expect(ContinuousClock.now - sent < .seconds(5), "leased \(ContinuousClock.now - sent) after the send")
    #expect(meter.requests["sqs:ReceiveMessage", default: 0] == 1, "the long poll that was waiting brought it")
}

/// With two priority queues an idle lease long-polls both at once, and the next idle lease skips the
/// look without waiting: one receive per queue per wait. A message sent to either queue ends the wait.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func sqsIdleLeaseCostsOneReceivePerQueue() async throws {
    let (queue, meter) = try await queue("idle", priorities: [0, 5])
    #expect(try await queue.lease(max: 5, duration: .seconds(30), order: .highestFirst, wait: .seconds(3)).isEmpty)
    #expect(meter.requests["sqs:ReceiveMessage", default: 0] == 4, "a first look at both queues, then a long poll of each")
    #expect(try await queue.lease(max: 5, duration: .seconds(30), order: .highestFirst, wait: .seconds(3)).isEmpty)
    #expect(meter.requests["sqs:ReceiveMessage", default: 0] == 6, "an idle lease after an idle lease: one long poll per queue")
    let waiting = Task { try await queue.lease(max: 5, duration: .seconds(30), order: .highestFirst, wait: .seconds(20)) }
    try await receives(meter, reach: 8)
    let id = TaskID(session: .random(), index: 1)
    try await queue.enqueue([QueuedTask(id: id, priority: 0)])
    let leases = try await waiting.value
    #expect(leases.map(\.id) == [id], "the low-priority queue's poll brought it; the other was aborted")
}
