import Foundation
import GridKernel

/// The state store on Amazon DynamoDB: one table and one index; every task transition that moves a
/// counter is a conditional transaction.
///
/// **Transitions.** A call reads its tasks consistently, applies the kernel's rule to each record
/// (TaskRules.swift) and writes the changed ones with `TransactWriteItems`, each task on the condition
/// that it was not written since it was read (its write count `v`), together with the session's
/// counters; see ``transition(_:absent:numbering:rule:)``. So exactly one of several concurrent writers
/// wins, a stale attempt changes nothing, and the counters move exactly with the tasks. Heartbeats
/// move no counter: one conditional `UpdateItem` per task. Creation puts tasks on the condition that
/// they do not exist, in the same kind of transaction, and counts only those it created.
///
/// **Counters and completion order.** Each session has a sequence item (`n`, the last completion
/// number, and counters per state) and ``DynamoDBConfiguration/counterShards`` counter shards in a
/// partition of their own; ``counts(_:)`` sums them with one query. A transition that makes tasks
/// terminal moves `n` by their number on the condition that it is the value read, and gives them the
/// numbers in between, in the same transaction: the numbers are dense, and terminal transitions of one
/// session are serialized on that item. The sparse `completions` index (`sid`, `cseq`) lists the
/// terminal tasks in completion order.
///
/// **Claims sent twice.** The client sends a transaction again after a 5xx or a lost reply with the
/// same `ClientRequestToken` (DynamoDB applies it once), and the agent sends a claim call again after
/// ``GridKernel/GridError/Code/unavailable``: the kernel's rule gives the tasks held by this owner
/// under this call's token (`ctok`) as won, unchanged.
///
/// **Submissions.** ``beginSubmission(_:)`` reads the session and the submission consistently, then
/// writes in one `TransactWriteItems`: the session's `count` moved from the value read to the value
/// plus the submission's count (conditional on that value and on the session not being cancelled),
/// the submission item (conditional on its absence), and, unless the submission is complete at once,
/// its open marker. A cancelled transaction (a concurrent reservation, or the same key begun
/// concurrently, or this very transaction sent again after a lost reply) reads again: an existing
/// submission is returned, a moved count is tried again. ``updateSubmission(_:expectedVersion:)``
/// is one `UpdateItem` conditional on `ver`, then, when the submission stopped being open or
/// repairing, a `DeleteItem` of its marker: a crash in between leaves a stale marker, which
/// ``stalledSubmissions(before:limit:)`` deletes when the submission it names is no longer active.
/// That query reads only the marker partition, and only markers created before the date (an active
/// submission's `updatedAt` is not before its `createdAt`, up to the clock skew between the
/// submitter and the reaper).
public struct DynamoDBStateStore: StateStore {
    let client: AWSClient
    let configuration: DynamoDBConfiguration
    /// Queues this process' transactions that number tasks, per session.
    let sequenceGate = SequenceGate()

    /// Creates a store on a DynamoDB client.
    public init(client: AWSClient, configuration: DynamoDBConfiguration) {
        self.client = client
        self.configuration = configuration
    }

    private var table: String { configuration.table }
    private typealias D = DynamoDBItem

    // MARK: Sessions

    /// Writes the session with its sequence item (counters at zero) in one transaction: a session
    /// has a sequence item from its start, which tells it apart from a session of an earlier version.
    public func createSession(_ session: SessionRecord) async throws {
        let items = [D.item(session), D.sequenceItem(session.id)]
        do {
            _ = try await call(
                "TransactWriteItems",
                [
                    "TransactItems": [
                        ["Put": ["TableName": .string(table), "Item": .object(items[0]), "ConditionExpression": "attribute_not_exists(pk)"]],
                        ["Put": ["TableName": .string(table), "Item": .object(items[1])]],
                    ]
                ], resource: "session \(session.id)")
            for item in items { meterWrite(item: item, transactional: true) }
        } catch let error as GridError where Self.transactionCanceled(error) {
            for item in items { meterWrite(item: item, transactional: true) }
            throw GridError(.conflict, "session '\(session.id)' already exists", backend: "dynamodb")
        }
    }

    public func session(_ id: SessionID) async throws -> SessionRecord {
        guard let item = try await getItem(D.key(id), resource: "session \(id)") else {
            throw GridError.notFound("session '\(id)' does not exist", backend: "dynamodb")
        }
        return try D.session(item)
    }

    public func sessions(after cursor: String?, limit: Int) async throws -> Page<SessionRecord> {
        try Self.check(limit: limit)
        var condition = "#pk = :pk"
        var values: Item = [":pk": D.s(D.sessionsPartition)]
        if let after = try SessionCursor.parse(cursor, backend: "dynamodb") {
            condition += " AND #sk > :after"
            values[":after"] = D.s(after.rawValue)
        }
        let items = try await query(index: nil, condition: condition, names: ["#pk": "pk", "#sk": "sk"], values: values, limit: limit + 1)
        let sessions = try items.prefix(limit).map(D.session)
        return Page(items: sessions, next: items.count > limit ? sessions.last?.id.rawValue : nil)
    }

    // MARK: Submissions

