import Foundation
import GridKernel
import GridKernelConformance
import Testing

@testable import GridAWS

// The public conformance suites, wired for the AWS backend, against moto_server
// (`make test` starts it through scripts/with-moto.sh and sets HTC_TEST_AWS_ENDPOINT). Each case gets
// its own queues (prefix), table and bucket, named after the case's namespace. Without the variable
// the suites are skipped, unless `make test` is the caller (HTC_TEST_SUITE=make): then they fail.
//
// A second moto checks signatures and IAM policies (HTC_TEST_AWS_AUTH_ENDPOINT); part of each suite
// runs there too, so a broken signer fails them.

private let skipMessage = "HTC_TEST_AWS_ENDPOINT is unset: run the tests through scripts/with-moto.sh (or make test)"

@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)), arguments: QueueConformance.Case.allCases)
func sqsQueue(_ c: QueueConformance.Case) async throws {
    try await QueueConformance(time: .real(unit: .seconds(1))) { ctx in try await awsTests.queue(ctx.namespace, clock: ctx.clock) }.run(c)
}

/// Every case but `pagingHundredThousandTasksByState`: moto answers each DynamoDB Query by scanning
/// every item of the table in Python, so paging 100,000 tasks 1,000 at a time through five states
/// (about 500 queries of 100,000 items each, after 160,000 writes) did not finish within 15 minutes on
/// this 2-core machine. `dynamoDBPagingAcrossShards` below pages 3,000 tasks the same way.
@Test(
    .enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)),
    arguments: StateConformance.Case.allCases.filter { $0 != .pagingHundredThousandTasksByState })
func dynamoDBState(_ c: StateConformance.Case) async throws {
    try await StateConformance { ctx in try await awsTests.state(ctx.namespace) }.run(c)
}

@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)), arguments: PayloadConformance.Case.allCases)
func s3Payloads(_ c: PayloadConformance.Case) async throws {
    try await PayloadConformance { ctx in try await awsTests.payloads(ctx.namespace) }.run(c)
}

/// The engine over SQS, DynamoDB and S3 together: submissions repeated, interrupted and repaired.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)), arguments: GridConformance.Case.allCases)
func awsGrid(_ c: GridConformance.Case) async throws {
    try await GridConformance(time: .real(unit: .seconds(1))) { ctx in
        GridBackends(
            queue: try await awsTests.queue(ctx.namespace, clock: ctx.clock), state: try await awsTests.state(ctx.namespace),
            payloads: try await awsTests.payloads(ctx.namespace))
    }.run(c)
}

@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)), arguments: [QueueConformance.Case.roundTrip, .acknowledgeRemoves])
func sqsQueueWithSignatureChecks(_ c: QueueConformance.Case) async throws {
    try await QueueConformance(time: .real(unit: .seconds(1))) { ctx in try await awsTests.queue(ctx.namespace, clock: ctx.clock, authenticated: true) }
        .run(c)
}

@Test(
    .enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)),
    arguments: [
        StateConformance.Case.sessionRoundTrip, .beginSubmissionReservesAtomically, .claimWinsOnlyForPendingUnowned, .failRetriesThenFails,
        .expiredLeasesFoundAndReaped,
    ])
func dynamoDBStateWithSignatureChecks(_ c: StateConformance.Case) async throws {
    try await StateConformance { ctx in try await awsTests.state(ctx.namespace, authenticated: true) }.run(c)
}

