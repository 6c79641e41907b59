import Foundation
import GridKernel

extension StateConformance.Cases {
    // MARK: Attempts and fencing

    func attemptFencing() async throws {
        let (_, ids) = try await makeSession(tasks: 2, maxRetries: 3)
        let task = ids[0]
        let first = try expectSome(try await claim([task], by: agentA, expiry: 10).first, "the first claim of \(task)")
        try expectEqual(first.attempt, 1, "attempt of the first claim")
        try expectEqual(try await store.expire([task], now: at(20)), [task: .pending], "the first attempt's lease expired")
        // The same agent claims the task again (its message came back): a new attempt.
        let second = try expectSome(try await claim([task], by: agentA, expiry: 60, now: 21).first, "the second claim of \(task)")
        try expectEqual(second.attempt, 2, "attempt of the second claim, by the same agent")
        let stale = TaskAttempt(id: task, attempt: 1)
        let held = try await store.heartbeat([stale], owner: agentA, leaseExpiry: at(500))
        try expect(held.isEmpty, "a heartbeat of the stale attempt 1 holds nothing, got \(held)")
        let finished = try await store.finish([TaskCompletion(id: task, attempt: 1, output: [1])], owner: agentA, at: at(22))
        try expect(finished.isEmpty, "a finish of the stale attempt 1 finishes nothing, got \(finished)")
        let failed = try await store.fail([TaskFailure(id: task, attempt: 1, message: "stale")], owner: agentA, at: at(22))
        try expect(failed.isEmpty, "a failure of the stale attempt 1 changes nothing, got \(failed)")
        let released = try await store.release([stale], owner: agentA)
        try expect(released.isEmpty, "a release of the stale attempt 1 releases nothing, got \(released)")
        let future = try await store.finish([TaskCompletion(id: task, attempt: 3, output: [3])], owner: agentA, at: at(22))
        try expect(future.isEmpty, "a finish naming an attempt that never started finishes nothing, got \(future)")
        let unchanged = try await store.task(task)
        try expectEqual(unchanged.state, .processing, "state after stale transitions")
        try expectEqual(unchanged.attempt, 2, "attempt after stale transitions")
        try expectSameTime(unchanged.leaseExpiry, at(60), "lease after a stale heartbeat")
        try expectEqual(unchanged.output, nil, "output after a stale finish")
        let current = try await store.finish([TaskCompletion(id: task, attempt: 2, output: [2])], owner: agentA, at: at(23))
        try expectEqual(current, [task], "the current attempt finishes")
        let done = try await store.task(task)
        try expectEqual(done.output, [2], "output of the current attempt")
        try expectEqual(done.attempt, 2, "attempt of the finished task")
        let late = try await store.finish([TaskCompletion(id: task, attempt: 1, output: [1])], owner: agentA, at: at(24))
        try expect(late.isEmpty, "a late finish of the stale attempt after the task finished, got \(late)")
        try expectEqual(try await store.task(task).output, [2], "output after a late stale finish")

        // Another agent's attempt after a reaped one.
        _ = try await claim([ids[1]], by: agentA, expiry: 10)
        _ = try await store.expire([ids[1]], now: at(20))
        let byB = try expectSome(try await claim([ids[1]], by: agentB, expiry: 60, now: 21).first, "agent B's claim of \(ids[1])")
        try expectEqual(byB.attempt, 2, "attempt of agent B's claim")
        let staleByA = try await store.fail([TaskFailure(id: ids[1], attempt: 1, message: "stale")], owner: agentA, at: at(22))
        try expect(staleByA.isEmpty, "agent A's stale failure, got \(staleByA)")
        let wrongOwner = try await store.finish([TaskCompletion(id: ids[1], attempt: 2, output: nil)], owner: agentA, at: at(22))
        try expect(wrongOwner.isEmpty, "agent A naming agent B's attempt, got \(wrongOwner)")
        try expectEqual(try await store.task(ids[1]).owner, agentB, "owner after stale transitions")
    }