    public func beginSubmission(_ submission: SubmissionRecord) async throws -> SubmissionRecord {
        guard submission.count >= 0 else {
            throw GridError.invalidArgument("count is \(submission.count); it must not be negative", backend: "dynamodb")
        }
        let session = submission.session
        let sessionKey = D.key(session)
        let submissionKey = D.key(session, submission: submission.key)
        let resource = "submission \(submission.key) of session \(session)"
        var round = 0
        while true {
            round += 1
            let items = try await batchGetItems([sessionKey, submissionKey])
            if let stored = items.first(where: { D.string($0, "pk") == D.submissionPartition(session) }) {
                return try D.submission(stored)
            }
            guard let sessionItem = items.first(where: { D.string($0, "pk") == D.sessionsPartition }) else {
                throw GridError.notFound("session '\(session)' does not exist", backend: "dynamodb")
            }
            let record = try D.session(sessionItem)
            guard !record.cancelled else {
                throw GridError(.conflict, "session '\(session)' was cancelled; it takes no more tasks", backend: "dynamodb")
            }
            var stored = submission
            stored.first = record.taskCount
            var updatedSession = sessionItem
            updatedSession["count"] = D.n(record.taskCount + submission.count)
            var written = [updatedSession, D.item(stored)]
            var writes: [JSON] = [
                [
                    "Update": [
                        "TableName": .string(table), "Key": .object(sessionKey), "UpdateExpression": "SET #count = :next",
                        "ConditionExpression": "#count = :count AND #cancelled = :false",
                        "ExpressionAttributeNames": ["#count": "count", "#cancelled": "cancelled"],
                        "ExpressionAttributeValues": [
                            ":next": D.n(record.taskCount + submission.count), ":count": D.n(record.taskCount), ":false": D.bool(false),
                        ],
                    ]
                ],
                ["Put": ["TableName": .string(table), "Item": .object(D.item(stored)), "ConditionExpression": "attribute_not_exists(pk)"]],
            ]
            if stored.state.isActive {
                writes.append(["Put": ["TableName": .string(table), "Item": .object(D.openMarker(stored))]])
                written.append(D.openMarker(stored))
            }
            do {
                // Safe to send again: a second send after a first that took effect is cancelled by
                // its conditions, and the next round reads the submission it stored.
                _ = try await call("TransactWriteItems", ["TransactItems": .array(writes)], resource: resource)
                for item in written { meterWrite(item: item, transactional: true) }
                return stored
            } catch let error as GridError where Self.transactionCanceled(error) {
                for item in written { meterWrite(item: item, transactional: true) }
                guard round < Self.reservationRounds else {
                    throw GridError.unavailable(
                        "beginning \(resource) lost \(round) races for the session's task count; try again", backend: "dynamodb", underlying: error)
                }
                try await Task.sleep(for: client.retry.backoff(retry: Swift.min(round, 6), random: Double.random(in: 0..<1)))
            }
        }
    }

    public func updateSubmission(_ submission: SubmissionRecord, expectedVersion: Int) async throws -> Bool {
        let key = D.key(submission.session, submission: submission.key)
        let resource = "submission \(submission.key) of session \(submission.session)"
        do {
            let answer = try await call(
                "UpdateItem",
                [
                    "Key": .object(key), "UpdateExpression": "SET #sent = :sent, #st = :st, #ver = :ver, #upd = :upd",
                    "ConditionExpression": "attribute_exists(pk) AND #ver = :expected",
                    "ExpressionAttributeNames": ["#sent": "sent", "#st": "st", "#ver": "ver", "#upd": "upd"],
                    "ExpressionAttributeValues": [
                        ":sent": D.n(submission.sent), ":st": D.s(submission.state.rawValue), ":ver": D.n(submission.version),
                        ":upd": D.n(submission.updatedAt), ":expected": D.n(expectedVersion),
                    ],
                    "ReturnValues": "ALL_OLD",
                ], resource: resource)
            let old = try D.submission(answer["Attributes"]?.object ?? [:])
            var new = old
            new.sent = submission.sent
            new.state = submission.state
            new.version = submission.version
            new.updatedAt = submission.updatedAt
            meterWrite(item: D.item(new))
            try await keepOpenMarker(of: new, wasActive: old.state.isActive)
            return true
        } catch let error as GridError where Self.conditionFailed(error) {
            meterWrite(item: nil)
            // The same update sent again after a lost reply finds the submission as it left it: that
            // is this update, applied (and its marker may still have to go).
            guard let item = try await getItem(key, resource: resource), let stored = try? D.submission(item),
                stored.version == submission.version && stored.sent == submission.sent && stored.state == submission.state
                    && stored.updatedAt == submission.updatedAt
            else { return false }
            try await keepOpenMarker(of: stored, wasActive: true)
            return true
        }
    }

    /// How many times ``beginSubmission(_:)`` reads the session's count again after a concurrent
    /// reservation moved it, before giving up as unavailable.
    private static let reservationRounds = 50

    /// Puts the open marker of a submission that became active, deletes that of one that stopped
    /// being active (deleting an absent marker is harmless, so `wasActive` may err on `true`).
    private func keepOpenMarker(of submission: SubmissionRecord, wasActive: Bool) async throws {
        let resource = "open marker of submission \(submission.key) of session \(submission.session)"
        if submission.state.isActive && !wasActive {
            let marker = D.openMarker(submission)
            _ = try await call("PutItem", ["Item": .object(marker)], resource: resource)
            meterWrite(item: marker)
        } else if !submission.state.isActive && wasActive {
            let key = D.openMarkerKey(submission.session, submission.key, created: submission.createdAt)
            _ = try await call("DeleteItem", ["Key": .object(key)], resource: resource)
            meterWrite(item: nil)
        }
    }

