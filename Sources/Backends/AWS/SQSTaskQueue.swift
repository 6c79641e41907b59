import Foundation
import GridKernel
import Logging
import Synchronization

/// The task queue on Amazon SQS: one standard queue per priority, named `<prefix>__<priority>` as
/// HTC-Grid names them, and a dead-letter queue `<prefix>__dlq` they redrive to.
///
/// Leases are SQS visibility timeouts: batch send (10 per call), receive in priority order, batch
/// `ChangeMessageVisibility` to extend and release, batch delete to acknowledge. SQS accepts a
/// receipt handle of an earlier delivery (and moto applies it to the current one), so the queue
/// keeps the handles it leased with their expiry and ignores stale ones: acknowledging, extending
/// or releasing a lease that expired, or that was already acknowledged or released, does nothing.
/// Visibility is measured by SQS in whole seconds; lease durations are rounded up.
public final class SQSTaskQueue: DeadLetteringTaskQueue {
    private let client: AWSClient
    private let configuration: SQSConfiguration
    private let clock: any GridClock
    private let queues = Mutex<QueueDirectory>(QueueDirectory())
    private let leases = Mutex<[String: Date]>([:])
    /// Whether the last lease call ended with a long poll that found nothing (see ``lease(max:duration:order:wait:)``).
    private let idleAfterLongPoll = Mutex(false)

    private struct QueueDirectory {
        var urls: [Int: String] = [:]
        var listedAt: Date?
        var deadLetterURL: String?
    }

    /// Creates a queue on an SQS client.
    public init(client: AWSClient, configuration: SQSConfiguration, clock: any GridClock = SystemClock()) {
        self.client = client
        self.configuration = configuration
        self.clock = clock
    }

    /// The name of the queue of a priority.
    public static func queueName(prefix: String, priority: Int) -> String { "\(prefix)__\(priority)" }

    /// The name of the dead-letter queue.
    public static func deadLetterQueueName(prefix: String) -> String { "\(prefix)__dlq" }

    // MARK: TaskQueue

    public func enqueue(_ tasks: [QueuedTask]) async throws {
        var calls: [(url: String, batch: [QueuedTask])] = []
        for (priority, tasks) in Dictionary(grouping: tasks, by: \.priority) {
            let url = try await queueURL(priority, create: true)
            calls += try Self.batches(tasks, maxBytes: configuration.maxMessageBytes).map { (url, $0) }
        }
        _ = try await calls.concurrentMap(width: configuration.concurrency) { call in try await self.send(call.batch, to: call.url) }
    }

    /// Leases in priority order, waiting with SQS long polling (`WaitTimeSeconds`, at most 20 s a
    /// request: `wait` rounded to whole seconds, 0 when `wait` is under half a second).
    ///
    /// With one priority queue, each request is one long poll of that queue, so a lease call that
    /// waits costs one `ReceiveMessage` per 20 s. With several, the queues are first read in priority
    /// order without waiting (skipped when this queue's last lease call ended in a long poll that found
    /// nothing, so an idle agent does not pay it), then long-polled all at once: one `ReceiveMessage`
    /// per queue per 20 s. The first poll that brings messages ends the call and the others are
    /// aborted; a message SQS had already handed to an aborted poll is delivered again after `duration`
    /// (its receive count grows by one). Cancelling the calling task aborts the polls under way.
    ///
    /// - Throws: `CancellationError` when cancelled; ``GridKernel/GridError/Code/unavailable``.
    public func lease(max: Int, duration: Duration, order: PriorityOrder, wait: Duration) async throws -> [Lease] {
        guard max > 0 else { return [] }
        let deadline = clock.now.addingTimeInterval(wait.timeInterval)
        var skipShortPass = idleAfterLongPoll.withLock { $0 }
        var refresh = false
        while true {
            let known = try await knownQueues(refresh: refresh)
            let ordered = known.keys.sorted { order == .highestFirst ? $0 > $1 : $0 < $1 }.compactMap { priority in known[priority].map { (priority, $0) } }
            let seconds = Int(Swift.min(20, Swift.max(0, deadline.timeIntervalSince(clock.now))).rounded())
            if ordered.isEmpty {
                // No queue yet: look again for one (at most one listing a second) until the deadline.
                let left = deadline.timeIntervalSince(clock.now)
                guard left >= 1 else { return [] }
                try await clock.sleep(for: .seconds(Swift.min(1, left)))
                refresh = true
                continue
            }
            refresh = false
            var found: [Lease] = []
            if ordered.count == 1 || !skipShortPass || seconds == 0 {
                for (priority, url) in ordered where found.count < max {
                    found += try await drain(url, priority: priority, max: max - found.count, duration: duration, wait: ordered.count == 1 ? seconds : 0)
                }
            }
            if found.isEmpty && ordered.count > 1 && seconds > 0 {
                found = try await longPoll(ordered, max: max, duration: duration, wait: seconds)
            }
            skipShortPass = true
            let longPolled = seconds > 0
            idleAfterLongPoll.withLock { $0 = found.isEmpty && longPolled }
            if !found.isEmpty || deadline.timeIntervalSince(clock.now) < 0.5 { return found }
        }
    }

