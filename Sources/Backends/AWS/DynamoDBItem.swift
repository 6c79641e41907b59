import Foundation
import GridKernel

/// The DynamoDB table layout of the state store: attribute names, key values and the codec between
/// ``GridKernel/TaskRecord`` / ``GridKernel/SessionRecord`` / ``GridKernel/SubmissionRecord`` and
/// DynamoDB items.
///
/// One table, partition key `pk` and sort key `sk` (both strings), and one sparse global secondary
/// index, `completions` (`sid`, `cseq`), holding the terminal tasks in completion order:
///
/// | item | `pk` | `sk` | other attributes |
/// |---|---|---|---|
/// | session | `session` | `<session>` | `sid`, `prio`, `maxr`, `tmo`, `labels`, `created`, `count`, `cancelled` |
/// | task | `t#<session>#<shard>` | `<index>`, 12 digits | `sid`, `idx`, `st`, `owner`, `lease`, `retries`, `maxr`, `prio`, `tmo`, `submitted`, `started`, `completed`, `err`, `out`, `attempt`, `ctok`, `cseq` (completion number, once terminal), `v` (writes so far) |
/// | lease bucket | `lease#<shard>` | `<expiry in ms>`, 15 digits, `#<random>` | `tasks`: the tasks leased with that expiry, `<session>_<index>,<index>…` per session, sessions separated by spaces |
/// | submission | `sub#<session>` | `<key>` | `sid`, `skey`, `first`, `count`, `sent`, `st`, `ver`, `created`, `upd` |
/// | sequence | `c#<session>` | `seq` | `n` (the last completion number), `c_<state>`: counters per state |
/// | counter shard | `c#<session>` | `shard#<k>` | `c_<state>`: counters per state, moved by `ADD` |
/// | open submission | `submissions#open` | `<created in ms>`, 15 digits, `#<session> <key>` | `sid`, `skey`: a marker that exists while the submission is open or repairing |
///
/// A session's tasks are spread over ``DynamoDBConfiguration/taskShards`` partitions (shard = index
/// mod shards), each in index order, so listing and counting a session are queries of the table. A
/// claim or a heartbeat first writes one lease bucket for all its tasks (spread over
/// ``DynamoDBConfiguration/leaseShards`` partitions), so the reaper finds expired leases by querying
/// buckets older than now, without an index that every transition would also write. A task that
/// runs once therefore costs three write units (create, claim, finish) plus its share of one bucket
/// per claim batch.
///
/// A task's `attempt` counts its claims (absent on items written before attempts existed: 0) and
/// `ctok` is the token of the claim that started the current attempt. A session's submissions live
/// in a partition of their own, so deleting a session finds them with one query; the markers of the
/// open ones share one small partition, in creation order, so the reaper finds stalled submissions
/// without reading the complete ones.
enum DynamoDBItem {
    typealias Item = [String: JSON]

    static func s(_ value: String) -> JSON { ["S": .string(value)] }
    static func n(_ value: Int) -> JSON { ["N": .string(String(value))] }
    static func n(_ date: Date) -> JSON { ["N": .string(String(date.timeIntervalSince1970))] }
    static func b(_ bytes: [UInt8]) -> JSON { ["B": .string(Data(bytes).base64EncodedString())] }
    static func bool(_ value: Bool) -> JSON { ["BOOL": .bool(value)] }

    /// The partition key of the sessions.
    static let sessionsPartition = "session"

    /// The key of a session item.
    static func key(_ session: SessionID) -> Item { ["pk": s(sessionsPartition), "sk": s(session.rawValue)] }

    /// The key of a task item.
    static func key(_ task: TaskID, shards: Int) -> Item {
        ["pk": s(taskPartition(task.session, shard: task.index % max(1, shards))), "sk": s(sortKey(task.index))]
    }

    /// The partition of one shard of a session's tasks.
    static func taskPartition(_ session: SessionID, shard: Int) -> String { "t#\(session.rawValue)#\(shard)" }

    /// A task's sort key: its index, zero-padded so that the string order is the index order.
    static func sortKey(_ index: Int) -> String {
        let digits = String(index)
        return String(repeating: "0", count: max(0, 12 - digits.count)) + digits
    }

    /// The partition of one shard of the lease buckets.
    static func leasePartition(shard: Int) -> String { "lease#\(shard)" }

    /// A bucket's sort key: its expiry in milliseconds, zero-padded so that the string order is the
    /// time order, then `#` and `suffix`.
    static func bucketSortKey(expiry: Date, suffix: String) -> String {
        let digits = String(max(0, Int((expiry.timeIntervalSince1970 * 1_000).rounded(.up))))
        return String(repeating: "0", count: max(0, 15 - digits.count)) + digits + "#" + suffix
    }