    /// Reads the open markers created before `date`, then the submissions they name (consistently);
    /// deletes the markers whose submission is gone or no longer active.
    public func stalledSubmissions(before date: Date, limit: Int) async throws -> [SubmissionRecord] {
        guard limit > 0 else { return [] }
        let markers = try await query(
            index: nil, condition: "#pk = :pk AND #sk < :bound", names: ["#pk": "pk", "#sk": "sk"],
            values: [":pk": D.s(D.openSubmissionsPartition), ":bound": D.s(D.openMarkerBound(before: date))], limit: Int.max)
        guard !markers.isEmpty else { return [] }
        var keys: [String: Item] = [:]
        for marker in markers {
            if let key = D.markedSubmission(marker) { keys[Self.keyText(key)] = key }
        }
        let records = try await batchGetItems(Array(keys.values)).compactMap { try? D.submission($0) }
        let active = Set(records.filter(\.state.isActive).map { Self.keyText(D.key($0.session, submission: $0.key)) })
        let garbage = markers.filter { marker in D.markedSubmission(marker).map { !active.contains(Self.keyText($0)) } ?? true }
        try await batchWrite(garbage.map { ["DeleteRequest": ["Key": .object(D.itemKey($0))]] })
        for _ in garbage { meterWrite(item: nil) }
        let stalled = records.filter { $0.isStalled(before: date) }
        return Array(stalled.sorted { ($0.updatedAt, $0.session, $0.key) < ($1.updatedAt, $1.session, $1.key) }.prefix(limit))
    }

    // MARK: Sessions, continued

    public func cancelSession(_ id: SessionID, at: Date) async throws -> CancelCounts {
        do {
            _ = try await call(
                "UpdateItem",
                [
                    "Key": .object(D.key(id)), "UpdateExpression": "SET #cancelled = :true", "ConditionExpression": "attribute_exists(pk)",
                    "ExpressionAttributeNames": ["#cancelled": "cancelled"], "ExpressionAttributeValues": [":true": D.bool(true)],
                ], resource: "session \(id)")
            meterWrite(item: nil)
        } catch let error as GridError where Self.conditionFailed(error) {
            throw GridError.notFound("session '\(id)' does not exist", backend: "dynamodb")
        }
        var counts = CancelCounts()
        try await forEachPage(id, states: [.pending, .processing]) { records in
            let cancelled = try await cancel(records.map(\.id), at: at)
            counts.pending += cancelled.pending
            counts.processing += cancelled.processing
        }
        return counts
    }

    /// Removes a session's submissions (and their open markers), all of its task records, whatever
    /// their states, and its record, and returns how many task records were removed. The session's
    /// record goes last, so a deletion that failed half-way can be repeated.
    ///
    /// - Throws: ``GridKernel/GridError/Code/notFound`` when the session does not exist;
    ///   ``GridKernel/GridError/Code/unavailable``.
    public func deleteSession(_ id: SessionID) async throws -> Int {
        _ = try await session(id)
        let submissions = try await query(
            index: nil, condition: "#pk = :pk", names: ["#pk": "pk"], values: [":pk": D.s(D.submissionPartition(id))], limit: Int.max)
        // Markers first: a marker whose submission is gone is garbage to stalledSubmissions anyway.
        let markers = submissions.compactMap { try? D.submission($0) }.map { D.openMarkerKey($0.session, $0.key, created: $0.createdAt) }
        for keys in [markers, submissions.map(D.itemKey)] where !keys.isEmpty {
            try await batchWrite(keys.map { ["DeleteRequest": ["Key": .object($0)]] })
            for _ in keys { meterWrite(item: nil) }
        }
        var removed = 0
        try await forEachPage(id, states: nil) { records in
            try await batchWrite(records.map { ["DeleteRequest": ["Key": .object(D.key($0.id, shards: configuration.taskShards))]] })
            for record in records { meterWrite(item: nil, indexed: record.completionSequence != nil) }
            removed += records.count
        }
        // The counters after the tasks: no transition can move them once the tasks are gone.
        let counters = try await query(
            index: nil, condition: "#pk = :pk", names: ["#pk": "pk"], values: [":pk": D.s(D.countersPartition(id))], limit: Int.max)
        try await batchWrite(counters.map { ["DeleteRequest": ["Key": .object(D.itemKey($0))]] })
        for _ in counters { meterWrite(item: nil) }
        _ = try await call("DeleteItem", ["Key": .object(D.key(id))], resource: "session \(id)")
        meterWrite(item: nil)
        return removed
    }

    /// Runs `body` on each page of the session's tasks in the given states (all with `nil`), shard by
    /// shard, following `LastEvaluatedKey` (so a record that `body` changed is not read again).
    func forEachPage(_ session: SessionID, states: Set<TaskState>?, _ body: ([TaskRecord]) async throws -> Void) async throws {
        var names = ["#pk": "pk"]
        var values: Item = [:]
        var filter: String?
        if let states {
            names["#st"] = "st"
            let placeholders = states.sorted { $0.rawValue < $1.rawValue }.enumerated().map { offset, state in
                values[":st\(offset)"] = D.s(state.rawValue)
                return ":st\(offset)"
            }
            filter = "#st IN (\(placeholders.joined(separator: ", ")))"
        }
        for shard in 0..<configuration.taskShards {
            values[":pk"] = D.s(D.taskPartition(session, shard: shard))
            var start: JSON?
            repeat {
                let page = try await queryPage(
                    index: nil, condition: "#pk = :pk", names: names, values: values, filter: filter, limit: 1_000, start: start)
                let records = try page.items.map(D.task)
                if !records.isEmpty { try await body(records) }
                start = page.lastKey
            } while start != nil
        }
    }