/// S3 through the signature-checking moto. Not the conformance suite: its keys hold ':' (session ids
/// such as `payload.case:…`), and moto's signature check gets the canonical path of keys with ':',
/// '+', '=' or '&' wrong (botocore's own PutObject fails there the same way with moto 5.2.1), so these
/// keys hold only a space among the characters that are percent-encoded.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func s3WithSignatureChecks() async throws {
    let store = try await awsTests.payloads("auth-\(UUID().uuidString.prefix(8).lowercased())", authenticated: true)
    let large = (0..<(6 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    try await store.put([PayloadItem(key: "a b_1-input", value: [1, 2, 3]), PayloadItem(key: "large_2-input", value: large), PayloadItem(key: "empty", value: [])])
    let read = try await store.get(["a b_1-input", "large_2-input", "empty", "missing"])
    #expect(read == ["a b_1-input": [1, 2, 3], "large_2-input": large, "empty": []])
    try await store.delete(["a b_1-input", "large_2-input", "missing"])
    #expect(try await store.get(["a b_1-input", "large_2-input", "empty"]).keys.sorted() == ["empty"])
}

/// 3,000 tasks in five states over three shards, paged 100 at a time per state: each task seen once, in
/// index order, with the right state, and the counts match.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func dynamoDBPagingAcrossShards() async throws {
    let store = DynamoDBStateStore(
        client: try awsTests.client("dynamodb"),
        configuration: DynamoDBConfiguration(region: awsTests.region, table: "paging-\(UUID().uuidString.prefix(8).lowercased())", taskShards: 3))
    try await store.createTable()
    let session = SessionID.random()
    let now = Date(timeIntervalSince1970: 1_700_000_000)
    try await store.createSession(SessionRecord(id: session, options: SessionOptions(), createdAt: now))
    let total = 3_000
    let key = try SubmissionKey("all")
    #expect(try await store.beginSubmission(.begin(session: session, key: key, count: total, at: now)).range == 0..<total)
    let ids = (0..<total).map { TaskID(session: session, index: $0) }
    try await store.createTasks(ids.map { TaskRecord(id: $0, submittedAt: now) })
    func expected(_ index: Int) -> TaskState {
        switch index % 5 {
        case 1: .finished
        case 2: .failed
        case 3: .processing
        case 4: .cancelled
        default: .pending
        }
    }
    let agent = AgentID("a")
    let running = ids.filter { [.finished, .failed, .processing].contains(expected($0.index)) }
    #expect(try await store.claim(running, owner: agent, token: .random(), leaseExpiry: now + 60, now: now).count == running.count)
    #expect(
        try await store.finish(
            ids.filter { expected($0.index) == .finished }.map { TaskCompletion(id: $0, attempt: 1, output: nil) }, owner: agent, at: now
        ).count == total / 5)
    #expect(
        try await store.fail(
            ids.filter { expected($0.index) == .failed }.map { TaskFailure(id: $0, attempt: 1, message: "x", retryable: false) }, owner: agent, at: now
        ).count == total / 5)
    #expect(try await store.cancel(ids.filter { expected($0.index) == .cancelled }, at: now).pending == total / 5)
    let counts = try await store.counts(session)
    #expect(TaskState.allCases.allSatisfy { counts[$0] == total / 5 }, "\(counts)")
    var seen = Set<Int>()
    for state in TaskState.allCases {
        var cursor: String?
        var last = -1
        repeat {
            let page = try await store.tasks(session, state: state, after: cursor, limit: 100)
            #expect(page.items.count <= 100)
            for record in page.items {
                #expect(record.state == state && expected(record.id.index) == state)
                #expect(record.id.index > last, "index order")
                #expect(seen.insert(record.id.index).inserted, "listed once")
                last = record.id.index
            }
            cursor = page.next
        } while cursor != nil
    }
    #expect(seen.count == total)
}

/// A fresh table with one session, and the write units metered since it was made.
private func meteredSession(_ name: String) async throws -> (DynamoDBStateStore, SessionID, Date, @Sendable () -> Double) {
    let store = try await awsTests.state("\(name)-\(UUID().uuidString.prefix(8).lowercased())")
    let meter = store.client.meter
    let session = SessionID.random()
    let now = Date(timeIntervalSince1970: 1_700_000_000)
    try await store.createSession(SessionRecord(id: session, options: SessionOptions(), createdAt: now))
    let start = meter.dynamoDBWriteUnits.table
    return (store, session, now, { meter.dynamoDBWriteUnits.table - start })
}