    /// Receives from one queue: one request waiting up to `wait` seconds, then, while SQS hands out
    /// full batches, more without waiting, up to `max` messages.
    private func drain(_ url: String, priority: Int, max: Int, duration: Duration, wait: Int) async throws -> [Lease] {
        var found: [Lease] = []
        var seconds = wait
        while found.count < max {
            let asked = Swift.min(10, max - found.count)
            let batch = try await receive(from: url, priority: priority, max: asked, duration: duration, wait: seconds)
            found += batch
            if batch.count < asked { break }
            seconds = 0
        }
        return found
    }

    /// Long-polls every queue at once until one brings messages (the other polls are then aborted)
    /// or all come back empty. Messages beyond `max` (two polls answering together) are released.
    private func longPoll(_ queues: [(priority: Int, url: String)], max: Int, duration: Duration, wait: Int) async throws -> [Lease] {
        var found: [Lease] = []
        try await withThrowingTaskGroup(of: [Lease].self) { group in
            for (priority, url) in queues {
                group.addTask { try await self.receive(from: url, priority: priority, max: Swift.min(10, max), duration: duration, wait: wait) }
            }
            while let result = await group.nextResult() {
                switch result {
                case .success(let batch):
                    found += batch
                    if !found.isEmpty { group.cancelAll() }
                case .failure(let error):
                    // Polls aborted once messages came, or because the caller was cancelled (checked
                    // below), end so; any other failure before messages came is the caller's.
                    if found.isEmpty && !(error is CancellationError) { throw error }
                }
            }
        }
        try Task.checkCancellation()
        let rank = Dictionary(uniqueKeysWithValues: queues.enumerated().map { ($0.element.priority, $0.offset) })
        found.sort { rank[$0.priority, default: 0] < rank[$1.priority, default: 0] }
        if found.count > max {
            try await release(Array(found[max...]), delay: .zero)
            found.removeLast(found.count - max)
        }
        return found
    }

    public func extend(_ leases: [Lease], duration: Duration) async throws -> [Lease] {
        let live = held(leases)
        let start = clock.now
        let changed = try await changeVisibility(live, seconds: Self.visibilitySeconds(duration), action: "extend")
        self.leases.withLock { table in
            for lease in live {
                if changed.contains(lease.handle) { table[lease.handle] = start.addingTimeInterval(duration.timeInterval) } else { table[lease.handle] = nil }
            }
        }
        return live.filter { changed.contains($0.handle) }
    }

    public func acknowledge(_ leases: [Lease]) async throws {
        let live = held(leases)
        forget(live)
        try await forEachBatch(live) { url, batch in
            let entries: [JSON] = batch.enumerated().map { ["Id": .string("m\($0.offset)"), "ReceiptHandle": .string($0.element.handle)] }
            _ = try await self.client.json(
                "AmazonSQS", "DeleteMessageBatch", ["QueueUrl": .string(url), "Entries": .array(entries)], resource: url, repeatability: .safe)
        }
    }

    public func release(_ leases: [Lease], delay: Duration) async throws {
        let live = held(leases)
        forget(live)
        _ = try await changeVisibility(live, seconds: delay <= .zero ? 0 : Self.visibilitySeconds(delay), action: "release")
    }