    /// The item of a lease bucket naming `tasks`, which hold leases until `expiry`.
    static func bucket(_ tasks: [TaskID], expiry: Date, shard: Int) -> Item {
        let groups = Dictionary(grouping: tasks, by: \.session).sorted { $0.key < $1.key }.map { session, ids in
            "\(session.rawValue)_" + ids.map { String($0.index) }.sorted().joined(separator: ",")
        }
        return [
            "pk": s(leasePartition(shard: shard)), "sk": s(bucketSortKey(expiry: expiry, suffix: UUID().uuidString.lowercased())),
            "tasks": s(groups.joined(separator: " ")),
        ]
    }

    /// The tasks a lease bucket names (malformed entries are skipped).
    static func bucketTasks(_ item: Item) -> [TaskID] {
        (string(item, "tasks") ?? "").split(separator: " ").flatMap { group -> [TaskID] in
            guard let underscore = group.firstIndex(of: "_"), let session = try? SessionID(String(group[..<underscore])) else { return [] }
            return group[group.index(after: underscore)...].split(separator: ",").compactMap { Int($0) }.map { TaskID(session: session, index: $0) }
        }
    }

    // MARK: Counters and completion order

    /// The partition of a session's counters: its sequence item and its counter shards.
    static func countersPartition(_ session: SessionID) -> String { "c#\(session.rawValue)" }

    /// The key of a session's sequence item: `n`, the last completion number given (its count of
    /// terminal tasks), and counters per state like a shard's. A session without one was created by
    /// a version that kept no counters (see ``DynamoDBStateStore/upgrade()``).
    static func sequenceKey(_ session: SessionID) -> Item { ["pk": s(countersPartition(session)), "sk": s(sequenceSortKey)] }

    /// The sort key of the sequence item.
    static let sequenceSortKey = "seq"

    /// The key of one counter shard of a session: counters per state, moved with `ADD`.
    static func counterShardKey(_ session: SessionID, shard: Int) -> Item {
        ["pk": s(countersPartition(session)), "sk": s("shard#\(shard)")]
    }

    /// The counter attribute of a state.
    static func counterAttribute(_ state: TaskState) -> String { "c_\(state.rawValue)" }

    /// The sum of the counters of a session's sequence item and shards.
    static func counts(_ items: [Item]) -> StateCounts {
        var counts = StateCounts()
        for item in items {
            for state in TaskState.allCases {
                if let count = int(item, counterAttribute(state)), count != 0 { counts[state] += count }
            }
        }
        return counts
    }

    /// The sequence item of a new session (or of one whose tasks were just counted): `n` and counters.
    static func sequenceItem(_ session: SessionID, counts: StateCounts = StateCounts(), last: Int = 0) -> Item {
        var item = sequenceKey(session)
        item["n"] = n(last)
        for state in TaskState.allCases { item[counterAttribute(state)] = n(counts[state]) }
        return item
    }

    /// The global secondary index of the completion order: partition `sid`, sort `cseq`, every
    /// attribute projected. Sparse: only terminal tasks carry `cseq`.
    static let completionIndex = "completions"

    /// Every attribute of a task item the store writes (`v` counts the writes of the item, for
    /// conditional replacement); a replacement keeps the attributes it does not know (an operator's
    /// time-to-live attribute).
    static let taskAttributes: Set<String> = [
        "pk", "sk", "sid", "idx", "st", "owner", "lease", "retries", "maxr", "prio", "tmo", "submitted", "started", "completed", "err", "out",
        "out_empty", "attempt", "ctok", "cseq", "v",
    ]

    /// The key of an item (`pk` and `sk`).
    static func itemKey(_ item: Item) -> Item { ["pk": item["pk"] ?? s(""), "sk": item["sk"] ?? s("")] }


    /// The size DynamoDB bills an item by: each attribute's name plus its value (strings and binary
    /// by length, numbers by about one byte per two digits plus one, booleans one byte).
    static func size(_ item: Item) -> Int {
        item.reduce(0) { total, attribute in
            let value = attribute.value
            let bytes: Int
            if let text = value["S"]?.string {
                bytes = text.utf8.count
            } else if let number = value["N"]?.string {
                bytes = (number.filter(\.isNumber).count + 1) / 2 + 1
            } else if let binary = value["B"]?.string {
                bytes = binary.utf8.count / 4 * 3
            } else {
                bytes = 1
            }
            return total + attribute.key.utf8.count + bytes
        }
    }

    // MARK: Reading values

