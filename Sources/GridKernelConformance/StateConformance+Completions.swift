import Foundation
import GridKernel

extension StateConformance.Cases {
    // MARK: Completion order and counts

    /// Tasks become terminal in an order unrelated to their indices, by every kind of transition; the
    /// completion order lists each exactly once, numbered 1, 2, 3, … in the order of the transitions,
    /// page by page; retries, repeated finishes and stale runs add nothing; another session counts from
    /// 1; a deleted session has none.
    func completionOrderFollowsTheTransitions() async throws {
        let (session, ids) = try await makeSession(tasks: 12, maxRetries: 1)
        let (other, otherIDs) = try await makeSession(tasks: 2)
        _ = try await claim(ids, by: agentA)
        var expected: [TaskID] = []

        _ = try await store.finish(try await completions([ids[7], ids[2]], [7]), owner: agentA, at: at(1))
        expected += [ids[7], ids[2]]  // one batch: either order within it
        _ = try await store.fail([try await failure(ids[5], "retry me")], owner: agentA, at: at(2))  // back to pending
        _ = try await store.fail([try await failure(ids[9], "for good", retryable: false)], owner: agentA, at: at(2))
        expected.append(ids[9])
        _ = try await store.finish([try await completion(ids[7], [9])], owner: agentA, at: at(3))  // already finished
        _ = try await store.cancel([ids[0]], at: at(4))
        expected.append(ids[0])
        _ = try await store.finish([try await completion(otherIDs[1], nil)], owner: agentA, at: at(4))  // not claimed: no-op
        _ = try await claim([otherIDs[1]], by: agentB)
        _ = try await store.finish([try await completion(otherIDs[1], nil)], owner: agentB, at: at(4))
        _ = try await store.expire([ids[11]], now: at(100))  // lease expired, a retry left: pending
        _ = try await claim([ids[11]], by: agentB, expiry: 150, now: 100)
        _ = try await store.expire([ids[11]], now: at(200))  // no retry left: failed
        expected.append(ids[11])
        _ = try await store.forceFail([TaskFailure(id: ids[4], message: "dead letter")], at: at(201))
        expected.append(ids[4])
        _ = try await store.finish([try await completion(ids[3], nil)], owner: agentA, at: at(202))
        expected.append(ids[3])
        _ = try await store.cancel(ids, at: at(203))  // the five still live, in one call
        let live = Set(ids).subtracting(expected)
        try expectEqual(live.count, 5, "tasks still live before the final cancel")

        let all = try await store.completions(session, after: 0, limit: 100)
        try expectEqual(all.map(\.completionSequence), Array(1...12).map { Optional($0) }, "completion numbers in order")
        try expectEqual(Set(all.prefix(2).map(\.id)), Set(expected.prefix(2)), "the first batch of finishes comes first")
        try expectEqual(Array(all[2..<6].map(\.id)), Array(expected[2..<6]), "then one task per call, in the order of the calls")
        try expectEqual(Set(all.suffix(5).map(\.id)), live, "the last cancel comes last")
        try expect(all.allSatisfy { $0.state.isTerminal }, "only terminal tasks are in the completion order")

        var paged: [TaskRecord] = []
        while true {
            let page = try await store.completions(session, after: paged.count, limit: 5)
            if page.isEmpty { break }
            try expect(page.count <= 5, "a page holds at most its limit")
            paged += page
        }
        try expectEqual(paged.map(\.id), all.map(\.id), "paging five at a time reads the same order")
        try expectEqual(try await store.completions(session, after: 12, limit: 10).count, 0, "nothing after the last number")
        let numbers = Dictionary(uniqueKeysWithValues: try await store.tasks(ids).map { ($0.id, $0.completionSequence) })
        for record in all { try expectEqual(numbers[record.id] ?? nil, record.completionSequence, "task \(record.id.index) read alone") }

        let others = try await store.completions(other, after: 0, limit: 10)
        try expectEqual(others.map(\.id), [otherIDs[1]], "the other session's completion order")
        try expectEqual(others.first?.completionSequence, 1, "another session numbers from 1")
        let pendingOther = try await store.task(otherIDs[0])
        try expectEqual(pendingOther.completionSequence, nil, "a pending task has no completion number")
        try await expectThrows(code: .invalidArgument, "a negative completion cursor") {
            try await store.completions(session, after: -1, limit: 10)
        }
        try await expectThrows(code: .invalidArgument, "a limit of 0") { try await store.completions(session, after: 0, limit: 0) }

        _ = try await store.deleteSession(session)
        try expectEqual(try await store.completions(session, after: 0, limit: 10).count, 0, "a deleted session's completion order")
        try await expectCounts(session, [:])
    }