    public func depth() async throws -> [Int: QueueDepth] {
        let known = try await knownQueues(refresh: true)
        return try await withThrowingTaskGroup(of: (Int, QueueDepth).self) { group in
            for (priority, url) in known {
                group.addTask {
                    let answer = try await self.client.json(
                        "AmazonSQS", "GetQueueAttributes",
                        [
                            "QueueUrl": .string(url),
                            "AttributeNames": ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"],
                        ], resource: url, repeatability: .safe)
                    let attributes = answer["Attributes"] ?? [:]
                    let waiting = (attributes["ApproximateNumberOfMessages"]?.int ?? 0) + (attributes["ApproximateNumberOfMessagesDelayed"]?.int ?? 0)
                    return (priority, QueueDepth(waiting: waiting, inFlight: attributes["ApproximateNumberOfMessagesNotVisible"]?.int ?? 0))
                }
            }
            var depth: [Int: QueueDepth] = [:]
            for try await (priority, value) in group { depth[priority] = value }
            return depth
        }
    }

    public func drainDeadLetters(max: Int) async throws -> [DeadLetter] {
        guard max > 0, let url = try await deadLetterURL() else { return [] }
        var letters: [DeadLetter] = []
        while letters.count < max {
            let answer = try await client.json(
                "AmazonSQS", "ReceiveMessage",
                [
                    "QueueUrl": .string(url), "MaxNumberOfMessages": .int(Swift.min(10, max - letters.count)), "VisibilityTimeout": 30,
                    "WaitTimeSeconds": 0, "MessageSystemAttributeNames": ["ApproximateReceiveCount"], "AttributeNames": ["All"],
                ], resource: url, repeatability: .safe)
            let messages = answer["Messages"]?.array ?? []
            guard !messages.isEmpty else { break }
            var handles: [JSON] = []
            for (index, message) in messages.enumerated() {
                if let handle = message["ReceiptHandle"]?.string {
                    handles.append(["Id": .string("d\(index)"), "ReceiptHandle": .string(handle)])
                }
                guard let body = message["Body"]?.string, let decoded = try? Self.decode(body) else {
                    client.logger.warning("dropped a malformed dead letter", metadata: ["queue": "\(url)"])
                    continue
                }
                letters.append(DeadLetter(
                    id: decoded.id,
                    reason: "SQS moved the message to the dead-letter queue \(Self.deadLetterQueueName(prefix: configuration.prefix)) after \(configuration.maxReceiveCount) deliveries without the task finishing"
                ))
            }
            _ = try await client.json("AmazonSQS", "DeleteMessageBatch", ["QueueUrl": .string(url), "Entries": .array(handles)], resource: url, repeatability: .safe)
        }
        return letters
    }

    // MARK: Queues

    /// Creates the dead-letter queue and the queue of each priority, if missing (idempotent).
    ///
    /// - Throws: ``GridKernel/GridError``.
    public func createQueues(priorities: [Int]) async throws {
        for priority in priorities { _ = try await queueURL(priority, create: true) }
    }

    private func queueURL(_ priority: Int, create: Bool) async throws -> String {
        if let url = queues.withLock({ $0.urls[priority] }) { return url }
        let name = Self.queueName(prefix: configuration.prefix, priority: priority)
        let url: String
        if create {
            let deadLetterArn = try await deadLetterArn()
            // Written by hand so that every process sends the same text: SQS compares the attributes of
            // an existing queue with a CreateQueue's, and a JSON object's key order is not fixed.
            let policy = #"{"deadLetterTargetArn":"\#(deadLetterArn)","maxReceiveCount":\#(configuration.maxReceiveCount)}"#
            do {
                let answer = try await client.json(
                    "AmazonSQS", "CreateQueue",
                    ["QueueName": .string(name), "Attributes": ["RedrivePolicy": .string(policy), "MessageRetentionPeriod": "1209600"]],
                    resource: name, repeatability: .safe)
                guard let created = answer["QueueUrl"]?.string else {
                    throw GridError(.internalError, "sqs:CreateQueue \(name) answered without QueueUrl", backend: "sqs")
                }
                url = created
            } catch let error as GridError where (error.underlying as? AWSServiceError)?.code.contains("QueueNameExists") == true
                || (error.underlying as? AWSServiceError)?.code.contains("QueueAlreadyExists") == true
            {
                // The queue exists with other attributes (e.g. a redrive limit set by Terraform): use it.
                return try await queueURL(priority, create: false)
            }
        } else {
            let answer = try await client.json("AmazonSQS", "GetQueueUrl", ["QueueName": .string(name)], resource: name, repeatability: .safe)
            guard let found = answer["QueueUrl"]?.string else { throw GridError(.internalError, "sqs:GetQueueUrl \(name) answered without QueueUrl", backend: "sqs") }
            url = found
        }
        queues.withLock { $0.urls[priority] = url }
        return url
    }