    // MARK: Creating and reading tasks

    /// Puts each task on the condition that it does not exist, in transactions with the counters
    /// of the tasks created (see ``transition(_:absent:numbering:rule:)``): a task that exists is left
    /// as it is and not counted. Nothing is read first; a repeated creation costs one cancelled
    /// transaction per 99 tasks, whose reasons name the tasks that exist.
    public func createTasks(_ tasks: [TaskRecord]) async throws {
        var unique: [TaskID: TaskRecord] = [:]
        for task in tasks where unique[task.id] == nil { unique[task.id] = task }
        // Records created already processing (a restore) get their lease bucket first, as claims do.
        for (expiry, leased) in Dictionary(grouping: unique.values.filter { $0.state == .processing }, by: { $0.leaseExpiry }) {
            if let expiry { try await writeLeaseBucket(leased.map(\.id), expiry: expiry) }
        }
        _ = try await transition(Array(unique.keys), absent: true, numbering: false) { id, old in
            guard old == nil, var record = unique[id] else { return nil }
            record.completionSequence = nil
            return record
        }
    }

    public func task(_ id: TaskID) async throws -> TaskRecord {
        guard let item = try await getItem(D.key(id, shards: configuration.taskShards), resource: "task \(id)") else { throw GridError.notFound("task '\(id)' does not exist", backend: "dynamodb") }
        return try D.task(item)
    }

    /// Reads the tasks with consistent `BatchGetItem`s (100 keys a call, in parallel).
    public func tasks(_ ids: [TaskID]) async throws -> [TaskRecord] {
        try await batchGetItems(Set(ids).map { D.key($0, shards: configuration.taskShards) }).map(D.task)
    }

    /// Sums the session's sequence item and counter shards: one consistent query of
    /// ``DynamoDBConfiguration/counterShards`` + 1 small items, whatever the number of tasks. A
    /// session without a sequence item (created by an earlier version, not yet upgraded) is counted by
    /// querying its tasks, as that version did.
    public func counts(_ session: SessionID) async throws -> StateCounts {
        let counters = try await query(
            index: nil, condition: "#pk = :pk", names: ["#pk": "pk"], values: [":pk": D.s(D.countersPartition(session))], limit: Int.max)
        guard counters.contains(where: { D.string($0, "sk") == D.sequenceSortKey }) else { return try await countTasks(session) }
        return D.counts(counters)
    }

    /// Counts a session's tasks by querying every one of them (`st` only, eventually consistent).
    func countTasks(_ session: SessionID) async throws -> StateCounts {
        let perShard = try await (0..<configuration.taskShards).concurrentMap(width: 8) { shard -> StateCounts in
            var counts = StateCounts()
            var start: JSON?
            repeat {
                let page = try await queryPage(
                    index: nil, condition: "#pk = :pk", names: ["#pk": "pk", "#st": "st"], values: [":pk": D.s(D.taskPartition(session, shard: shard))],
                    projection: "#st", limit: nil, start: start, consistent: false)
                for item in page.items {
                    if let state = D.string(item, "st").flatMap(TaskState.init(rawValue:)) { counts[state] += 1 }
                }
                start = page.lastKey
            } while start != nil
            return counts
        }
        var counts = StateCounts()
        for shard in perShard {
            for state in TaskState.allCases { counts[state] += shard[state] }
        }
        return counts
    }

    /// Merges the session's shards in index order: each round reads a window of every shard after
    /// the cursor; records up to the smallest point a shard stopped at are complete and in order.
    public func tasks(_ session: SessionID, state: TaskState, after cursor: String?, limit: Int) async throws -> Page<TaskRecord> {
        try Self.check(limit: limit)
        var after = try IntegerCursor.parse(cursor, backend: "dynamodb")
        let shards = configuration.taskShards
        // Items each shard evaluates per round: its share of the page, doubled while the state is rare.
        var window = Swift.min(1_000, (limit + 1 + shards - 1) / shards + 1)
        var records: [TaskRecord] = []
        while records.count <= limit {
            let start = after
            let size = window
            let rounds = try await (0..<shards).concurrentMap(width: 8) { shard -> (records: [TaskRecord], stoppedAt: Int?) in
                var values: Item = [":pk": D.s(D.taskPartition(session, shard: shard)), ":st": D.s(state.rawValue)]
                if let start { values[":after"] = D.s(D.sortKey(start)) }
                let page = try await queryPage(
                    index: nil, condition: start == nil ? "#pk = :pk" : "#pk = :pk AND #sk > :after", names: ["#pk": "pk", "#sk": "sk", "#st": "st"],
                    values: values, filter: "#st = :st", limit: size, start: nil)
                let stoppedAt = page.lastKey.flatMap { $0["sk"]?["S"]?.string }.flatMap { Int($0) }
                return (try page.items.map(D.task), stoppedAt)
            }
            let complete = rounds.compactMap(\.stoppedAt).min()
            records += rounds.flatMap(\.records).filter { complete == nil || $0.id.index <= complete! }.sorted { $0.id.index < $1.id.index }
            guard let complete else { break }
            after = complete
            window = Swift.min(1_000, window * 2)
        }
        let page = Array(records.prefix(limit))
        return Page(items: page, next: records.count > limit ? page.last.map { IntegerCursor.make($0.id.index) } : nil)
    }