    static func string(_ item: Item, _ name: String) -> String? { item[name]?["S"]?.string }
    static func int(_ item: Item, _ name: String) -> Int? { item[name]?["N"]?.string.flatMap { Int($0) ?? Double($0).map { Int($0) } } }
    static func date(_ item: Item, _ name: String) -> Date? {
        item[name]?["N"]?.string.flatMap(Double.init).map { Date(timeIntervalSince1970: $0) }
    }
    static func bytes(_ item: Item, _ name: String) -> [UInt8]? {
        item[name]?["B"]?.string.flatMap { Data(base64Encoded: $0) }.map(Array.init)
    }

    // MARK: Tasks

    /// The item of a new task record, with its keys.
    static func item(_ task: TaskRecord, configuration: DynamoDBConfiguration) -> Item {
        var item: Item = key(task.id, shards: configuration.taskShards).merging([
            "sid": s(task.id.session.rawValue), "idx": n(task.id.index), "st": s(task.state.rawValue),
            "retries": n(task.retries), "maxr": n(task.maxRetries), "prio": n(task.priority), "submitted": n(task.submittedAt),
            "attempt": n(task.attempt),
        ]) { $1 }
        if let token = task.claimToken { item["ctok"] = s(token.rawValue) }
        if let owner = task.owner { item["owner"] = s(owner.rawValue) }
        if let lease = task.leaseExpiry { item["lease"] = n(lease) }
        if let timeout = task.timeout { item["tmo"] = ["N": .string(String(timeout.timeInterval))] }
        if let started = task.startedAt { item["started"] = n(started) }
        if let completed = task.completedAt { item["completed"] = n(completed) }
        if let error = task.lastError { item["err"] = s(error) }
        if let output = task.output { item.merge(outputAttributes(output)) { $1 } }
        if let sequence = task.completionSequence { item["cseq"] = n(sequence) }
        return item
    }

    /// `out` holds a non-empty output; `out_empty` marks an empty one (`nil` has neither).
    static func outputAttributes(_ output: [UInt8]) -> Item {
        output.isEmpty ? ["out_empty": bool(true)] : ["out": b(output)]
    }

    /// Reads a task item.
    ///
    /// - Throws: ``GridKernel/GridError/Code/internalError`` for an item that is not a task.
    static func task(_ item: Item) throws -> TaskRecord {
        guard let sid = string(item, "sid").flatMap({ try? SessionID($0) }), let index = int(item, "idx"),
            let state = string(item, "st").flatMap(TaskState.init(rawValue:)), let submitted = date(item, "submitted")
        else {
            throw GridError(.internalError, "a DynamoDB item is not a task record: \(item["pk"] ?? .null) \(item["sk"] ?? .null)", backend: "dynamodb")
        }
        var output = bytes(item, "out")
        if output == nil, item["out_empty"]?["BOOL"]?.bool == true { output = [] }
        return TaskRecord(
            id: TaskID(session: sid, index: index), state: state, owner: string(item, "owner").map(AgentID.init), leaseExpiry: date(item, "lease"),
            retries: int(item, "retries") ?? 0, maxRetries: int(item, "maxr") ?? SessionOptions.defaultMaxRetries, priority: int(item, "prio") ?? 0,
            timeout: item["tmo"]?["N"]?.string.flatMap(Double.init).map { Duration(timeInterval: $0) }, submittedAt: submitted,
            startedAt: date(item, "started"), completedAt: date(item, "completed"), lastError: string(item, "err"), output: output,
            attempt: int(item, "attempt") ?? 0, claimToken: string(item, "ctok").flatMap { try? ClaimToken($0) },
            completionSequence: int(item, "cseq"))
    }

    // MARK: Sessions

    static func item(_ session: SessionRecord) -> Item {
        let labels = String(decoding: JSON.object(session.options.labels.mapValues { .string($0) }).bytes(), as: UTF8.self)
        var item: Item = [
            "pk": s(sessionsPartition), "sk": s(session.id.rawValue), "sid": s(session.id.rawValue), "prio": n(session.options.priority),
            "maxr": n(session.options.maxRetries), "labels": s(labels), "created": n(session.createdAt), "count": n(session.taskCount),
            "cancelled": bool(session.cancelled),
        ]
        if let timeout = session.options.taskTimeout { item["tmo"] = ["N": .string(String(timeout.timeInterval))] }
        return item
    }