    private func deadLetterArn() async throws -> String {
        let name = Self.deadLetterQueueName(prefix: configuration.prefix)
        let created = try await client.json(
            "AmazonSQS", "CreateQueue", ["QueueName": .string(name), "Attributes": ["MessageRetentionPeriod": "1209600"]], resource: name,
            repeatability: .safe)
        guard let url = created["QueueUrl"]?.string else { throw GridError(.internalError, "sqs:CreateQueue \(name) answered without QueueUrl", backend: "sqs") }
        queues.withLock { $0.deadLetterURL = url }
        let answer = try await client.json(
            "AmazonSQS", "GetQueueAttributes", ["QueueUrl": .string(url), "AttributeNames": ["QueueArn"]], resource: url, repeatability: .safe)
        guard let arn = answer["Attributes"]?["QueueArn"]?.string else {
            throw GridError(.internalError, "sqs:GetQueueAttributes \(name) answered without QueueArn", backend: "sqs")
        }
        return arn
    }

    private func deadLetterURL() async throws -> String? {
        if let url = queues.withLock({ $0.deadLetterURL }) { return url }
        let name = Self.deadLetterQueueName(prefix: configuration.prefix)
        do {
            let answer = try await client.json("AmazonSQS", "GetQueueUrl", ["QueueName": .string(name)], resource: name, repeatability: .safe)
            let url = answer["QueueUrl"]?.string
            queues.withLock { $0.deadLetterURL = url }
            return url
        } catch let error as GridError where (error.underlying as? AWSServiceError)?.code.contains("NonExistentQueue") == true
            || (error.underlying as? AWSServiceError)?.code == "QueueDoesNotExist"
        {
            return nil
        }
    }

    /// The queues of every priority, listed again when the list is older than the refresh interval
    /// (another process may have created a priority) or when `refresh` asks for it.
    private func knownQueues(refresh: Bool) async throws -> [Int: String] {
        let now = clock.now
        let (current, listedAt) = queues.withLock { ($0.urls, $0.listedAt) }
        if let listedAt {
            let age = now.timeIntervalSince(listedAt)
            // A refresh is asked for while a lease call waits: at most one listing a second.
            if age < (refresh ? 1 : configuration.queueRefresh.timeInterval) { return current }
        }
        var found: [Int: String] = [:]
        var token: String?
        let prefix = "\(configuration.prefix)__"
        repeat {
            var request: [String: JSON] = ["QueueNamePrefix": .string(prefix), "MaxResults": 1000]
            if let token { request["NextToken"] = .string(token) }
            let answer = try await client.json("AmazonSQS", "ListQueues", .object(request), resource: prefix + "*", repeatability: .safe)
            for url in (answer["QueueUrls"]?.array ?? []).compactMap(\.string) {
                let name = url.split(separator: "/").last.map(String.init) ?? ""
                guard name.hasPrefix(prefix), let priority = Int(name.dropFirst(prefix.count)) else { continue }
                found[priority] = url
            }
            token = answer["NextToken"]?.string
        } while token != nil
        return queues.withLock { directory in
            directory.urls.merge(found) { old, _ in old }
            directory.listedAt = now
            return directory.urls
        }
    }

    // MARK: Messages

