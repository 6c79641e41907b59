import Foundation
import GridKernel

extension DynamoDBStateStore {
    private typealias D = DynamoDBItem

    /// Gives every session made by an earlier version — one without a sequence item — its counters
    /// and completion order: numbers its terminal tasks by completion time, then index (`cseq`), counts
    /// its tasks by state, deletes the counter shards that transitions of this version may have moved
    /// meanwhile (the count covers them), and writes its sequence item. Until then such a session is
    /// counted by querying its tasks and has no completion order. `htc aws init` runs it after
    /// ``createTable(timeout:)``. Repeating it is harmless: a session is upgraded once, and an upgrade
    /// cut short numbers the same tasks the same way when repeated.
    ///
    /// Run it while no server or agent uses the grid: a transition of a session being upgraded may be
    /// counted twice or left unnumbered.
    ///
    /// - Returns: how many sessions were upgraded.
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func upgrade() async throws -> Int {
        let sessions = try await query(
            index: nil, condition: "#pk = :pk", names: ["#pk": "pk"], values: [":pk": D.s(D.sessionsPartition)], limit: Int.max
        ).compactMap { try? D.session($0).id }
        var counted = Set<SessionID>()
        for item in try await batchGetItems(sessions.map(D.sequenceKey), projection: "pk") {
            if let partition = D.string(item, "pk"), let session = try? SessionID(String(partition.dropFirst(2))) { counted.insert(session) }
        }
        let legacy = sessions.filter { !counted.contains($0) }
        for session in legacy { try await upgrade(session) }
        return legacy.count
    }

    private func upgrade(_ session: SessionID) async throws {
        var counts = StateCounts()
        var terminal: [TaskRecord] = []
        try await forEachPage(session, states: nil) { records in
            for record in records {
                counts[record.state] += 1
                if record.state.isTerminal { terminal.append(record) }
            }
        }
        terminal.sort { ($0.completedAt ?? .distantPast, $0.id.index) < ($1.completedAt ?? .distantPast, $1.id.index) }
        let numbered = terminal.enumerated().filter { $0.element.completionSequence != $0.offset + 1 }
        _ = try await numbered.concurrentMap(width: configuration.concurrency) { offset, record in
            _ = try await self.call(
                "UpdateItem",
                [
                    "Key": .object(D.key(record.id, shards: self.configuration.taskShards)), "UpdateExpression": "SET #cseq = :cseq ADD #v :one",
                    "ConditionExpression": "attribute_exists(pk)", "ExpressionAttributeNames": ["#cseq": "cseq", "#v": "v"],
                    "ExpressionAttributeValues": [":cseq": D.n(offset + 1), ":one": D.n(1)],
                ], resource: "task \(record.id)")
            self.meterWrite(item: D.item(record, configuration: self.configuration), indexed: true)
        }
        let shards = try await query(
            index: nil, condition: "#pk = :pk", names: ["#pk": "pk"], values: [":pk": D.s(D.countersPartition(session))], limit: Int.max)
        try await batchWrite(shards.map { ["DeleteRequest": ["Key": .object(D.itemKey($0))]] })
        for _ in shards { meterWrite(item: nil) }
        let sequence = D.sequenceItem(session, counts: counts, last: terminal.count)
        _ = try await call("PutItem", ["Item": .object(sequence)], resource: "completion sequence of session \(session)")
        meterWrite(item: sequence)
    }
}