/// The write-unit meter follows DynamoDB's billing rules through a task's life on moto. Transitions
/// that move counters are transactions (two units per item): creating ten tasks is one transaction of
/// ten tasks and a counter shard (22 units); claiming them one more (22) plus the batch's lease bucket
/// (1); a claim that loses reads and writes nothing but its bucket; a heartbeat is one unit plus its
/// bucket; finishing the ten is one transaction of ten tasks and the sequence item (22), and ten units
/// on the completion index. Requests: one transaction per call.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func dynamoDBWriteUnitsFollowTheBillingRules() async throws {
    let (store, session, now, units) = try await meteredSession("units")
    let meter = store.client.meter
    let ids = (0..<10).map { TaskID(session: session, index: $0) }
    try await store.createTasks(ids.map { TaskRecord(id: $0, state: .pending, submittedAt: now) })
    #expect(units() == 22, "creation")
    let claimed = try await store.claim(ids, owner: AgentID("a"), token: .random(), leaseExpiry: now.addingTimeInterval(30), now: now)
    #expect(claimed.count == 10)
    #expect(units() == 45, "ten claims and their bucket")
    #expect(try await store.claim([ids[0]], owner: AgentID("b"), token: .random(), leaseExpiry: now.addingTimeInterval(30), now: now).isEmpty)
    #expect(units() == 46, "a lost claim: its bucket only")
    #expect(try await store.heartbeat([TaskAttempt(id: ids[0], attempt: 1)], owner: AgentID("a"), leaseExpiry: now.addingTimeInterval(60)) == [ids[0]])
    #expect(units() == 48, "a heartbeat and its bucket")
    let finished = try await store.finish(ids.map { TaskCompletion(id: $0, attempt: 1, output: [1, 2, 3]) }, owner: AgentID("a"), at: now)
    #expect(finished.count == 10)
    #expect(units() == 70, "ten finishes")
    #expect(meter.dynamoDBWriteUnits.indexes == 10, "ten tasks in the completion index")
    #expect(meter.requests["dynamodb:TransactWriteItems", default: 0] == 4, "the session's, the creation's, the claim's and the finish's")
    #expect(meter.requests["dynamodb:UpdateItem", default: 0] == 1, "the heartbeat")
    // The buckets of the finished tasks are garbage once they expire: the reaper deletes them.
    #expect(try await store.expiredLeases(now: now.addingTimeInterval(120), limit: 100).isEmpty)
    #expect(units() == 73, "three buckets deleted")
    #expect(try await store.expiredLeases(now: now.addingTimeInterval(120), limit: 100).isEmpty)
    #expect(units() == 73, "nothing left to delete")
}

/// What submissions cost: beginning one is one transaction of three items (the session's count, the
/// submission, its open marker), two units each; beginning it again reads only; each progress update
/// is one unit, and the one that completes it one more for deleting the marker. A submission of no
/// task has no marker. Nothing is written per task.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func dynamoDBSubmissionWriteUnits() async throws {
    let (store, session, now, units) = try await meteredSession("subunits")
    let meter = store.client.meter
    let begun = try await store.beginSubmission(.begin(session: session, key: try SubmissionKey("big"), count: 100_000, at: now))
    #expect(begun.range == 0..<100_000)
    #expect(units() == 6, "a reservation: three items in a transaction")
    #expect(try await store.beginSubmission(.begin(session: session, key: try SubmissionKey("big"), count: 100_000, at: now)) == begun)
    #expect(units() == 6, "beginning it again only reads")
    let half = try #require(begun.progressed(to: 50_000, at: now + 1))
    #expect(try await store.updateSubmission(half, expectedVersion: begun.version))
    #expect(units() == 7, "a progress update")
    let done = try #require(half.progressed(to: 100_000, at: now + 2))
    #expect(try await store.updateSubmission(done, expectedVersion: half.version))
    #expect(units() == 9, "the last update and the marker's deletion")
    #expect(try await store.stalledSubmissions(before: now + 3_600, limit: 10).isEmpty)
    #expect(units() == 9, "no marker left to clean up")
    _ = try await store.beginSubmission(.begin(session: session, key: try SubmissionKey("none"), count: 0, at: now))
    #expect(units() == 13, "a submission of no task: complete at once, no marker")
    #expect(meter.dynamoDBWriteUnits.indexes == 0, "submissions are not in the completion index")
}