    /// Queries the `completions` index for numbers above `sequence` and keeps the run that follows
    /// `sequence` without a gap (the index is eventually consistent: a number it does not show yet
    /// ends the answer), while reading the session's sequence item: a session without one (deleted,
    /// or made by an earlier version and not upgraded) has no completion order.
    public func completions(_ session: SessionID, after sequence: Int, limit: Int) async throws -> [TaskRecord] {
        try CompletionPolling.check(after: sequence, limit: limit, backend: "dynamodb")
        async let marker = getItem(D.sequenceKey(session), resource: "completion sequence of session \(session)")
        let page = try await queryPage(
            index: D.completionIndex, condition: "#sid = :sid AND #cseq > :after", names: ["#sid": "sid", "#cseq": "cseq"],
            values: [":sid": D.s(session.rawValue), ":after": D.n(sequence)], limit: Swift.min(limit, 1_000), start: nil)
        guard try await marker != nil else { return [] }
        var run: [TaskRecord] = []
        for item in page.items {
            let record = try D.task(item)
            guard record.completionSequence == sequence + run.count + 1 else { break }
            run.append(record)
        }
        return run
    }

    /// Reads the session's last completion number (its sequence item's `n`, one consistent
    /// `GetItem`) after 5 ms, then at intervals growing to ``completionPolling``'s upper bound, until
    /// it passes `sequence` or `timeout` has passed. DynamoDB tells no one of a write, so this polls:
    /// a waiter costs at most 10 reads a second (one read unit each). A session without a sequence
    /// item is looked at through ``counts(_:)``.
    ///
    /// - Throws: `CancellationError` when cancelled; ``GridKernel/GridError/Code/unavailable``.
    public func waitForCompletions(_ session: SessionID, after sequence: Int, timeout: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var pause = Self.completionPolling.lowerBound
        while true {
            let last: Int
            if let item = try await getItem(D.sequenceKey(session), resource: "completion sequence of session \(session)") {
                last = D.int(item, "n") ?? 0
            } else {
                last = try await counts(session).terminal
            }
            if last > sequence { return true }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { return false }
            try await Task.sleep(for: Swift.min(pause, remaining))
            pause = Swift.min(pause * 2, Self.completionPolling.upperBound)
        }
    }

    /// The first and the longest pause of ``waitForCompletions(_:after:timeout:)`` between two reads.
    public static let completionPolling: ClosedRange<Duration> = .milliseconds(5) ... .milliseconds(100)

    /// Reads the lease buckets that expired before `now` (shard by shard, oldest first), then the
    /// tasks they name (consistently); returns those still processing with an expired lease, and
    /// deletes the buckets that name none (their tasks finished, were renewed under a newer bucket, or
    /// never were claimed).
    public func expiredLeases(now: Date, limit: Int) async throws -> [TaskRecord] {
        guard limit > 0 else { return [] }
        let bound = D.bucketSortKey(expiry: now, suffix: "")
        let buckets = try await (0..<configuration.leaseShards).concurrentMap(width: 8) { shard in
            try await query(
                index: nil, condition: "#pk = :pk AND #sk < :now", names: ["#pk": "pk", "#sk": "sk"],
                values: [":pk": D.s(D.leasePartition(shard: shard)), ":now": D.s(bound)], limit: Swift.max(limit, 100))
        }.joined().map { (key: D.itemKey($0), tasks: D.bucketTasks($0)) }
        guard !buckets.isEmpty else { return [] }
        let ids = Set(buckets.flatMap(\.tasks))
        let records = try await batchGetItems(ids.map { D.key($0, shards: configuration.taskShards) }).map(D.task)
        let expired = Dictionary(
            records.filter { $0.state == .processing && ($0.leaseExpiry.map { $0 < now } ?? false) }.map { ($0.id, $0) }, uniquingKeysWith: { $1 })
        let garbage = buckets.filter { !$0.tasks.contains { expired[$0] != nil } }
        try await batchWrite(garbage.map { ["DeleteRequest": ["Key": .object($0.key)]] })
        for _ in garbage { meterWrite(item: nil) }
        return Array(expired.values.sorted { ($0.leaseExpiry ?? now, $0.id) < ($1.leaseExpiry ?? now, $1.id) }.prefix(limit))
    }

    /// Writes a lease bucket naming `ids` with `expiry`, before their leases are written, so that every
    /// processing task is named by a bucket of its lease expiry, whatever happens next.
    private func writeLeaseBucket(_ ids: [TaskID], expiry: Date) async throws {
        guard !ids.isEmpty else { return }
        let item = D.bucket(ids, expiry: expiry, shard: Int.random(in: 0..<configuration.leaseShards))
        _ = try await call("PutItem", ["Item": .object(item)], resource: "lease bucket of \(ids.count) task(s)")
        meterWrite(item: item)
    }

    // MARK: Transitions

    /// Claims by the kernel's rule in transactions (see ``transition(_:absent:numbering:rule:)``),
    /// after writing the lease bucket. A claim sent again by the same call finds the tasks held by
    /// `owner` under `token` and wins them unchanged.
    public func claim(_ ids: [TaskID], owner: AgentID, token: ClaimToken, leaseExpiry: Date, now: Date) async throws -> [TaskRecord] {
        let unique = Array(Set(ids))
        try await writeLeaseBucket(unique, expiry: leaseExpiry)
        return try await transition(unique, numbering: false) { _, old in
            old?.claimed(by: owner, token: token, leaseExpiry: leaseExpiry, now: now)
        }.values.map(\.new)
    }