    static func session(_ item: Item) throws -> SessionRecord {
        guard let sid = string(item, "sid"), let id = try? SessionID(sid), let created = date(item, "created") else {
            throw GridError(.internalError, "a DynamoDB item is not a session record: \(item["pk"] ?? .null) \(item["sk"] ?? .null)", backend: "dynamodb")
        }
        let labels = string(item, "labels").flatMap { try? JSON.parse(Array($0.utf8), context: "labels") }?.object.compactMapValues(\.string) ?? [:]
        let options = SessionOptions(
            priority: int(item, "prio") ?? 0, maxRetries: int(item, "maxr") ?? SessionOptions.defaultMaxRetries,
            taskTimeout: item["tmo"]?["N"]?.string.flatMap(Double.init).map { Duration(timeInterval: $0) }, labels: labels)
        return SessionRecord(
            id: id, options: options, createdAt: created, taskCount: int(item, "count") ?? 0, cancelled: item["cancelled"]?["BOOL"]?.bool ?? false)
    }

    // MARK: Submissions

    /// The partition of a session's submissions.
    static func submissionPartition(_ session: SessionID) -> String { "sub#\(session.rawValue)" }

    /// The partition of the open-submission markers.
    static let openSubmissionsPartition = "submissions#open"

    /// The key of a submission item.
    static func key(_ session: SessionID, submission key: SubmissionKey) -> Item {
        ["pk": s(submissionPartition(session)), "sk": s(key.rawValue)]
    }

    /// The key of the open marker of a submission created at `created` (the stored `createdAt`, so
    /// that every writer finds the same marker).
    static func openMarkerKey(_ session: SessionID, _ key: SubmissionKey, created: Date) -> Item {
        ["pk": s(openSubmissionsPartition), "sk": s(openMarkerSortKey(created: created, suffix: "\(session.rawValue) \(key.rawValue)"))]
    }

    /// A marker's sort key: the creation time in whole milliseconds (rounded down), zero-padded so
    /// that the string order is the time order, then `#` and `suffix`.
    static func openMarkerSortKey(created: Date, suffix: String) -> String {
        let digits = String(max(0, Int((created.timeIntervalSince1970 * 1_000).rounded(.down))))
        return String(repeating: "0", count: max(0, 15 - digits.count)) + digits + "#" + suffix
    }

    /// The smallest marker sort key after those of every submission created before `date` (and of
    /// some created within the same millisecond: callers check the submissions themselves).
    static func openMarkerBound(before date: Date) -> String {
        let digits = String(max(0, Int((date.timeIntervalSince1970 * 1_000).rounded(.down)) + 1))
        return String(repeating: "0", count: max(0, 15 - digits.count)) + digits + "#"
    }

    /// The open marker of a submission.
    static func openMarker(_ submission: SubmissionRecord) -> Item {
        openMarkerKey(submission.session, submission.key, created: submission.createdAt).merging([
            "sid": s(submission.session.rawValue), "skey": s(submission.key.rawValue),
        ]) { $1 }
    }

    /// The item of a submission, with its key.
    static func item(_ submission: SubmissionRecord) -> Item {
        key(submission.session, submission: submission.key).merging([
            "sid": s(submission.session.rawValue), "skey": s(submission.key.rawValue), "first": n(submission.first), "count": n(submission.count),
            "sent": n(submission.sent), "st": s(submission.state.rawValue), "ver": n(submission.version), "created": n(submission.createdAt),
            "upd": n(submission.updatedAt),
        ]) { $1 }
    }

    /// Reads a submission item.
    ///
    /// - Throws: ``GridKernel/GridError/Code/internalError`` for an item that is not a submission.
    static func submission(_ item: Item) throws -> SubmissionRecord {
        guard let sid = string(item, "sid").flatMap({ try? SessionID($0) }), let key = string(item, "skey").flatMap({ try? SubmissionKey($0) }),
            let first = int(item, "first"), let count = int(item, "count"), let sent = int(item, "sent"),
            let state = string(item, "st").flatMap(SubmissionState.init(rawValue:)), let version = int(item, "ver"),
            let created = date(item, "created"), let updated = date(item, "upd")
        else {
            throw GridError(.internalError, "a DynamoDB item is not a submission: \(item["pk"] ?? .null) \(item["sk"] ?? .null)", backend: "dynamodb")
        }
        return SubmissionRecord(
            session: sid, key: key, first: first, count: count, sent: sent, state: state, version: version, createdAt: created, updatedAt: updated)
    }

    /// The submission an open marker names, as the key of its item; `nil` for a malformed marker.
    static func markedSubmission(_ marker: Item) -> Item? {
        guard let sid = string(marker, "sid").flatMap({ try? SessionID($0) }), let key = string(marker, "skey").flatMap({ try? SubmissionKey($0) })
        else { return nil }
        return self.key(sid, submission: key)
    }
}