/// A crash between a submission's last update and the deletion of its open marker leaves a stale
/// marker: `stalledSubmissions` does not list the complete submission and deletes the marker.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func dynamoDBStaleOpenMarkerIsDeleted() async throws {
    let store = try await awsTests.state("marker-\(UUID().uuidString.prefix(8).lowercased())")
    let session = SessionID.random()
    let now = Date(timeIntervalSince1970: 1_700_000_000)
    try await store.createSession(SessionRecord(id: session, options: SessionOptions(), createdAt: now))
    let key = try SubmissionKey("crashed")
    let begun = try await store.beginSubmission(.begin(session: session, key: key, count: 10, at: now))
    let open = try await store.beginSubmission(.begin(session: session, key: try SubmissionKey("open"), count: 10, at: now + 1))
    // The update that completes it, without the marker's deletion that follows it.
    _ = try await store.client.json(
        "DynamoDB_20120810", "UpdateItem",
        [
            "TableName": .string(store.configuration.table), "Key": .object(DynamoDBItem.key(session, submission: key)),
            "UpdateExpression": "SET #st = :st, #sent = :sent", "ExpressionAttributeNames": ["#st": "st", "#sent": "sent"],
            "ExpressionAttributeValues": [":st": DynamoDBItem.s(SubmissionState.complete.rawValue), ":sent": DynamoDBItem.n(10)],
        ], resource: "test", repeatability: .safe)
    func markers() async throws -> Int {
        let answer = try await store.client.json(
            "DynamoDB_20120810", "Query",
            [
                "TableName": .string(store.configuration.table), "KeyConditionExpression": "pk = :pk", "ConsistentRead": true,
                "ExpressionAttributeValues": [":pk": DynamoDBItem.s(DynamoDBItem.openSubmissionsPartition)],
            ], resource: "test", repeatability: .safe)
        return answer["Items"]?.array.count ?? 0
    }
    #expect(try await markers() == 2)
    let stalled = try await store.stalledSubmissions(before: now + 3_600, limit: 10)
    #expect(stalled.map(\.key) == [open.key], "only the open submission is stalled")
    #expect(stalled.first?.range == 10..<20)
    #expect(try await markers() == 1, "the stale marker was deleted")
    #expect(begun.range == 0..<10)
}

/// Task items written before attempts were counted (no `attempt`, no `ctok`) read as attempt 0: their
/// runs finish as attempt 0, and their next claim is attempt 1.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func dynamoDBTasksWrittenBeforeAttempts() async throws {
    let store = try await awsTests.state("legacy-\(UUID().uuidString.prefix(8).lowercased())")
    let session = SessionID.random()
    let now = Date(timeIntervalSince1970: 1_700_000_000)
    let running = TaskID(session: session, index: 0)
    let waiting = TaskID(session: session, index: 1)
    for (id, record) in [
        (running, TaskRecord(id: running, state: .processing, owner: AgentID("old"), leaseExpiry: now + 60, submittedAt: now, startedAt: now)),
        (waiting, TaskRecord(id: waiting, submittedAt: now)),
    ] {
        var item = DynamoDBItem.item(record, configuration: store.configuration)
        item["attempt"] = nil
        item["ctok"] = nil
        _ = try await store.client.json(
            "DynamoDB_20120810", "PutItem", ["TableName": .string(store.configuration.table), "Item": .object(item)], resource: "\(id)",
            repeatability: .safe)
    }
    #expect(try await store.task(running).attempt == 0)
    #expect(try await store.finish([TaskCompletion(id: running, attempt: 1, output: nil)], owner: AgentID("old"), at: now).isEmpty)
    #expect(try await store.finish([TaskCompletion(id: running, attempt: 0, output: nil)], owner: AgentID("old"), at: now) == [running])
    let token = ClaimToken.random()
    let claimed = try await store.claim([waiting], owner: AgentID("new"), token: token, leaseExpiry: now + 60, now: now)
    #expect(claimed.map(\.attempt) == [1])
    #expect(claimed.first?.claimToken == token)
}