    /// Eight agents finish and fail 480 tasks in small batches while a reader follows the completion
    /// order: the reader gets every task exactly once, numbered without a gap, and the counts agree.
    func completionOrderUnderConcurrentWriters() async throws {
        let total = 480
        let (session, ids) = try await makeSession(tasks: total, maxRetries: 0)
        let writers = 8
        let agents = (0..<writers).map { AgentID("conformance-writer-\($0)") }
        async let written: Void = withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<writers {
                group.addTask {
                    let mine = ids.enumerated().filter { $0.offset % writers == writer }.map(\.element)
                    for batch in chunks(mine, of: 3) {
                        let owned = try await store.claim(batch, owner: agents[writer], token: .random(), leaseExpiry: at(60), now: at(0))
                        let finishing = owned.filter { $0.id.index % 5 != 0 }
                        _ = try await store.finish(
                            finishing.map { TaskCompletion(id: $0.id, attempt: $0.attempt, output: nil) }, owner: agents[writer], at: at(1))
                        let failing = owned.filter { $0.id.index % 5 == 0 }
                        _ = try await store.fail(
                            failing.map { TaskFailure(id: $0.id, attempt: $0.attempt, message: "x", retryable: true) },
                            owner: agents[writer], at: at(1))
                    }
                }
            }
            try await group.waitForAll()
        }
        var seen: [TaskID] = []
        var cursor = 0
        var reads = 0
        // A bound for a store that loses a number (the reader would wait for ever), generous for slow
        // emulators under load (moto serves one request at a time).
        let deadline = ContinuousClock.now.advanced(by: .seconds(300))
        while cursor < total {
            try expect(ContinuousClock.now < deadline, "all \(total) completions read within 300 s (read \(seen.count))")
            let page = try await store.completions(session, after: cursor, limit: 50)
            reads += 1
            for record in page {
                cursor += 1
                try expectEqual(record.completionSequence, cursor, "completion number read after \(cursor - 1)")
                seen.append(record.id)
            }
            if page.isEmpty {
                // Nothing new yet: wait for the writers (the deadline above fails a store that loses a number).
                _ = try await store.waitForCompletions(session, after: cursor, timeout: .seconds(30))
            }
        }
        try await written
        try expectEqual(Set(seen).count, total, "distinct tasks read in completion order")
        try expectEqual(Set(seen), Set(ids), "the tasks read are the session's")
        try expectEqual(try await store.completions(session, after: total, limit: 10).count, 0, "nothing after the last task")
        try await expectCounts(session, [.finished: total - total / 5, .failed: total / 5])
        try expect(reads >= 2, "the reader read while the writers wrote (\(reads) reads)")
    }

    /// A waiter for the next completion returns `true` once another task finishes it, at once when the
    /// session is already past its number, and `false` when nothing completes before its timeout.
    func waitForCompletionsWakesAWaiter() async throws {
        let (session, ids) = try await makeSession(tasks: 3)
        _ = try await claim(ids, by: agentA)
        let idle = try await store.waitForCompletions(session, after: 0, timeout: .milliseconds(30))
        try expect(!idle, "a wait with nothing completing ends with false at its timeout")
        let store = self.store
        let started = ContinuousClock.now
        let waiter = Task { try await store.waitForCompletions(session, after: 0, timeout: .seconds(60)) }
        _ = try await store.finish([try await completion(ids[1], nil)], owner: agentA, at: at(1))
        let woken = try await waiter.value
        try expect(woken, "a waiter is woken by a finish (60 s timeout)")
        try expect(ContinuousClock.now - started < .seconds(40), "the waiter woke long before its 60 s timeout")
        try expect(try await store.waitForCompletions(session, after: 0, timeout: .zero), "a session already past the number")
        try expect(!(try await store.waitForCompletions(session, after: 1, timeout: .zero)), "a session not past the number")
        let second = Task { try await store.waitForCompletions(session, after: 1, timeout: .seconds(60)) }
        _ = try await store.cancel([ids[2]], at: at(2))
        try expect(try await second.value, "a waiter is woken by a cancel")
    }
}