    func repeatedClaimWinsTheSameAttempt() async throws {
        let (_, ids) = try await makeSession(tasks: 3)
        let token = ClaimToken.random()
        let first = try await store.claim(Array(ids[0...1]), owner: agentA, token: token, leaseExpiry: at(60), now: at(1))
        try expectEqual(Set(first.map(\.id)), Set(ids[0...1]), "tasks won by the first call")
        // The same call again, as after a reply lost on the way back; task 2 was not in the first call.
        let again = try await store.claim(ids, owner: agentA, token: token, leaseExpiry: at(60), now: at(1))
        try expectEqual(Set(again.map(\.id)), Set(ids), "tasks won by the same call sent again (and the pending one it adds)")
        for record in again where record.id != ids[2] {
            let original = try expectSome(first.first { $0.id == record.id }, "first claim of \(record.id)")
            try expectEqual(record.attempt, original.attempt, "attempt of \(record.id) won again")
            try expectEqual(record.attempt, 1, "attempt of \(record.id)")
            try expectEqual(record.claimToken, token, "claim token of \(record.id)")
            try expectSameTime(record.startedAt, at(1), "startedAt of \(record.id) won again")
        }
        let otherToken = try await store.claim(ids, owner: agentA, token: ClaimToken.random(), leaseExpiry: at(60), now: at(2))
        try expect(otherToken.isEmpty, "another call of the same agent wins nothing, got \(otherToken.map(\.id))")
        let otherOwner = try await store.claim(ids, owner: agentB, token: token, leaseExpiry: at(60), now: at(2))
        try expect(otherOwner.isEmpty, "another agent with the same token wins nothing, got \(otherOwner.map(\.id))")
        _ = try await store.finish([TaskCompletion(id: ids[0], attempt: 1, output: nil)], owner: agentA, at: at(3))
        let afterFinish = try await store.claim([ids[0]], owner: agentA, token: token, leaseExpiry: at(60), now: at(1))
        try expect(afterFinish.isEmpty, "the call sent again after the task finished wins nothing, got \(afterFinish.map(\.id))")
        try expectEqual(try await store.task(ids[0]).state, .finished, "state after a late repeated claim")
    }

    func releaseGivesTasksBackUncharged() async throws {
        let (_, ids) = try await makeSession(tasks: 3, maxRetries: 1)
        _ = try await claim(ids, by: agentA, expiry: 30)
        let attempts = ids.map { TaskAttempt(id: $0, attempt: 1) }
        let byB = try await store.release(attempts, owner: agentB)
        try expect(byB.isEmpty, "another agent releases nothing, got \(byB)")
        let released = try await store.release(Array(attempts[0...1]), owner: agentA)
        try expectEqual(released, Set(ids[0...1]), "tasks released by their owner")
        for id in ids[0...1] {
            let record = try await store.task(id)
            try expectEqual(record.state, .pending, "state of released task \(id)")
            try expectEqual(record.retries, 0, "retries of released task \(id) (no retry charged)")
            try expect(record.owner == nil && record.leaseExpiry == nil, "a released task has no owner or lease: \(record)")
            try expectEqual(record.lastError, nil, "lastError of released task \(id)")
        }
        try expect(try await store.expiredLeases(now: at(100), limit: 100).allSatisfy { $0.id == ids[2] }, "released tasks hold no lease")
        let again = try expectSome(try await claim([ids[0]], by: agentB, expiry: 60, now: 5).first, "a released task claimed again")
        try expectEqual(again.attempt, 2, "attempt of a released task claimed again")
        try expect(try await store.release([attempts[0]], owner: agentA).isEmpty, "releasing the old attempt after a new claim")
    }

    func finishClearsLastError() async throws {
        let (_, ids) = try await makeSession(tasks: 1, maxRetries: 3)
        _ = try await claim(ids, by: agentA, expiry: 10)
        _ = try await store.fail([TaskFailure(id: ids[0], attempt: 1, message: "first attempt broke")], owner: agentA, at: at(2))
        try expectEqual(try await store.task(ids[0]).lastError, "first attempt broke", "lastError after a failed attempt")
        _ = try await claim(ids, by: agentB, expiry: 30, now: 3)
        try expectEqual(try await store.task(ids[0]).lastError, "first attempt broke", "lastError while the next attempt runs")
        _ = try await store.finish([TaskCompletion(id: ids[0], attempt: 2, output: [1])], owner: agentB, at: at(4))
        let finished = try await store.task(ids[0])
        try expectEqual(finished.lastError, nil, "lastError of a task whose later attempt finished")
        try expectEqual(finished.retries, 1, "retries of a task whose later attempt finished")
    }

    func tasksReadInABatch() async throws {
        let (session, ids) = try await makeSession(tasks: 250)
        _ = try await claim([ids[7]], by: agentA)
        let unknown = [TaskID(session: session, index: 999), TaskID(session: SessionID.random(), index: 0)]
        let asked = ids.reversed() + unknown + [ids[7], ids[7]]
        let read = try await store.tasks(Array(asked))
        try expectEqual(read.count, ids.count, "records read (unknown ids left out, repeated ones once)")
        try expectEqual(Set(read.map(\.id)), Set(ids), "ids read")
        let seventh = try expectSome(read.first { $0.id == ids[7] }, "task 7 in the batch")
        try expectEqual(seventh.state, .processing, "state of a claimed task read in a batch")
        try expectEqual(seventh.owner, agentA, "owner of a claimed task read in a batch")
        try expectEqual(try await store.tasks([]).count, 0, "reading no task")
    }