    /// Moves each lease with a conditional `UpdateItem` (no counter moves), after writing the lease
    /// bucket; `v` grows, so a transition computed from the record before the heartbeat (an expiry)
    /// fails its condition and is computed again.
    public func heartbeat(_ attempts: [TaskAttempt], owner: AgentID, leaseExpiry: Date) async throws -> Set<TaskID> {
        let unique = Dictionary(attempts.map { ($0.id, $0.attempt) }, uniquingKeysWith: { $1 })
        try await writeLeaseBucket(Array(unique.keys), expiry: leaseExpiry)
        let held = try await Array(unique).concurrentMap(width: configuration.concurrency) { id, attempt -> TaskID? in
            try await update(id, set: ["lease": D.n(leaseExpiry)], add: ["v": D.n(1)], when: .held(by: owner, attempt: attempt)) != nil ? id : nil
        }
        return Set(held.compactMap { $0 })
    }

    public func finish(_ completions: [TaskCompletion], owner: AgentID, at: Date) async throws -> Set<TaskID> {
        var unique: [TaskID: TaskCompletion] = [:]
        for completion in completions where unique[completion.id] == nil { unique[completion.id] = completion }
        return Set(
            try await transition(Array(unique.keys), numbering: true) { id, old in
                unique[id].flatMap { old?.finished(by: owner, attempt: $0.attempt, output: $0.output, at: at) }
            }.keys)
    }

    public func fail(_ failures: [TaskFailure], owner: AgentID, at: Date) async throws -> [TaskID: TaskState] {
        var unique: [TaskID: TaskFailure] = [:]
        for failure in failures where unique[failure.id] == nil { unique[failure.id] = failure }
        return try await transition(Array(unique.keys), numbering: true) { id, old in
            unique[id].flatMap { old?.failed(by: owner, attempt: $0.attempt, message: $0.message, retryable: $0.retryable, at: at) }
        }.mapValues(\.new.state)
    }

    public func release(_ attempts: [TaskAttempt], owner: AgentID) async throws -> Set<TaskID> {
        let unique = Dictionary(attempts.map { ($0.id, $0.attempt) }, uniquingKeysWith: { $1 })
        return Set(
            try await transition(Array(unique.keys), numbering: false) { id, old in
                unique[id].flatMap { old?.released(by: owner, attempt: $0) }
            }.keys)
    }

    public func expire(_ ids: [TaskID], now: Date) async throws -> [TaskID: TaskState] {
        try await transition(Array(Set(ids)), numbering: true) { _, old in old?.expired(now: now) }.mapValues(\.new.state)
    }

    public func forceFail(_ failures: [TaskFailure], at: Date) async throws -> Set<TaskID> {
        var unique: [TaskID: TaskFailure] = [:]
        for failure in failures where unique[failure.id] == nil { unique[failure.id] = failure }
        return Set(
            try await transition(Array(unique.keys), numbering: true) { id, old in
                unique[id].flatMap { old?.forceFailed(message: $0.message, at: at) }
            }.keys)
    }

    public func cancel(_ ids: [TaskID], at: Date) async throws -> CancelCounts {
        let cancelled = try await transition(Array(Set(ids)), numbering: true) { _, old in old?.cancelled(at: at) }.values
        return CancelCounts(
            pending: cancelled.filter { $0.old?.state == .pending }.count, processing: cancelled.filter { $0.old?.state == .processing }.count)
    }

    /// The condition of a transition, besides the task's existence.
    private struct Guard: Sendable {
        var expression: String
        var names: [String: String]
        var values: Item

        init(_ expression: String, names: [String: String], values: Item) {
            self.expression = expression
            self.names = names
            self.values = values
        }

        /// The current attempt of `owner` (fencing). Items written before attempts were counted have
        /// none: they are attempt 0.
        static func held(by owner: AgentID, attempt: Int) -> Guard {
            let attemptCondition = attempt == 0 ? "(attribute_not_exists(#c_attempt) OR #c_attempt = :c_attempt)" : "#c_attempt = :c_attempt"
            return Guard(
                "#c_st = :c_processing AND #c_owner = :c_owner AND \(attemptCondition)",
                names: ["#c_st": "st", "#c_owner": "owner", "#c_attempt": "attempt"],
                values: [":c_processing": D.s(TaskState.processing.rawValue), ":c_owner": D.s(owner.rawValue), ":c_attempt": D.n(attempt)])
        }
    }

    // MARK: DynamoDB calls