    private func send(_ batch: [QueuedTask], to url: String) async throws {
        var pending = Dictionary(uniqueKeysWithValues: batch.enumerated().map { ("t\($0.offset)", $0.element) })
        for attempt in 1...configuration.batchRetries {
            let entries: [JSON] = pending.sorted { $0.key < $1.key }.map { ["Id": .string($0.key), "MessageBody": .string(Self.encode($0.value))] }
            let answer = try await client.json(
                "AmazonSQS", "SendMessageBatch", ["QueueUrl": .string(url), "Entries": .array(entries)], resource: url, repeatability: .safe)
            var retry: [String: QueuedTask] = [:]
            for failure in answer["Failed"]?.array ?? [] {
                guard let id = failure["Id"]?.string, let task = pending[id] else { continue }
                if failure["SenderFault"]?.bool == true || attempt == configuration.batchRetries {
                    throw GridError.unavailable(
                        "sqs:SendMessageBatch on \(url) refused task \(task.id): \(failure["Code"]?.string ?? "?"): \(failure["Message"]?.string ?? "")", backend: "sqs")
                }
                retry[id] = task
            }
            if retry.isEmpty { return }
            pending = retry
            try await clock.sleep(for: client.retry.backoff(retry: attempt, random: Double.random(in: 0..<1)))
        }
    }

    private func receive(from url: String, priority: Int, max: Int, duration: Duration, wait: Int) async throws -> [Lease] {
        let start = clock.now
        let answer = try await client.json(
            "AmazonSQS", "ReceiveMessage",
            [
                "QueueUrl": .string(url), "MaxNumberOfMessages": .int(max), "VisibilityTimeout": .int(Self.visibilitySeconds(duration)),
                "WaitTimeSeconds": .int(wait), "MessageSystemAttributeNames": ["ApproximateReceiveCount"], "AttributeNames": ["ApproximateReceiveCount"],
            ], resource: url, repeatability: .safe, timeout: .seconds(wait + 10))
        let expiry = start.addingTimeInterval(duration.timeInterval)
        var found: [Lease] = []
        var malformed: [Lease] = []
        for message in answer["Messages"]?.array ?? [] {
            guard let handle = message["ReceiptHandle"]?.string else { continue }
            let count = message["Attributes"]?["ApproximateReceiveCount"]?.int ?? 1
            guard let body = message["Body"]?.string, let decoded = try? Self.decode(body) else {
                client.logger.warning("deleting a message that is not an HTC Grid task", metadata: ["queue": "\(url)"])
                malformed.append(Lease(id: TaskID(session: .random(), index: 0), priority: priority, payload: nil, handle: handle, deliveryCount: count))
                continue
            }
            found.append(Lease(id: decoded.id, priority: priority, payload: decoded.payload, handle: handle, deliveryCount: count))
        }
        leases.withLock { table in
            if table.count > 100_000 { table = table.filter { $0.value > start } }
            for lease in found + malformed { table[lease.handle] = expiry }
        }
        if !malformed.isEmpty { try await acknowledge(malformed) }
        return found
    }

    /// Changes visibility in batches; returns the handles SQS changed.
    private func changeVisibility(_ leases: [Lease], seconds: Int, action: String) async throws -> Set<String> {
        let changed = Mutex<Set<String>>([])
        try await forEachBatch(leases) { url, batch in
            let entries: [JSON] = batch.enumerated().map {
                ["Id": .string("v\($0.offset)"), "ReceiptHandle": .string($0.element.handle), "VisibilityTimeout": .int(seconds)]
            }
            let answer = try await self.client.json(
                "AmazonSQS", "ChangeMessageVisibilityBatch", ["QueueUrl": .string(url), "Entries": .array(entries)], resource: url,
                repeatability: .safe)
            let ok = Set((answer["Successful"]?.array ?? []).compactMap { $0["Id"]?.string })
            changed.withLock { set in
                for (index, lease) in batch.enumerated() where ok.contains("v\(index)") { set.insert(lease.handle) }
            }
        }
        return changed.withLock { $0 }
    }

    /// Runs `body` for each batch of at most 10 leases of one queue, concurrently.
    private func forEachBatch(_ leases: [Lease], _ body: @escaping @Sendable (String, [Lease]) async throws -> Void) async throws {
        guard !leases.isEmpty else { return }
        var calls: [(url: String, batch: [Lease])] = []
        for (priority, leases) in Dictionary(grouping: leases, by: \.priority) {
            let url = try await queueURL(priority, create: false)
            for start in stride(from: 0, to: leases.count, by: 10) {
                calls.append((url, Array(leases[start..<Swift.min(start + 10, leases.count)])))
            }
        }
        _ = try await calls.concurrentMap(width: configuration.concurrency) { call in try await body(call.url, call.batch) }
    }