    // MARK: The kernel's rules, step by step

    /// 300 random transitions over six tasks, two agents and two claim tokens, with stale and current
    /// attempts; after each, the store's answer and every record must be what the kernel's rules
    /// (TaskRules.swift) give, the counts must match the records, and the terminal tasks must be
    /// numbered 1…n in completion order.
    func transitionsFollowTheKernelRules() async throws {
        let (session, ids) = try await makeSession(tasks: 6, maxRetries: 2)
        var model = Dictionary(uniqueKeysWithValues: try await store.tasks(ids).map { ($0.id, $0) })
        try expectEqual(model.count, ids.count, "tasks created for the model")
        var random = SplitMix64(seed: 0x5EED_1DEA)
        let agents = [agentA, agentB]
        let tokens = [ClaimToken.random(), ClaimToken.random()]
        var now = 0
        // Stale transitions refused although the task was processing under the same owner: the walk
        // must show the fencing at work, not merely avoid it.
        var staleRefusals = 0
        for step in 0..<300 {
            now += Int(random.next() % 4)
            let picked = ids.filter { _ in random.next() % 3 == 0 }
            let chosen = picked.isEmpty ? [ids[Int(random.next() % UInt64(ids.count))]] : picked
            // Mostly the owner of a chosen task, so that fenced transitions meet tasks they could change.
            let owner = random.next() % 4 != 0 ? (model[chosen[0]]?.owner ?? agents[0]) : agents[Int(random.next() % 2)]
            let attemptOffset = Int(random.next() % 2) == 0 ? -1 : 0
            func attempt(_ id: TaskID) -> Int { (model[id]?.attempt ?? 0) + attemptOffset }
            let held = chosen.filter { model[$0]?.state == .processing && model[$0]?.owner == owner }.count
            let at = self.at(now)
            let operation = random.next() % 8
            if (1...4).contains(operation) && attemptOffset < 0 { staleRefusals += held }
            var what = ""
            switch operation {
            case 0:
                let token = tokens[Int(random.next() % 2)]
                let expiry = self.at(now + 5 + Int(random.next() % 10))
                what = "claim of \(chosen.map(\.index)) by \(owner) with token \(tokens.firstIndex(of: token)!)"
                let won = try await store.claim(chosen, owner: owner, token: token, leaseExpiry: expiry, now: at)
                let expected = apply(&model, chosen) { $0.claimed(by: owner, token: token, leaseExpiry: expiry, now: at) }
                try expectEqual(Set(won.map(\.id)), Set(expected.keys), "step \(step): tasks won by the \(what)")
                for record in won { try expectSameRecord(record, model[record.id]!, "step \(step): record returned by the \(what)") }
            case 1:
                let expiry = self.at(now + 10)
                what = "heartbeat of \(chosen.map(\.index)) by \(owner)"
                let held = try await store.heartbeat(chosen.map { TaskAttempt(id: $0, attempt: attempt($0)) }, owner: owner, leaseExpiry: expiry)
                let attempts = Dictionary(uniqueKeysWithValues: chosen.map { ($0, attempt($0)) })
                let expected = apply(&model, chosen) { $0.heartbeated(by: owner, attempt: attempts[$0.id]!, leaseExpiry: expiry) }
                try expectEqual(held, Set(expected.keys), "step \(step): tasks held by the \(what)")
            case 2:
                let output: [UInt8]? = random.next() % 3 == 0 ? nil : Array(repeating: UInt8(step % 256), count: Int(random.next() % 3))
                what = "finish of \(chosen.map(\.index)) by \(owner)"
                let completions = chosen.map { TaskCompletion(id: $0, attempt: attempt($0), output: output) }
                let finished = try await store.finish(completions, owner: owner, at: at)
                let attempts = Dictionary(uniqueKeysWithValues: chosen.map { ($0, attempt($0)) })
                let expected = apply(&model, chosen) { $0.finished(by: owner, attempt: attempts[$0.id]!, output: output, at: at) }
                try expectEqual(finished, Set(expected.keys), "step \(step): tasks finished by the \(what)")
            case 3:
                let retryable = random.next() % 4 != 0
                what = "\(retryable ? "retryable" : "permanent") failure of \(chosen.map(\.index)) by \(owner)"
                let failures = chosen.map { TaskFailure(id: $0, attempt: attempt($0), message: "failure \(step)", retryable: retryable) }
                let states = try await store.fail(failures, owner: owner, at: at)
                let attempts = Dictionary(uniqueKeysWithValues: chosen.map { ($0, attempt($0)) })
                let expected = apply(&model, chosen) {
                    $0.failed(by: owner, attempt: attempts[$0.id]!, message: "failure \(step)", retryable: retryable, at: at)
                }
                try expectEqual(states, expected.mapValues(\.state), "step \(step): new states after the \(what)")
            case 4:
                what = "release of \(chosen.map(\.index)) by \(owner)"
                let released = try await store.release(chosen.map { TaskAttempt(id: $0, attempt: attempt($0)) }, owner: owner)
                let attempts = Dictionary(uniqueKeysWithValues: chosen.map { ($0, attempt($0)) })
                let expected = apply(&model, chosen) { $0.released(by: owner, attempt: attempts[$0.id]!) }
                try expectEqual(released, Set(expected.keys), "step \(step): tasks released by the \(what)")
            case 5:
                what = "expiry of \(chosen.map(\.index)) at +\(now) s"
                let states = try await store.expire(chosen, now: at)
                let expected = apply(&model, chosen) { $0.expired(now: at) }
                try expectEqual(states, expected.mapValues(\.state), "step \(step): new states after the \(what)")
            case 6 where random.next() % 4 == 0:
                what = "force-fail of \(chosen.map(\.index))"
                let failed = try await store.forceFail(chosen.map { TaskFailure(id: $0, message: "dead letter \(step)") }, at: at)
                let expected = apply(&model, chosen) { $0.forceFailed(message: "dead letter \(step)", at: at) }
                try expectEqual(failed, Set(expected.keys), "step \(step): tasks failed by the \(what)")
            case 7 where random.next() % 4 == 0:
                what = "cancel of \(chosen.map(\.index))"
                let before = model
                let counts = try await store.cancel(chosen, at: at)
                let expected = apply(&model, chosen) { $0.cancelled(at: at) }
                let pending = expected.keys.filter { before[$0]?.state == .pending }.count
                try expectEqual(counts, CancelCounts(pending: pending, processing: expected.count - pending), "step \(step): counts of the \(what)")
            default:
                continue
            }
            let records = try await store.tasks(ids)
            for record in records {
                try expectSameRecord(record, model[record.id]!, "step \(step): task \(record.id.index) after the \(what)")
            }
            // The counters kept with the transitions, and the completion numbers of the terminal tasks.
            var expectedCounts = StateCounts()
            for record in model.values { expectedCounts[record.state] += 1 }
            let counts = try await store.counts(session)
            for state in TaskState.allCases {
                try expectEqual(counts[state], expectedCounts[state], "step \(step): \(state) tasks counted after the \(what)")
            }
            let numbers = records.filter(\.state.isTerminal).compactMap(\.completionSequence).sorted()
            try expectEqual(numbers, Array(0..<expectedCounts.terminal).map { $0 + 1 }, "step \(step): completion numbers after the \(what)")
            try expect(records.allSatisfy { $0.state.isTerminal || $0.completionSequence == nil }, "step \(step): live tasks have no completion number")
        }
        let states = Set(model.values.map(\.state))
        try expect(states.count >= 2, "the random walk reached several states: \(states)")
        try expect(staleRefusals >= 8, "the random walk sent stale transitions to held tasks \(staleRefusals) times (at least 8)")
    }