    /// One conditional `UpdateItem` of a task; `nil` when the condition did not hold (or the task
    /// does not exist), else the returned attributes (`ALL_NEW` unless `returning` says otherwise).
    /// Meters the write units by the returned item's size (one when the condition failed).
    private func update(
        _ id: TaskID, set: Item, add: Item = [:], remove: [String] = [], when condition: Guard, returning: String = "ALL_NEW"
    ) async throws -> Item? {
        var names = condition.names
        var values = condition.values
        var clauses: [String] = []
        var assignments: [String] = []
        for (offset, (name, value)) in set.sorted(by: { $0.key < $1.key }).enumerated() {
            names["#s\(offset)"] = name
            values[":s\(offset)"] = value
            assignments.append("#s\(offset) = :s\(offset)")
        }
        if !assignments.isEmpty { clauses.append("SET " + assignments.joined(separator: ", ")) }
        if !add.isEmpty {
            clauses.append(
                "ADD "
                    + add.sorted(by: { $0.key < $1.key }).enumerated().map { offset, pair in
                        names["#a\(offset)"] = pair.key
                        values[":a\(offset)"] = pair.value
                        return "#a\(offset) :a\(offset)"
                    }.joined(separator: ", "))
        }
        if !remove.isEmpty {
            clauses.append(
                "REMOVE "
                    + remove.enumerated().map { offset, name in
                        names["#r\(offset)"] = name
                        return "#r\(offset)"
                    }.joined(separator: ", "))
        }
        do {
            let answer = try await call(
                "UpdateItem",
                [
                    "Key": .object(D.key(id, shards: configuration.taskShards)), "UpdateExpression": .string(clauses.joined(separator: " ")),
                    "ConditionExpression": .string("attribute_exists(pk) AND \(condition.expression)"), "ExpressionAttributeNames": .object(names.mapValues { .string($0) }),
                    "ExpressionAttributeValues": .object(values), "ReturnValues": .string(returning),
                ], resource: "task \(id)")
            let item = answer["Attributes"]?.object ?? [:]
            meterWrite(item: item)
            return item
        } catch let error as GridError where Self.conditionFailed(error) {
            meterWrite(item: nil)
            return nil
        }
    }

    /// Meters one write on the table: one unit per KiB of the item, at least one, twice that within a
    /// transaction; and as many on the `completions` index when the item is `indexed` there (a task
    /// numbered in the completion order, written or deleted).
    func meterWrite(item: Item?, transactional: Bool = false, indexed: Bool = false) {
        let kib = Swift.max(1, ((item.map(D.size) ?? 0) + 1_023) / 1_024)
        client.meter.addWriteUnits(table: Double(kib * (transactional ? 2 : 1)), indexes: indexed ? Double(kib) : 0)
    }

    /// Meters the write of an item on the `completions` index alone: one unit per KiB.
    func meterIndexWrite(item: Item) {
        client.meter.addWriteUnits(table: 0, indexes: Double(Swift.max(1, (D.size(item) + 1_023) / 1_024)))
    }

    func getItem(_ key: Item, resource: String) async throws -> Item? {
        let answer = try await call("GetItem", ["Key": .object(key), "ConsistentRead": true], resource: resource)
        return answer["Item"]?.object
    }

    /// The items of the given keys that exist (consistent reads, 100 keys a call, `UnprocessedKeys`
    /// read again), every attribute unless `projection` names some.
    func batchGetItems(_ keys: [Item], projection: String? = nil) async throws -> [Item] {
        let chunks = stride(from: 0, to: keys.count, by: 100).map { Array(keys[$0..<Swift.min($0 + 100, keys.count)]) }
        let found = try await chunks.concurrentMap(width: configuration.concurrency) { chunk -> [Item] in
            var read: [String: JSON] = ["Keys": .array(chunk.map { .object($0) }), "ConsistentRead": true]
            if let projection { read["ProjectionExpression"] = .string(projection) }
            var request: JSON = [table: .object(read)]
            var items: [Item] = []
            for attempt in 1...configuration.batchRetries {
                let answer = try await call("BatchGetItem", ["RequestItems": request], resource: "table \(table)")
                items += (answer["Responses"]?[table]?.array ?? []).map(\.object)
                guard let unprocessed = answer["UnprocessedKeys"], !unprocessed.object.isEmpty else { return items }
                request = unprocessed
                try await Task.sleep(for: client.retry.backoff(retry: attempt, random: Double.random(in: 0..<1)))
            }
            throw GridError.unavailable("BatchGetItem on \(table) kept leaving keys unprocessed (throttled)", backend: "dynamodb")
        }
        return found.flatMap { $0 }
    }

    /// Writes or deletes items, 25 a call, sending `UnprocessedItems` again with backoff.
    func batchWrite(_ requests: [JSON]) async throws {
        let chunks = stride(from: 0, to: requests.count, by: 25).map { Array(requests[$0..<Swift.min($0 + 25, requests.count)]) }
        _ = try await chunks.concurrentMap(width: configuration.concurrency) { chunk in
            var pending: JSON = [table: .array(chunk)]
            for attempt in 1...configuration.batchRetries {
                let answer = try await call("BatchWriteItem", ["RequestItems": pending], resource: "table \(table)")
                guard let unprocessed = answer["UnprocessedItems"], !(unprocessed[table]?.array ?? []).isEmpty else { return }
                pending = unprocessed
                try await Task.sleep(for: client.retry.backoff(retry: attempt, random: Double.random(in: 0..<1)))
            }
            throw GridError.unavailable("BatchWriteItem on \(table) kept leaving items unprocessed (throttled)", backend: "dynamodb")
        }
    }

    /// `pk|sk` of a key or item.
    private static func keyText(_ item: Item) -> String { "\(D.string(item, "pk") ?? "")|\(D.string(item, "sk") ?? "")" }

