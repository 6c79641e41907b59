import Foundation
import GridKernel

/// Task transitions as transactions: each call reads its tasks (and, when tasks may become terminal,
/// their sessions' sequence items) with one consistent `BatchGetItem`, applies the kernel's rule
/// (TaskRules.swift) to each record, and writes the changed ones in `TransactWriteItems` of up to 100
/// items: each task replaced on the condition that its write count `v` is still the one read, plus
/// per session one counter item moved by the state changes. When tasks become terminal, that item is
/// the session's sequence item, its `n` moved from the value read to the value plus their number on
/// the condition that it is still the value read, and the tasks carry the numbers in between; else it
/// is one of the session's counter shards, picked at random per call.
///
/// A cancelled transaction changed nothing. Its cancellation reasons give the current item of each
/// task or sequence item whose condition failed (`ReturnValuesOnConditionCheckFailure`), so the next
/// round applies the rule to that, without reading again; the items that conflicted with another
/// transaction are read again.
extension DynamoDBStateStore {
    typealias Item = DynamoDBItem.Item
    private typealias D = DynamoDBItem

    /// A task's record before and after a transition that applied (`old` is `nil` for a creation;
    /// `new == old` when the rule applied without changing anything, e.g. a claim sent again).
    struct Transition: Sendable {
        var old: TaskRecord?
        var new: TaskRecord
    }

    /// How many rounds a transition call takes (each after a cancelled transaction) before it gives up
    /// as unavailable.
    static var transitionRounds: Int { 64 }

    /// Applies `rule` to each task, as described on the extension; returns the tasks it applied to.
    ///
    /// - Parameters:
    ///   - absent: the tasks are taken not to exist, without reading them (creation; a task that does
    ///     exist fails its condition and the rule sees it in the next round).
    ///   - numbering: the rule may make tasks terminal: read the sequence items with the tasks.
    func transition(
        _ ids: [TaskID], absent: Bool = false, numbering: Bool, rule: (TaskID, TaskRecord?) -> TaskRecord?
    ) async throws -> [TaskID: Transition] {
        var pending = Set(ids)
        // The item last seen of each task (`.some(nil)`: it does not exist).
        var items: [TaskID: Item?] = absent ? Dictionary(uniqueKeysWithValues: pending.map { ($0, nil) }) : [:]
        // The sequence item's `n` last seen of each session (`.some(nil)`: it has none).
        var sequences: [SessionID: Int?] = [:]
        var done: [TaskID: Transition] = [:]
        for round in 1...Self.transitionRounds {
            let unread = pending.filter { items[$0] == nil }
            let sessions: Set<SessionID> = numbering ? Set(pending.map(\.session)).filter { sequences[$0] == nil } : []
            try await read(unread, sequences: sessions, into: &items, &sequences)
            var changes: [Transition] = []
            for id in pending {
                let old = try (items[id] ?? nil).map(D.task)
                guard let new = rule(id, old) else {
                    pending.remove(id)
                    continue
                }
                if new == old {
                    done[id] = Transition(old: old, new: new)
                    pending.remove(id)
                } else {
                    changes.append(Transition(old: old, new: new))
                }
            }
            guard !changes.isEmpty else { break }
            let unnumbered = Set(changes.filter { $0.new.enteredTerminalState(from: $0.old) }.map(\.new.id.session)).filter { sequences[$0] == nil }
            try await read([], sequences: unnumbered, into: &items, &sequences)
            let outcome = try await write(changes, items: items, sequences: sequences)
            for transition in outcome.applied {
                done[transition.new.id] = transition
                pending.remove(transition.new.id)
            }
            for (id, item) in outcome.seen { items[id] = .some(item) }
            for id in outcome.unread { items[id] = nil }
            for (session, last) in outcome.sequences { sequences[session] = .some(last) }
            for session in outcome.unreadSequences { sequences[session] = nil }
            guard !pending.isEmpty else { break }
            if outcome.conflicted {
                try await Task.sleep(for: client.retry.backoff(retry: Swift.min(round, 6), random: Double.random(in: 0..<1)))
            }
            if round == Self.transitionRounds {
                throw GridError.unavailable(
                    "\(pending.count) task transition(s) lost \(round) races for their tasks or their session's completion sequence; try again",
                    backend: "dynamodb")
            }
        }
        return done
    }

    /// Reads tasks and sequence items (consistently, in one `BatchGetItem` per 100 keys) into the maps.
    private func read(_ ids: Set<TaskID>, sequences sessions: Set<SessionID>, into items: inout [TaskID: Item?], _ sequences: inout [SessionID: Int?])
        async throws
    {
        guard !ids.isEmpty || !sessions.isEmpty else { return }
        let keys = ids.map { D.key($0, shards: configuration.taskShards) } + sessions.map(D.sequenceKey)
        for id in ids { items[id] = .some(nil) }
        for session in sessions { sequences[session] = .some(nil) }
        for item in try await batchGetItems(keys) {
            if D.string(item, "sk") == D.sequenceSortKey, let session = D.string(item, "pk").flatMap(Self.session(ofCounters:)) {
                sequences[session] = .some(D.int(item, "n") ?? 0)
            } else {
                let record = try D.task(item)
                items[record.id] = item
            }
        }
    }