    /// Applies a rule to each task once, as the store must; returns the records it changed, by id.
    private func apply(_ model: inout [TaskID: TaskRecord], _ ids: [TaskID], _ rule: (TaskRecord) -> TaskRecord?) -> [TaskID: TaskRecord] {
        var changed: [TaskID: TaskRecord] = [:]
        for id in Set(ids) {
            guard let old = model[id], let new = rule(old) else { continue }
            model[id] = new
            changed[id] = new
        }
        return changed
    }

    private func expectSameRecord(_ actual: TaskRecord, _ expected: TaskRecord, _ what: String, file: String = #fileID, line: Int = #line) throws {
        func text(_ record: TaskRecord) -> String {
            "state=\(record.state.rawValue) owner=\(record.owner?.rawValue ?? "nil") attempt=\(record.attempt) "
                + "token=\(record.claimToken?.rawValue ?? "nil") retries=\(record.retries)/\(record.maxRetries) "
                + "error=\(record.lastError ?? "nil") output=\(record.output.map { "\($0)" } ?? "nil") "
                + "lease=\(record.leaseExpiry != nil) started=\(record.startedAt != nil) completed=\(record.completedAt != nil)"
        }
        try expectEqual(text(actual), text(expected), what, file: file, line: line)
        for (name, a, e) in [("leaseExpiry", actual.leaseExpiry, expected.leaseExpiry), ("startedAt", actual.startedAt, expected.startedAt),
            ("completedAt", actual.completedAt, expected.completedAt)] as [(String, Date?, Date?)]
        {
            if let e { try expectSameTime(a, e, "\(what): \(name)", file: file, line: line) }
        }
    }
}

/// A small, seeded pseudo-random generator, so a failing walk is the same walk every time.
struct SplitMix64 {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