    /// Queries the table (`index` nil) or an index, following `LastEvaluatedKey` until `limit` items
    /// are read or the partition ends.
    func query(index: String?, condition: String, names: [String: String], values: Item, limit: Int) async throws -> [Item] {
        var items: [Item] = []
        var start: JSON?
        repeat {
            let page = try await queryPage(
                index: index, condition: condition, names: names, values: values, limit: Swift.min(limit - items.count, 1_000), start: start)
            items += page.items
            start = page.lastKey
        } while start != nil && items.count < limit
        return items
    }

    /// One page of a query: at most `limit` items evaluated (before `filter`), and where it stopped.
    private func queryPage(
        index: String?, condition: String, names: [String: String], values: Item, filter: String? = nil, projection: String? = nil, limit: Int?,
        start: JSON?, consistent: Bool = true
    ) async throws -> (items: [Item], lastKey: JSON?) {
        let expressions = condition + " " + (filter ?? "") + " " + (projection ?? "")
        var request: [String: JSON] = [
            "KeyConditionExpression": .string(condition),
            // DynamoDB refuses names and values the expressions do not use.
            "ExpressionAttributeNames": .object(names.filter { expressions.contains($0.key) }.mapValues { .string($0) }),
            "ExpressionAttributeValues": .object(values.filter { expressions.contains($0.key) }),
        ]
        // The table reads consistently (a cancel sees the tasks just created) unless told otherwise
        // (counts, half the read units); indexes cannot.
        if let index { request["IndexName"] = .string(index) } else if consistent { request["ConsistentRead"] = true }
        if let filter { request["FilterExpression"] = .string(filter) }
        if let projection { request["ProjectionExpression"] = .string(projection) }
        if let limit { request["Limit"] = .int(limit) }
        if let start { request["ExclusiveStartKey"] = start }
        let answer = try await call("Query", .object(request), resource: index.map { "index \($0) of \(table)" } ?? "table \(table)")
        return ((answer["Items"]?.array ?? []).map(\.object), answer["LastEvaluatedKey"])
    }

    /// One DynamoDB call on the table; the write capacity DynamoDB reports is metered too. A write
    /// that DynamoDB refused because a transaction on the same item was under way did nothing, so it
    /// is sent again, with backoff, as throttling is.
    func call(_ action: String, _ body: JSON, resource: String, repeatability: AWSRepeatability = .safe) async throws -> JSON {
        var request = body.object
        if !["BatchGetItem", "BatchWriteItem", "TransactWriteItems"].contains(action) { request["TableName"] = .string(table) }
        if ["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"].contains(action) {
            request["ReturnConsumedCapacity"] = "TOTAL"
        }
        var attempt = 0
        while true {
            attempt += 1
            let answer: JSON
            do {
                answer = try await client.json("DynamoDB_20120810", action, .object(request), resource: resource, repeatability: repeatability)
            } catch let error as GridError
                where (error.underlying as? AWSServiceError)?.code == "TransactionConflictException" && attempt < client.retry.maxAttempts
            {
                try await Task.sleep(for: client.retry.backoff(retry: attempt, random: Double.random(in: 0..<1)))
                continue
            }
            let consumed = answer["ConsumedCapacity"]
            for entry in consumed?.array ?? (consumed.map { [$0] } ?? []) {
                if let units = entry["CapacityUnits"], case .double(let value) = units {
                    client.meter.addReportedWriteUnits(value)
                } else if let units = entry["CapacityUnits"]?.int {
                    client.meter.addReportedWriteUnits(Double(units))
                }
            }
            return answer
        }
    }

    /// Whether a `TransactWriteItems` was cancelled (a condition failed, or a concurrent transaction
    /// on one of its items): nothing was written.
    static func transactionCanceled(_ error: GridError) -> Bool {
        let code = (error.underlying as? AWSServiceError)?.code
        return code == "TransactionCanceledException" || code == "TransactionConflictException"
    }

    private static func conditionFailed(_ error: GridError) -> Bool {
        (error.underlying as? AWSServiceError)?.code == "ConditionalCheckFailedException"
    }

    private static func check(limit: Int) throws {
        guard limit >= 1 else { throw GridError.invalidArgument("limit is \(limit); it must be at least 1", backend: "dynamodb") }
    }
}

/// Where and how the DynamoDB state store works, from `dynamodb://REGION/TABLE?endpoint=…`.
public struct DynamoDBConfiguration: Sendable, Hashable {
    /// The AWS region.
    public var region: String
    /// The table.
    public var table: String
    /// Partitions each session's tasks are spread over (a task's is its index mod this).
    public var taskShards: Int
    /// Partitions the lease buckets (which tasks hold a lease until when) are spread over.
    public var leaseShards: Int
    /// Counter items per session besides its sequence item: transitions that make no task terminal
    /// move one picked at random per call, so that concurrent callers seldom write the same item;
    /// ``DynamoDBStateStore/counts(_:)`` reads them all (one query).
    public var counterShards: Int
    /// Calls in flight within one batch operation (heartbeats, transactions that number no task).
    public var concurrency: Int
    /// How often `UnprocessedItems` / `UnprocessedKeys` are sent again.
    public var batchRetries: Int

    /// Creates a configuration.
    public init(
        region: String, table: String, taskShards: Int = 4, leaseShards: Int = 8, counterShards: Int = 16, concurrency: Int = 8, batchRetries: Int = 10
    ) {
        self.region = region
        self.table = table
        self.taskShards = taskShards
        self.leaseShards = leaseShards
        self.counterShards = Swift.max(1, counterShards)
        self.concurrency = concurrency
        self.batchRetries = batchRetries
    }
}
