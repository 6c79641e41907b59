import Foundation
import GridKernel

/// The DynamoDB table layout of the state store: attribute names, key values and the codec between
/// ``GridKernel/TaskRecord`` / ``GridKernel/SessionRecord`` and DynamoDB items.
///
/// One table, partition key `pk` (string):
///
/// | item | `pk` | other attributes |
/// |---|---|---|
/// | session | `s#<session>` | `kind`=`session`, `sid`, `prio`, `maxr`, `tmo`, `labels`, `created`, `count`, `cancelled` |
/// | task | `t#<task id>` | `sid`, `idx`, `st`, `owner`, `lease`, `retries`, `maxr`, `prio`, `tmo`, `submitted`, `started`, `completed`, `err`, `out` |
///
/// Three global secondary indexes, all projecting every attribute:
/// - `by_state`: partition `ss` = `<session>#<state>#<shard>`, sort `idx`: a session's tasks in one
///   state, in index order (shard = index mod ``DynamoDBConfiguration/stateShards``).
/// - `by_lease`: partition `lp` = `lease#<shard>`, sort `lease`: processing tasks by lease expiry,
///   sparse (the attributes exist only while a task is processing), spread over
///   ``DynamoDBConfiguration/leaseShards`` keys as HTC-Grid spreads its state index.
/// - `sessions`: partition `kind`, sort `sid`: sessions in id order (sparse: sessions only).
enum DynamoDBItem {
    typealias Item = [String: JSON]

    static func s(_ value: String) -> JSON { ["S": .string(value)] }
    static func n(_ value: Int) -> JSON { ["N": .string(String(value))] }
    static func n(_ date: Date) -> JSON { ["N": .string(String(date.timeIntervalSince1970))] }
    static func b(_ bytes: [UInt8]) -> JSON { ["B": .string(Data(bytes).base64EncodedString())] }
    static func bool(_ value: Bool) -> JSON { ["BOOL": .bool(value)] }

    static func taskKey(_ id: TaskID) -> String { "t#\(id.rawValue)" }
    static func sessionKey(_ id: SessionID) -> String { "s#\(id.rawValue)" }

    static func stateKey(_ session: SessionID, _ state: TaskState, shard: Int) -> String { "\(session.rawValue)#\(state.rawValue)#\(shard)" }
    static func leaseKey(shard: Int) -> String { "lease#\(shard)" }

    /// A stable shard of a task, from its index (state index) or its id (lease index).
    static func shard(_ id: TaskID, of count: Int) -> Int {
        guard count > 1 else { return 0 }
        var hash: UInt64 = 14_695_981_039_346_656_037
        for byte in id.rawValue.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 1_099_511_628_211
        }
        return Int(hash % UInt64(count))
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

    /// The item of a new task record, with its index keys.
    static func item(_ task: TaskRecord, configuration: DynamoDBConfiguration) -> Item {
        var item: Item = [
            "pk": s(taskKey(task.id)), "sid": s(task.id.session.rawValue), "idx": n(task.id.index), "st": s(task.state.rawValue),
            "retries": n(task.retries), "maxr": n(task.maxRetries), "prio": n(task.priority), "submitted": n(task.submittedAt),
            "ss": s(stateKey(task.id.session, task.state, shard: shard(task.id, of: configuration.stateShards))),
        ]
        if let owner = task.owner { item["owner"] = s(owner.rawValue) }
        if let lease = task.leaseExpiry {
            item["lease"] = n(lease)
            if task.state == .processing { item["lp"] = s(leaseKey(shard: shard(task.id, of: configuration.leaseShards))) }
        }
        if let timeout = task.timeout { item["tmo"] = ["N": .string(String(timeout.timeInterval))] }
        if let started = task.startedAt { item["started"] = n(started) }
        if let completed = task.completedAt { item["completed"] = n(completed) }
        if let error = task.lastError { item["err"] = s(error) }
        if let output = task.output { item.merge(outputAttributes(output)) { $1 } }
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
        guard let pk = string(item, "pk"), pk.hasPrefix("t#"), let id = try? TaskID(String(pk.dropFirst(2))),
            let state = string(item, "st").flatMap(TaskState.init(rawValue:)), let submitted = date(item, "submitted")
        else {
            throw GridError(.internalError, "a DynamoDB item is not a task record: \(item["pk"] ?? .null)", backend: "dynamodb")
        }
        var output = bytes(item, "out")
        if output == nil, item["out_empty"]?["BOOL"]?.bool == true { output = [] }
        return TaskRecord(
            id: id, state: state, owner: string(item, "owner").map(AgentID.init), leaseExpiry: date(item, "lease"),
            retries: int(item, "retries") ?? 0, maxRetries: int(item, "maxr") ?? SessionOptions.defaultMaxRetries, priority: int(item, "prio") ?? 0,
            timeout: item["tmo"]?["N"]?.string.flatMap(Double.init).map { Duration(timeInterval: $0) }, submittedAt: submitted,
            startedAt: date(item, "started"), completedAt: date(item, "completed"), lastError: string(item, "err"), output: output)
    }

    // MARK: Sessions

    static func item(_ session: SessionRecord) -> Item {
        let labels = String(decoding: JSON.object(session.options.labels.mapValues { .string($0) }).bytes(), as: UTF8.self)
        var item: Item = [
            "pk": s(sessionKey(session.id)), "kind": s("session"), "sid": s(session.id.rawValue), "prio": n(session.options.priority),
            "maxr": n(session.options.maxRetries), "labels": s(labels), "created": n(session.createdAt), "count": n(session.taskCount),
            "cancelled": bool(session.cancelled),
        ]
        if let timeout = session.options.taskTimeout { item["tmo"] = ["N": .string(String(timeout.timeInterval))] }
        return item
    }

    static func session(_ item: Item) throws -> SessionRecord {
        guard let sid = string(item, "sid"), let id = try? SessionID(sid), let created = date(item, "created") else {
            throw GridError(.internalError, "a DynamoDB item is not a session record: \(item["pk"] ?? .null)", backend: "dynamodb")
        }
        let labels = string(item, "labels").flatMap { try? JSON.parse(Array($0.utf8), context: "labels") }?.object.compactMapValues(\.string) ?? [:]
        let options = SessionOptions(
            priority: int(item, "prio") ?? 0, maxRetries: int(item, "maxr") ?? SessionOptions.defaultMaxRetries,
            taskTimeout: item["tmo"]?["N"]?.string.flatMap(Double.init).map { Duration(timeInterval: $0) }, labels: labels)
        return SessionRecord(
            id: id, options: options, createdAt: created, taskCount: int(item, "count") ?? 0, cancelled: item["cancelled"]?["BOOL"]?.bool ?? false)
    }
}