    /// The session of a counters partition key.
    private static func session(ofCounters partition: String) -> SessionID? {
        partition.hasPrefix("c#") ? try? SessionID(String(partition.dropFirst(2))) : nil
    }

    /// What a round of writes did: the transitions applied, what the cancellation reasons showed of
    /// the items whose condition failed, and whether a transaction conflicted with another.
    struct Outcome: Sendable {
        var applied: [Transition] = []
        /// Tasks as the cancellation reasons showed them (`nil`: gone).
        var seen: [TaskID: Item?] = [:]
        /// Tasks to read again.
        var unread: Set<TaskID> = []
        /// Sequence items' `n` as written or as the reasons showed them (`nil`: gone).
        var sequences: [SessionID: Int?] = [:]
        /// Sequence items to read again.
        var unreadSequences: Set<SessionID> = []
        var conflicted = false

        /// The part of the outcome about the tasks `ids` (and every session).
        func part(for ids: Set<TaskID>) -> Self {
            var part = self
            part.applied = applied.filter { ids.contains($0.new.id) }
            part.seen = seen.filter { ids.contains($0.key) }
            part.unread = unread.intersection(ids)
            return part
        }

        mutating func merge(_ other: Self) {
            applied += other.applied
            seen.merge(other.seen) { $1 }
            unread.formUnion(other.unread)
            sequences.merge(other.sequences) { $1 }
            unreadSequences.formUnion(other.unreadSequences)
            conflicted = conflicted || other.conflicted
        }
    }

    /// What one item of a transaction is, to read its cancellation reason.
    private enum Written {
        case task(TaskID)
        case sequence(SessionID)
        case shard
    }

    /// Writes the changes in transactions of at most 100 items and about 3 MiB: the changes of
    /// sessions whose tasks become terminal (and whose sequence item was read) per session, through the
    /// ``SequenceGate`` (one such transaction per session at a time in this process, each continuing the
    /// numbering of the one before); the others at once.
    private func write(_ changes: [Transition], items: [TaskID: Item?], sequences: [SessionID: Int?]) async throws -> Outcome {
        let numbered = Set(changes.filter { $0.new.enteredTerminalState(from: $0.old) }.map(\.new.id.session)).filter { (sequences[$0] ?? nil) != nil }
        let plain = chunks(changes.filter { !numbered.contains($0.new.id.session) })
        var outcome = Outcome()
        for result in try await plain.concurrentMap(width: configuration.concurrency, { try await self.send($0, items: items, sequences: sequences) }) {
            outcome.merge(result)
        }
        let jobs = numbered.flatMap { session in
            chunks(changes.filter { $0.new.id.session == session }).map { (session: session, chunk: $0) }
        }
        for result in try await jobs.concurrentMap(width: Swift.max(1, jobs.count), { session, chunk in
            let job = SequenceGate.Job(
                changes: chunk, items: Dictionary(uniqueKeysWithValues: chunk.map { ($0.new.id, items[$0.new.id] ?? nil) }),
                sequence: (sequences[session] ?? nil) ?? 0, bytes: chunk.reduce(0) { $0 + self.size($1) })
            return try await self.sequenceGate.submit(session, job) { changes, items, start in
                try await self.send(changes, items: items, sequences: [session: start])
            }
        }) {
            outcome.merge(result)
        }
        return outcome
    }

    /// About the bytes a change adds to a transaction.
    private func size(_ change: Transition) -> Int { D.size(D.item(change.new, configuration: configuration)) + 200 }

    /// Cuts changes into transactions of at most 100 items (tasks and one counter item per session)
    /// and about 3 MiB.
    private func chunks(_ changes: [Transition]) -> [[Transition]] {
        var chunks: [[Transition]] = []
        var current: [Transition] = []
        var sessions = Set<SessionID>()
        var bytes = 0
        for change in changes.sorted(by: { $0.new.id < $1.new.id }) {
            let size = size(change)
            let session = change.new.id.session
            let count = current.count + sessions.count + (sessions.contains(session) ? 0 : 1)
            if !current.isEmpty && (count + 1 > 100 || bytes + size > 3 << 20) {
                chunks.append(current)
                current = []
                sessions = []
                bytes = 0
            }
            current.append(change)
            sessions.insert(session)
            bytes += size
        }
        if !current.isEmpty { chunks.append(current) }
        return chunks
    }