    /// The leases this queue handed out that have not expired, been acknowledged or released.
    private func held(_ candidates: [Lease]) -> [Lease] {
        let now = clock.now
        return leases.withLock { table in
            var seen = Set<String>()
            return candidates.filter { lease in
                guard let expiry = table[lease.handle], expiry > now, seen.insert(lease.handle).inserted else { return false }
                return true
            }
        }
    }

    private func forget(_ done: [Lease]) {
        leases.withLock { table in
            for lease in done { table[lease.handle] = nil }
        }
    }

    // MARK: Encoding

    /// SQS counts visibility in whole seconds (0 to 12 hours).
    static func visibilitySeconds(_ duration: Duration) -> Int {
        Swift.min(43_200, Swift.max(1, Int(duration.timeInterval.rounded(.up))))
    }

    /// `{"task_id": …, "priority": …, "payload": base64}`; `payload` is absent when the input is in
    /// the payload store, and `""` for an empty inline input.
    static func encode(_ task: QueuedTask) -> String {
        var body: [String: JSON] = ["task_id": .string(task.id.rawValue), "priority": .int(task.priority)]
        if let payload = task.payload { body["payload"] = .string(Data(payload).base64EncodedString()) }
        return String(decoding: JSON.object(body).bytes(), as: UTF8.self)
    }

    static func decode(_ body: String) throws -> (id: TaskID, payload: [UInt8]?) {
        let json = try JSON.parse(Array(body.utf8), context: "an SQS message")
        guard let id = json["task_id"]?.string else { throw GridError(.internalError, "an SQS message has no task_id", backend: "sqs") }
        var payload: [UInt8]?
        if let text = json["payload"]?.string {
            guard let data = Data(base64Encoded: text) else { throw GridError(.internalError, "the payload of \(id) is not base64", backend: "sqs") }
            payload = Array(data)
        }
        return (try TaskID(id), payload)
    }

    /// Batches of at most 10 messages and at most `maxBytes` in all, as SendMessageBatch allows.
    static func batches(_ tasks: [QueuedTask], maxBytes: Int) throws -> [[QueuedTask]] {
        var batches: [[QueuedTask]] = []
        var current: [QueuedTask] = []
        var bytes = 0
        for task in tasks {
            let size = encode(task).utf8.count
            guard size <= maxBytes else {
                throw GridError(
                    .payloadTooLarge,
                    "the message of task \(task.id) is \(ByteCount(size)); SQS takes at most \(ByteCount(maxBytes)): lower the client's inline payload limit so the input goes to the payload store",
                    backend: "sqs")
            }
            if current.count == 10 || bytes + size > maxBytes {
                batches.append(current)
                current = []
                bytes = 0
            }
            current.append(task)
            bytes += size
        }
        if !current.isEmpty { batches.append(current) }
        return batches
    }
}

/// Where and how the SQS queue works, from `sqs://REGION/PREFIX?endpoint=…`.
public struct SQSConfiguration: Sendable, Hashable {
    /// The AWS region.
    public var region: String
    /// The queue name prefix: queues are `<prefix>__<priority>` and `<prefix>__dlq`.
    public var prefix: String
    /// The redrive limit: deliveries after which SQS moves a message to the dead-letter queue; the
    /// reaper then fails its task with the reason. Keep it above the largest `maxRetries` + 1.
    public var maxReceiveCount: Int
    /// How often the list of priority queues is read again (another process may add one).
    public var queueRefresh: Duration
    /// The largest message (and batch) SQS accepts.
    public var maxMessageBytes: Int
    /// How often entries a batch call failed are sent again.
    public var batchRetries: Int
    /// Batch calls in flight within one operation (async-http-client keeps 8 connections per host).
    public var concurrency: Int

    /// Creates a configuration.
    public init(
        region: String, prefix: String, maxReceiveCount: Int = 1000, queueRefresh: Duration = .seconds(10),
        maxMessageBytes: Int = 256 * 1024, batchRetries: Int = 8, concurrency: Int = 8
    ) {
        self.region = region
        self.prefix = prefix
        self.maxReceiveCount = maxReceiveCount
        self.queueRefresh = queueRefresh
        self.maxMessageBytes = maxMessageBytes
        self.batchRetries = batchRetries
        self.concurrency = concurrency
    }
}