/// `make test` must never skip the AWS suites.
@Test func motoGivenUnderMake() {
    #expect(
        awsTests.endpoint != nil || ProcessInfo.processInfo.environment["HTC_TEST_SUITE"] != "make",
        "HTC_TEST_AWS_ENDPOINT is unset under make test; scripts/with-moto.sh should have started moto_server")
}

/// A wrong secret is refused by the checking moto, and the error says which action on which resource.
@Test(.enabled(if: awsTests.enabled, Comment(rawValue: skipMessage)))
func wrongSecretIsRefusedWithTheActionAndResource() async throws {
    let configuration = S3Configuration(bucket: "denied-\(UUID().uuidString.prefix(8).lowercased())", region: "us-east-1", pathStyle: true)
    let client = try awsTests.client("s3", authenticated: true, secretSuffix: "-wrong")
    let store = S3PayloadStore(client: client, configuration: configuration)
    do {
        try await store.put("t_1-input", [1, 2, 3])
        Issue.record("a request signed with a wrong secret must be refused")
    } catch let error as GridError {
        #expect(error.code == .unauthorized)
        #expect(error.message.contains("s3:PutObject"), "\(error.message)")
        #expect(error.message.contains("s3://\(configuration.bucket)/t_1-input"), "\(error.message)")
    }
}

/// Where the test servers are, from the environment.
enum awsTests {
    static let environment = ProcessInfo.processInfo.environment
    static var endpoint: String? { environment["HTC_TEST_AWS_ENDPOINT"].flatMap { $0.isEmpty ? nil : $0 } }

    /// Run the suites when a server is given, and under `make test` (where a missing server fails).
    static var enabled: Bool { endpoint != nil || environment["HTC_TEST_SUITE"] == "make" }

    static let region = "us-east-1"

    static func client(_ service: String, authenticated: Bool = false, secretSuffix: String = "") throws -> AWSClient {
        let variable = authenticated ? "HTC_TEST_AWS_AUTH_ENDPOINT" : "HTC_TEST_AWS_ENDPOINT"
        guard let url = environment[variable], !url.isEmpty else {
            throw GridError.unavailable("\(variable) is unset; run the tests through make test or scripts/with-moto.sh")
        }
        let credentials =
            authenticated
            ? AWSCredentials(
                accessKeyId: environment["HTC_TEST_AWS_AUTH_KEY_ID"] ?? "", secretAccessKey: (environment["HTC_TEST_AWS_AUTH_SECRET"] ?? "") + secretSuffix)
            : AWSCredentials(accessKeyId: "testing", secretAccessKey: "testing")
        return AWSClient(
            service: service, region: region, endpoint: try AWSEndpoint(url), credentials: AWSCredentialsChain([StaticCredentialsProvider(credentials)]),
            retry: AWSRetryPolicy(maxAttempts: 3))
    }

    static func queue(_ namespace: String, clock: any GridClock, authenticated: Bool = false) async throws -> SQSTaskQueue {
        SQSTaskQueue(client: try client("sqs", authenticated: authenticated), configuration: SQSConfiguration(region: region, prefix: namespace), clock: clock)
    }

    static func state(_ namespace: String, authenticated: Bool = false) async throws -> DynamoDBStateStore {
        let store = DynamoDBStateStore(
            client: try client("dynamodb", authenticated: authenticated),
            configuration: DynamoDBConfiguration(region: region, table: namespace, taskShards: 2, leaseShards: 4))
        try await store.createTable()
        return store
    }

    static func payloads(_ namespace: String, authenticated: Bool = false) async throws -> S3PayloadStore {
        // 8 MiB values (the suite's largest) go up in two parts.
        let store = S3PayloadStore(
            client: try client("s3", authenticated: authenticated),
            configuration: S3Configuration(
                bucket: namespace, prefix: "grid/", region: region, pathStyle: true, encryption: authenticated ? .s3 : .kms("alias/grid"),
                multipartThreshold: 5 << 20, partSize: 5 << 20, maxPayloadBytes: 16 << 20))
        try await store.createBucket()
        return store
    }
}