    /// Sends one transaction of task changes and their sessions' counter items.
    private func send(_ chunk: [Transition], items: [TaskID: Item?], sequences: [SessionID: Int?]) async throws -> Outcome {
        var writes: [JSON] = []
        var written: [Written] = []
        var meters: [(item: Item, index: Bool)] = []
        var applied: [Transition] = []
        var moved: [SessionID: Int] = [:]
        let shard = Int.random(in: 0..<configuration.counterShards)
        for (session, changes) in Dictionary(grouping: chunk, by: \.new.id.session).sorted(by: { $0.key < $1.key }) {
            var deltas: [TaskState: Int] = [:]
            for change in changes where change.old?.state != change.new.state {
                if let old = change.old { deltas[old.state, default: 0] -= 1 }
                deltas[change.new.state, default: 0] += 1
            }
            let terminal = changes.filter { $0.new.enteredTerminalState(from: $0.old) }.count
            var next = (sequences[session] ?? nil).map { $0 + 1 }
            for change in changes {
                var new = change.new
                if new.enteredTerminalState(from: change.old), let number = next {
                    new.completionSequence = number
                    next = number + 1
                }
                let old = items[new.id] ?? nil
                var item = (old ?? [:]).filter { !D.taskAttributes.contains($0.key) }.merging(D.item(new, configuration: configuration)) { $1 }
                item["v"] = D.n((old.flatMap { D.int($0, "v") } ?? 0) + 1)
                var put: [String: JSON] = ["TableName": .string(configuration.table), "Item": .object(item), "ReturnValuesOnConditionCheckFailure": "ALL_OLD"]
                if old == nil {
                    put["ConditionExpression"] = "attribute_not_exists(pk)"
                } else if let version = old.flatMap({ D.int($0, "v") }) {
                    put["ConditionExpression"] = "#v = :v"
                    put["ExpressionAttributeNames"] = ["#v": "v"]
                    put["ExpressionAttributeValues"] = [":v": D.n(version)]
                } else {
                    put["ConditionExpression"] = "attribute_exists(pk) AND attribute_not_exists(#v)"
                    put["ExpressionAttributeNames"] = ["#v": "v"]
                }
                writes.append(["Put": .object(put)])
                written.append(.task(new.id))
                meters.append((item, new.completionSequence != nil))
                applied.append(Transition(old: change.old, new: new))
            }
            let counters = deltas.filter { $0.value != 0 }.sorted { $0.key.rawValue < $1.key.rawValue }
            var names: [String: JSON] = [:]
            var values: [String: JSON] = [:]
            let additions = counters.enumerated().map { offset, entry in
                names["#c\(offset)"] = .string(D.counterAttribute(entry.key))
                values[":c\(offset)"] = D.n(entry.value)
                return "#c\(offset) :c\(offset)"
            }
            if terminal > 0, let last = sequences[session] ?? nil {
                names["#n"] = "n"
                values[":n"] = D.n(last)
                values[":next"] = D.n(last + terminal)
                let add = additions.isEmpty ? "" : " ADD " + additions.joined(separator: ", ")
                writes.append([
                    "Update": [
                        "TableName": .string(configuration.table), "Key": .object(D.sequenceKey(session)), "UpdateExpression": .string("SET #n = :next" + add),
                        "ConditionExpression": "#n = :n", "ExpressionAttributeNames": .object(names), "ExpressionAttributeValues": .object(values),
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    ]
                ])
                written.append(.sequence(session))
                moved[session] = last + terminal
                meters.append((D.sequenceItem(session), false))
            } else if !additions.isEmpty {
                let key = D.counterShardKey(session, shard: shard)
                writes.append([
                    "Update": [
                        "TableName": .string(configuration.table), "Key": .object(key), "UpdateExpression": .string("ADD " + additions.joined(separator: ", ")),
                        "ExpressionAttributeNames": .object(names), "ExpressionAttributeValues": .object(values),
                    ]
                ])
                written.append(.shard)
                meters.append((D.sequenceItem(session), false))
            }
        }
        // A cancelled transaction is billed too (as if it had written); the index only when it wrote.
        for meter in meters { meterWrite(item: meter.item, transactional: true) }
        do {
            // The token makes the transaction idempotent when the client sends it again after a lost
            // reply: DynamoDB answers the first outcome instead of applying it twice.
            _ = try await call(
                "TransactWriteItems", ["TransactItems": .array(writes), "ClientRequestToken": .string(UUID().uuidString)],
                resource: "\(chunk.count) task(s)")
            for meter in meters where meter.index { meterIndexWrite(item: meter.item) }
            return Outcome(applied: applied, sequences: moved.mapValues { Optional($0) })
        } catch let error as GridError where Self.transactionCanceled(error) {
            var outcome = Outcome()
            let reasons = (error.underlying as? AWSServiceError)?.cancellationReasons ?? []
            for (offset, what) in written.enumerated() {
                let reason = offset < reasons.count ? reasons[offset] : AWSServiceError.CancellationReason(code: "TransactionConflict")
                switch (what, reason.code) {
                case (_, "None"): break
                case (.task(let id), "ConditionalCheckFailed"): outcome.seen[id] = .some(reason.item)
                case (.sequence(let session), "ConditionalCheckFailed"):
                    outcome.sequences[session] = .some(reason.item.map { D.int($0, "n") ?? 0 })
                case (.task(let id), _):
                    // A conflict with another transaction, or throttling: read again in the next round.
                    outcome.unread.insert(id)
                    outcome.conflicted = true
                case (.sequence(let session), _):
                    outcome.unreadSequences.insert(session)
                    outcome.conflicted = true
                case (.shard, _): outcome.conflicted = true
                }
            }
            return outcome
        }
    }
}
