import Foundation
import GridKernel

extension StateConformance {
    /// The cases, one function each, against one fresh store.
    struct Cases: Sendable {
        let store: any StateStore
        /// The cases' time zero, in whole seconds; every time passed to the store is `at(seconds)`.
        let base: Date
        let agentA = AgentID("conformance-agent-a")
        let agentB = AgentID("conformance-agent-b")

        // MARK: Sessions

        func sessionRoundTrip() async throws {
            let options = SessionOptions(
                priority: 4, maxRetries: 7, taskTimeout: .seconds(90), labels: ["team": "risk", "run": "conformance"]
            )
            var ids: [SessionID] = []
            for n in 0..<5 {
                let id = SessionID.random()
                ids.append(id)
                try await store.createSession(SessionRecord(id: id, options: options, createdAt: at(n)))
            }
            for (n, id) in ids.enumerated() {
                let read = try await store.session(id)
                try expectEqual(read.id, id, "id of a session read back")
                try expectEqual(read.options, options, "options of session \(id)")
                try expectSameTime(read.createdAt, at(n), "createdAt of session \(id)")
                try expectEqual(read.taskCount, 0, "taskCount of a new session")
                try expectEqual(read.cancelled, false, "cancelled flag of a new session")
            }
            try await expectThrows(code: .conflict, "creating a session that exists") {
                try await store.createSession(SessionRecord(id: ids[0], options: SessionOptions(), createdAt: at(9)))
            }
            try expectEqual(try await store.session(ids[0]).options, options, "options after a refused duplicate")
            try await expectThrows(code: .notFound, "reading an unknown session") {
                try await store.session(SessionID.random())
            }

            var listed: [SessionRecord] = []
            var cursor: String?
            var pages = 0
            repeat {
                let page = try await store.sessions(after: cursor, limit: 2)
                try expect(page.items.count <= 2, "a page of sessions with limit 2 holds \(page.items.count)")
                listed += page.items
                cursor = page.next
                pages += 1
                try expect(pages <= 10_000, "paging through sessions ends")
            } while cursor != nil
            let listedIDs = listed.map(\.id)
            try expectEqual(listedIDs, listedIDs.sorted(), "sessions are listed in id order")
            try expectEqual(Set(listedIDs).count, listedIDs.count, "no session is listed twice")
            try expectEqual(listedIDs.filter(Set(ids).contains), ids.sorted(), "the case's sessions, listed")
            let first = try expectSome(listed.first { $0.id == ids[0] }, "session \(ids[0]) in the listing")
            try expectEqual(first.options, options, "options of a listed session")
        }

        func beginSubmissionReservesAtomically() async throws {
            let session = try await makeSession(tasks: 0).session
            let key = try SubmissionKey("first-submission")
            let first = try await store.beginSubmission(.begin(session: session, key: key, count: 3, at: at(1)))
            try expectEqual(first.range, 0..<3, "the first reservation")
            try expectEqual(first.key, key, "key of a begun submission")
            try expectEqual(first.session, session, "session of a begun submission")
            try expectEqual(first.sent, 0, "sent of a begun submission")
            try expectEqual(first.state, .open, "state of a begun submission")
            try expectEqual(first.version, 1, "version of a begun submission")
            try expectSameTime(first.createdAt, at(1), "createdAt of a begun submission")
            try expectSameTime(first.updatedAt, at(1), "updatedAt of a begun submission")
            let ranges = try await withThrowingTaskGroup(of: Range<Int>.self) { group in
                for count in 1...16 {
                    group.addTask {
                        try await store.beginSubmission(.begin(session: session, key: try SubmissionKey("k\(count)"), count: count, at: at(2))).range
                    }
                }
                // The same key eight times at once: one reservation, the same record for all.
                for _ in 0..<8 {
                    group.addTask {
                        try await store.beginSubmission(.begin(session: session, key: try SubmissionKey("same"), count: 5, at: at(3))).range
                    }
                }
                var ranges: [Range<Int>] = []
                for try await range in group { ranges.append(range) }
                return ranges
            }
            let same = try await store.beginSubmission(.begin(session: session, key: try SubmissionKey("same"), count: 99, at: at(4)))
            try expectEqual(same.count, 5, "count of a submission begun again with another count (the stored one is returned)")
            try expectEqual(ranges.filter { $0 == same.range }.count, 8, "concurrent beginnings with one key that got its range")
            let distinct = Set(ranges)
            try expectEqual(distinct.map(\.count).sorted(), (Array(1...16) + [5]).sorted(), "sizes of the concurrent reservations")
            var next = 3
            for range in distinct.sorted(by: { $0.lowerBound < $1.lowerBound }) {
                try expectEqual(range.lowerBound, next, "start of the reservation after index \(next - 1) (no gap, no overlap)")
                next = range.upperBound
            }
            try expectEqual(try await store.session(session).taskCount, next, "taskCount after all reservations")
            let empty = try await store.beginSubmission(.begin(session: session, key: try SubmissionKey("empty"), count: 0, at: at(5)))
            try expectEqual(empty.state, .complete, "state of a submission of no task")
            try expectEqual(try await store.session(session).taskCount, next, "taskCount after a submission of no task")
            _ = try await store.cancelSession(session, at: at(6))
            try await expectThrows(code: .conflict, "beginning a submission in a cancelled session") {
                try await store.beginSubmission(.begin(session: session, key: try SubmissionKey("late"), count: 1, at: at(7)))
            }
            try expectEqual(
                try await store.beginSubmission(.begin(session: session, key: key, count: 3, at: at(7))).range, 0..<3,
                "a submission begun before the cancel, begun again after it")
            try await expectThrows(code: .notFound, "beginning a submission in an unknown session") {
                try await store.beginSubmission(.begin(session: SessionID.random(), key: key, count: 1, at: at(7)))
            }
            try await expectThrows(code: .invalidArgument, "beginning a submission of a negative count") {
                try await store.beginSubmission(.begin(session: try await makeSession(tasks: 0).session, key: key, count: -1, at: at(7)))
            }
        }

        func submissionUpdatesAreConditional() async throws {
            let session = try await makeSession(tasks: 0).session
            let other = try await makeSession(tasks: 0).session
            func begin(_ session: SessionID, _ key: String, count: Int, at seconds: Int) async throws -> SubmissionRecord {
                try await store.beginSubmission(.begin(session: session, key: try SubmissionKey(key), count: count, at: at(seconds)))
            }
            let a = try await begin(session, "a", count: 10, at: 1)
            let b = try await begin(session, "b", count: 10, at: 2)
            let c = try await begin(other, "c", count: 10, at: 3)
            let d = try await begin(other, "d", count: 10, at: 4)
            let progressed = try expectSome(a.progressed(to: 4, at: at(10)), "progress of an open submission")
            try expect(try await store.updateSubmission(progressed, expectedVersion: a.version), "an update with the stored version applies")
            let read = try await begin(session, "a", count: 10, at: 11)
            try expectEqual(read.sent, 4, "sent after an update")
            try expectEqual(read.version, a.version + 1, "version after an update")
            try expectEqual(read.state, .open, "state after an update")
            try expectSameTime(read.updatedAt, at(10), "updatedAt after an update")
            try expectEqual(read.range, a.range, "range after an update")
            let stale = try expectSome(a.progressed(to: 9, at: at(12)), "progress from a stale read")
            try expect(!(try await store.updateSubmission(stale, expectedVersion: a.version)), "an update with a stale version is refused")
            try expectEqual(try await begin(session, "a", count: 10, at: 13).sent, 4, "sent after a refused update")
            let gone = SubmissionRecord.begin(session: session, key: try SubmissionKey("never"), count: 3, at: at(1))
            try expect(!(try await store.updateSubmission(gone, expectedVersion: 1)), "an update of an unknown submission is refused")
            let complete = try expectSome(b.progressed(to: 10, at: at(14)), "progress to the end")
            try expectEqual(complete.state, .complete, "state once every task is sent")
            try expect(try await store.updateSubmission(complete, expectedVersion: b.version), "completing a submission")
            let repairing = try expectSome(c.takenOverForRepair(at: at(15)), "a takeover of an open submission")
            try expect(try await store.updateSubmission(repairing, expectedVersion: c.version), "taking a submission over")

            let mine: Set<SubmissionKey> = [a.key, b.key, c.key, d.key]
            func stalled(before seconds: Int, limit: Int = 1_000) async throws -> [SubmissionKey] {
                try await store.stalledSubmissions(before: at(seconds), limit: limit).map(\.key).filter(mine.contains)
            }
            try expectEqual(try await stalled(before: 5), [d.key], "stalled before +5 s: d (a progressed at +10, b is complete, c repairing since +15)")
            try expectEqual(try await stalled(before: 16), [d.key, a.key, c.key], "stalled before +16 s, oldest update first")
            let limited = try await store.stalledSubmissions(before: at(16), limit: 1)
            try expectEqual(limited.count, 1, "stalled submissions with limit 1")
            let listed = try expectSome(try await store.stalledSubmissions(before: at(16), limit: 1_000).first { $0.key == c.key }, "c listed")
            try expectEqual(
                [listed.session.rawValue, listed.key.rawValue, "\(listed.range)", "\(listed.sent)", listed.state.rawValue, "\(listed.version)"],
                [c.session.rawValue, c.key.rawValue, "\(c.range)", "0", "repairing", "\(c.version + 1)"], "a listed submission, field by field")
            try expectSameTime(listed.createdAt, at(3), "createdAt of a listed submission")
            try expectSameTime(listed.updatedAt, at(15), "updatedAt of a listed submission")
            _ = try await store.deleteSession(other)
            try expectEqual(try await stalled(before: 16), [a.key], "stalled submissions after the session of c and d was deleted")
            try await expectThrows(code: .notFound, "beginning a submission in a deleted session") { try await begin(other, "c", count: 10, at: 17) }
        }

        // MARK: Tasks

        func createTasksIsIdempotent() async throws {
            let (session, ids) = try await makeSession(tasks: 10, maxRetries: 3)
            let created = try await store.task(ids[4])
            try expectEqual(created.id, ids[4], "id of a created task")
            try expectEqual(created.state, .pending, "state of a created task")
            try expectEqual(created.retries, 0, "retries of a created task")
            try expectEqual(created.maxRetries, 3, "maxRetries of a created task")
            try expectEqual(created.priority, 2, "priority of a created task")
            try expectEqual(created.timeout, .seconds(45), "timeout of a created task")
            try expectSameTime(created.submittedAt, base, "submittedAt of a created task")
            try expect(
                created.owner == nil && created.leaseExpiry == nil && created.startedAt == nil && created.completedAt == nil
                    && created.lastError == nil && created.output == nil,
                "a created task has no owner, lease, start, completion, error or output: \(created)"
            )
            _ = try await claim([ids[0]], by: agentA)
            let more = try await reserve(session, count: 5)
            let resubmitted = (ids + more).map { TaskRecord(id: $0, maxRetries: 1, priority: 9, submittedAt: at(30)) }
            try await store.createTasks(resubmitted)
            try await store.createTasks(resubmitted)
            let claimed = try await store.task(ids[0])
            try expectEqual(claimed.state, .processing, "state of a claimed task after it was created again")
            try expectEqual(claimed.owner, agentA, "owner of a claimed task after it was created again")
            let existing = try await store.task(ids[4])
            try expectEqual(existing.maxRetries, 3, "maxRetries of a task created again (the first record stays)")
            try expectEqual(existing.priority, 2, "priority of a task created again (the first record stays)")
            let added = try await store.task(more[0])
            try expectEqual(added.priority, 9, "priority of a task added by the repeated submission")
            try expectEqual(added.maxRetries, 1, "maxRetries of a task added by the repeated submission")
            try await expectCounts(session, [.pending: 14, .processing: 1])
        }

        func claimWinsOnlyForPendingUnowned() async throws {
            let (_, ids) = try await makeSession(tasks: 5)
            let won = try await store.claim([ids[0], ids[1]], owner: agentA, token: ClaimToken.random(), leaseExpiry: at(60), now: at(1))
            try expectEqual(Set(won.map(\.id)), [ids[0], ids[1]], "tasks won by the first claim")
            for record in won + [try await store.task(ids[0])] {
                try expectEqual(record.state, .processing, "state of claimed task \(record.id)")
                try expectEqual(record.owner, agentA, "owner of claimed task \(record.id)")
                try expectSameTime(record.startedAt, at(1), "startedAt of claimed task \(record.id)")
                try expectSameTime(record.leaseExpiry, at(60), "leaseExpiry of claimed task \(record.id)")
            }
            let second = try await store.claim([ids[1], ids[2]], owner: agentB, token: ClaimToken.random(), leaseExpiry: at(60), now: at(2))
            try expectEqual(second.map(\.id), [ids[2]], "a claim wins only the pending task of the two")
            try expectEqual(try await store.task(ids[1]).owner, agentA, "owner of a task claimed by another agent")

            _ = try await store.finish([try await completion(ids[0], nil)], owner: agentA, at: at(3))
            _ = try await store.cancel([ids[3]], at: at(3))
            let unknown = TaskID(session: SessionID.random(), index: 0)
            let terminal = try await store.claim([ids[0], ids[3], unknown], owner: agentB, token: ClaimToken.random(), leaseExpiry: at(60), now: at(4))
            try expect(terminal.isEmpty, "finished, cancelled and unknown tasks are not claimed, got \(terminal.map(\.id))")

            _ = try await store.fail([try await failure(ids[2], "retry me")], owner: agentB, at: at(5))
            let again = try await store.claim([ids[2]], owner: agentA, token: ClaimToken.random(), leaseExpiry: at(90), now: at(6))
            try expectEqual(again.map(\.id), [ids[2]], "a task back to pending after a failure is claimed again")
            try expectEqual(again.first?.retries, 1, "retries of a task claimed after one failure")
        }

        func exactlyOneWinnerAmongSixteenClaimers() async throws {
            let (_, ids) = try await makeSession(tasks: 100)
            let owners = (0..<16).map { AgentID("conformance-claimer-\($0)") }
            let expiry = at(60)
            let now = at(0)
            for id in ids.prefix(50) {
                let winners = try await withThrowingTaskGroup(of: AgentID?.self) { group in
                    for owner in owners {
                        group.addTask {
                            try await store.claim([id], owner: owner, token: ClaimToken.random(), leaseExpiry: expiry, now: now).isEmpty ? nil : owner
                        }
                    }
                    var winners: [AgentID] = []
                    for try await winner in group { winner.map { winners.append($0) } }
                    return winners
                }
                try expectEqual(winners.count, 1, "claimers of \(id) that won")
                try expectEqual(try await store.task(id).owner, winners.first, "owner of \(id)")
            }
            let rest = Array(ids.suffix(50))
            let results = try await withThrowingTaskGroup(of: (AgentID, [TaskID]).self) { group in
                for (n, owner) in owners.enumerated() {
                    let rotation = (n * 7) % rest.count
                    let order = Array(rest[rotation...] + rest[..<rotation])
                    group.addTask { (owner, try await store.claim(order, owner: owner, token: ClaimToken.random(), leaseExpiry: expiry, now: now).map(\.id)) }
                }
                var results: [(AgentID, [TaskID])] = []
                for try await result in group { results.append(result) }
                return results
            }
            var winners: [TaskID: [AgentID]] = [:]
            for (owner, won) in results {
                for id in won { winners[id, default: []].append(owner) }
            }
            for id in rest {
                try expectEqual(winners[id]?.count ?? 0, 1, "batch claimers of \(id) that won")
                try expectEqual(try await store.task(id).owner, winners[id]?.first, "owner of \(id)")
            }
        }

        func heartbeatRequiresOwner() async throws {
            let (_, ids) = try await makeSession(tasks: 3)
            _ = try await claim([ids[0], ids[1]], by: agentA, expiry: 30)
            let byB = try await store.heartbeat(try await attempts([ids[0], ids[1]]), owner: agentB, leaseExpiry: at(90))
            try expect(byB.isEmpty, "another agent's heartbeat holds nothing, got \(byB)")
            try expectSameTime(try await store.task(ids[0]).leaseExpiry, at(30), "leaseExpiry after another agent's heartbeat")
            let byA = try await store.heartbeat(try await attempts([ids[0], ids[2]]), owner: agentA, leaseExpiry: at(90))
            try expectEqual(byA, [ids[0]], "the owner's heartbeat holds its processing task, not a pending one")
            try expectSameTime(try await store.task(ids[0]).leaseExpiry, at(90), "leaseExpiry after the owner's heartbeat")
            try expectSameTime(try await store.task(ids[1]).leaseExpiry, at(30), "leaseExpiry of a task left out of the heartbeat")
            _ = try await store.finish([try await completion(ids[0], nil)], owner: agentA, at: at(5))
            let afterFinish = try await store.heartbeat(try await attempts([ids[0]]), owner: agentA, leaseExpiry: at(120))
            try expect(afterFinish.isEmpty, "a finished task is not held by a heartbeat, got \(afterFinish)")
        }

        func finishRequiresOwner() async throws {
            let (_, ids) = try await makeSession(tasks: 4)
            _ = try await claim([ids[0], ids[1], ids[3]], by: agentA)
            let byB = try await store.finish([try await completion(ids[0], [9])], owner: agentB, at: at(5))
            try expect(byB.isEmpty, "another agent finishes nothing, got \(byB)")
            let untouched = try await store.task(ids[0])
            try expectEqual(untouched.state, .processing, "state after another agent's finish")
            try expectEqual(untouched.owner, agentA, "owner after another agent's finish")
            try expectEqual(untouched.output, nil, "output after another agent's finish")

            let byA = try await store.finish(
                [
                    try await completion(ids[0], [1, 2, 3]), try await completion(ids[1], nil),
                    try await completion(ids[2], [4]), try await completion(ids[3], []),
                ],
                owner: agentA, at: at(7)
            )
            try expectEqual(byA, [ids[0], ids[1], ids[3]], "the owner finishes its processing tasks, not a pending one")
            for (id, output) in [(ids[0], [1, 2, 3]), (ids[1], nil), (ids[3], [])] as [(TaskID, [UInt8]?)] {
                let record = try await store.task(id)
                try expectEqual(record.state, .finished, "state of finished task \(id)")
                try expectEqual(record.output, output, "inline output of finished task \(id) (nil and empty kept apart)")
                try expectSameTime(record.completedAt, at(7), "completedAt of finished task \(id)")
                try expectSameTime(record.startedAt, at(0), "startedAt of finished task \(id)")
                try expectEqual(record.owner, nil, "owner of finished task \(id)")
                try expectEqual(record.leaseExpiry, nil, "leaseExpiry of finished task \(id)")
            }
            let pending = try await store.task(ids[2])
            try expectEqual(pending.state, .pending, "state of a pending task after a finish")
            try expectEqual(pending.output, nil, "output of a pending task after a finish")
            let twice = try await store.finish([try await completion(ids[0], [5])], owner: agentA, at: at(8))
            try expect(twice.isEmpty, "a finished task is not finished again, got \(twice)")
            try expectEqual(try await store.task(ids[0]).output, [1, 2, 3], "output after a second finish")
        }

        func failRetriesThenFails() async throws {
            let (_, ids) = try await makeSession(tasks: 2, maxRetries: 2)
            for attempt in 1...2 {
                _ = try await claim([ids[0]], by: agentA, now: attempt * 10)
                let states = try await store.fail([try await failure(ids[0], "boom \(attempt)")], owner: agentA, at: at(attempt * 10 + 1))
                try expectEqual(states, [ids[0]: .pending], "new state after failure \(attempt) of 2 allowed retries")
                let record = try await store.task(ids[0])
                try expectEqual(record.state, .pending, "state after failure \(attempt)")
                try expectEqual(record.retries, attempt, "retries after failure \(attempt)")
                try expectEqual(record.lastError, "boom \(attempt)", "lastError after failure \(attempt)")
                try expect(record.owner == nil && record.leaseExpiry == nil, "a retried task has no owner or lease: \(record)")
                try expectEqual(record.completedAt, nil, "completedAt of a retried task")
            }
            _ = try await claim([ids[0]], by: agentA, now: 30)
            let final = try await store.fail([try await failure(ids[0], "boom 3")], owner: agentA, at: at(31))
            try expectEqual(final, [ids[0]: .failed], "new state once retries reached the maximum")
            let failed = try await store.task(ids[0])
            try expectEqual(failed.state, .failed, "state once retries reached the maximum")
            try expectEqual(failed.retries, 2, "retries of a task failed for good")
            try expectEqual(failed.lastError, "boom 3", "lastError of a task failed for good")
            try expectSameTime(failed.completedAt, at(31), "completedAt of a task failed for good")
            try expectEqual(failed.owner, nil, "owner of a task failed for good")

            _ = try await claim([ids[1]], by: agentA)
            let byB = try await store.fail([try await failure(ids[1], "not mine")], owner: agentB, at: at(1))
            try expect(byB.isEmpty, "another agent fails nothing, got \(byB)")
            try expectEqual(try await store.task(ids[1]).state, .processing, "state after another agent's failure")
            let permanent = try await store.fail(
                [try await failure(ids[1], "bad input", retryable: false)], owner: agentA, at: at(2)
            )
            try expectEqual(permanent, [ids[1]: .failed], "a non-retryable failure fails the task at once")
            let record = try await store.task(ids[1])
            try expectEqual(record.retries, 0, "retries after a non-retryable failure")
            try expectEqual(record.lastError, "bad input", "lastError after a non-retryable failure")
        }

        func expiredLeasesFoundAndReaped() async throws {
            let (_, ids) = try await makeSession(tasks: 5, maxRetries: 1)
            let mine = Set(ids)
            _ = try await claim([ids[0], ids[1], ids[2]], by: agentA, expiry: 10)
            _ = try await claim([ids[3]], by: agentA, expiry: 100)
            func expired(at seconds: Int, limit: Int = 1_000) async throws -> [TaskRecord] {
                try await store.expiredLeases(now: at(seconds), limit: limit).filter { mine.contains($0.id) }
            }
            try expect(try await expired(at: 5).isEmpty, "no lease has expired at +5 s")
            let found = try await expired(at: 20)
            try expectEqual(Set(found.map(\.id)), [ids[0], ids[1], ids[2]], "tasks whose lease expired at +20 s")
            try expect(found.allSatisfy { $0.state == .processing && $0.owner == agentA }, "expired leases are processing tasks: \(found)")
            let limited = try await expired(at: 20, limit: 2)
            try expect((1...2).contains(limited.count), "expiredLeases with limit 2 returns 1 or 2 tasks, got \(limited.count)")

            _ = try await store.heartbeat(try await attempts([ids[2]]), owner: agentA, leaseExpiry: at(200))
            let reaped = try await store.expire(ids, now: at(20))
            try expectEqual(reaped, [ids[0]: .pending, ids[1]: .pending], "tasks reaped at +20 s (task 2 was heartbeated)")
            let retried = try await store.task(ids[0])
            try expectEqual(retried.state, .pending, "state of a reaped task")
            try expectEqual(retried.retries, 1, "retries of a reaped task")
            try expect(retried.lastError?.contains("lease expired") ?? false, "lastError of a reaped task: \(retried.lastError ?? "nil")")
            try expect(retried.owner == nil && retried.leaseExpiry == nil, "a reaped task has no owner or lease: \(retried)")
            try expectEqual(try await store.task(ids[2]).state, .processing, "state of the heartbeated task")
            try expectEqual(try await store.task(ids[3]).state, .processing, "state of a task whose lease runs")
            try expectEqual(try await store.task(ids[4]).state, .pending, "state of a task never claimed")
            let lost = try await store.heartbeat(try await attempts([ids[1]]), owner: agentA, leaseExpiry: at(300))
            try expect(lost.isEmpty, "the former owner of a reaped task cannot heartbeat it, got \(lost)")
            try expect(try await expired(at: 50).isEmpty, "no lease has expired at +50 s after reaping")

            _ = try await store.claim([ids[0]], owner: agentB, token: ClaimToken.random(), leaseExpiry: at(30), now: at(21))
            try expectEqual(try await store.expire([ids[0]], now: at(40)), [ids[0]: .failed], "reaping a task out of retries")
            let failed = try await store.task(ids[0])
            try expectEqual(failed.state, .failed, "state of a task reaped out of retries")
            try expectSameTime(failed.completedAt, at(40), "completedAt of a task reaped out of retries")
            try expect(try await store.expire([ids[0]], now: at(41)).isEmpty, "a failed task is not reaped again")
        }

        func cancelPendingAndProcessing() async throws {
            let (_, ids) = try await makeSession(tasks: 6)
            _ = try await claim(Array(ids[2...5]), by: agentA)
            _ = try await store.finish([try await completion(ids[4], [1])], owner: agentA, at: at(5))
            _ = try await store.fail([try await failure(ids[5], "bad", retryable: false)], owner: agentA, at: at(5))
            let unknown = TaskID(session: SessionID.random(), index: 0)
            let counts = try await store.cancel(ids + [unknown], at: at(9))
            try expectEqual(counts, CancelCounts(pending: 2, processing: 2), "tasks cancelled, by former state")
            for id in ids[0...3] {
                let record = try await store.task(id)
                try expectEqual(record.state, .cancelled, "state of cancelled task \(id)")
                try expectEqual(record.owner, nil, "owner of cancelled task \(id)")
                try expectEqual(record.leaseExpiry, nil, "leaseExpiry of cancelled task \(id)")
                try expectSameTime(record.completedAt, at(9), "completedAt of cancelled task \(id)")
            }
            try expectEqual(try await store.task(ids[4]).state, .finished, "a finished task is not cancelled")
            try expectEqual(try await store.task(ids[5]).state, .failed, "a failed task is not cancelled")
            let held = try await store.heartbeat(try await attempts([ids[2], ids[3]]), owner: agentA, leaseExpiry: at(90))
            try expect(held.isEmpty, "the former owner of a cancelled task cannot heartbeat it, got \(held)")
            let finished = try await store.finish([try await completion(ids[2], [1])], owner: agentA, at: at(10))
            try expect(finished.isEmpty, "the former owner of a cancelled task cannot finish it, got \(finished)")
            let failed = try await store.fail([try await failure(ids[3], "late")], owner: agentA, at: at(10))
            try expect(failed.isEmpty, "the former owner of a cancelled task cannot fail it, got \(failed)")
            try expectEqual(try await store.task(ids[2]).output, nil, "output of a cancelled task")
            let reclaimed = try await claim([ids[0]], by: agentB)
            try expect(reclaimed.isEmpty, "a cancelled task cannot be claimed")
            try expectEqual(try await store.cancel(ids, at: at(11)), CancelCounts(), "cancelling again cancels nothing")
        }

        func cancelSessionCancelsAll() async throws {
            let (session, ids) = try await makeSession(tasks: 5)
            let (other, _) = try await makeSession(tasks: 2)
            _ = try await claim([ids[2], ids[3], ids[4]], by: agentA)
            _ = try await store.finish([try await completion(ids[4], nil)], owner: agentA, at: at(5))
            let counts = try await store.cancelSession(session, at: at(9))
            try expectEqual(counts, CancelCounts(pending: 2, processing: 2), "tasks cancelled with the session")
            try expectEqual(try await store.session(session).cancelled, true, "cancelled flag of a cancelled session")
            try await expectCounts(session, [.cancelled: 4, .finished: 1])
            let held = try await store.heartbeat(try await attempts([ids[2], ids[3]]), owner: agentA, leaseExpiry: at(90))
            try expect(held.isEmpty, "the former owner of a task of a cancelled session cannot heartbeat it, got \(held)")
            try expectEqual(try await store.session(other).cancelled, false, "cancelled flag of another session")
            try await expectCounts(other, [.pending: 2])
            try expectEqual(try await store.cancelSession(session, at: at(10)), CancelCounts(), "cancelling a session again")
        }

        func deleteSessionRemovesEverything() async throws {
            let total = 12_000
            let (session, ids) = try await makeSession(tasks: total)
            let (other, otherIDs) = try await makeSession(tasks: 2)
            _ = try await claim(Array(ids[0..<4]) + [otherIDs[0]], by: agentA, expiry: 10)
            _ = try await store.finish([try await completion(ids[0], [7])], owner: agentA, at: at(5))
            _ = try await store.fail([try await failure(ids[1], "bad", retryable: false)], owner: agentA, at: at(5))
            _ = try await store.cancel([ids[4]], at: at(5))
            try expectEqual(try await store.deleteSession(session), total, "task records removed with the session")

            try await expectThrows(code: .notFound, "reading a deleted session") { try await store.session(session) }
            for id in [ids[0], ids[2], ids[4], ids[total - 1]] {
                try await expectThrows(code: .notFound, "reading task \(id) of a deleted session") { try await store.task(id) }
            }
            try await expectCounts(session, [:])
            let listed = try await store.sessions(after: nil, limit: 1_000).items.map(\.id)
            try expectEqual(listed, [other], "sessions listed after a delete")
            for state in TaskState.allCases {
                let page = try await store.tasks(session, state: state, after: nil, limit: 100)
                try expect(page.items.isEmpty && page.next == nil, "\(state) tasks of a deleted session: \(page.items.count)")
            }
            let expired = try await store.expiredLeases(now: at(50), limit: 1_000).map(\.id)
            try expectEqual(expired, [otherIDs[0]], "expired leases after a delete (only the other session's)")
            // Tasks 2 and 3 were in their first attempt when the session was deleted.
            let held = try await store.heartbeat([TaskAttempt(id: ids[2], attempt: 1), TaskAttempt(id: ids[3], attempt: 1)], owner: agentA, leaseExpiry: at(90))
            try expect(held.isEmpty, "the former owner of a task of a deleted session cannot heartbeat it, got \(held)")
            let finished = try await store.finish([TaskCompletion(id: ids[2], attempt: 1, output: nil)], owner: agentA, at: at(10))
            try expect(finished.isEmpty, "the former owner of a task of a deleted session cannot finish it, got \(finished)")
            let failed = try await store.fail([TaskFailure(id: ids[3], attempt: 1, message: "late")], owner: agentA, at: at(10))
            try expect(failed.isEmpty, "the former owner of a task of a deleted session cannot fail it, got \(failed)")
            try await expectCounts(other, [.pending: 1, .processing: 1])
            try await expectThrows(code: .notFound, "deleting a deleted session") { try await store.deleteSession(session) }
            try await expectThrows(code: .notFound, "deleting an unknown session") { try await store.deleteSession(SessionID.random()) }
        }

        func forceFailSkipsTerminal() async throws {
            let (_, ids) = try await makeSession(tasks: 5)
            _ = try await claim([ids[1], ids[2]], by: agentA)
            _ = try await store.finish([try await completion(ids[2], nil)], owner: agentA, at: at(5))
            _ = try await store.cancel([ids[3]], at: at(5))
            let unknown = TaskID(session: SessionID.random(), index: 0)
            let failed = try await store.forceFail(
                (ids + [unknown]).map { TaskFailure(id: $0, message: "dead-lettered", retryable: true) }, at: at(9)
            )
            try expectEqual(failed, [ids[0], ids[1], ids[4]], "tasks force-failed: the pending and processing ones")
            for id in [ids[0], ids[1], ids[4]] {
                let record = try await store.task(id)
                try expectEqual(record.state, .failed, "state of force-failed task \(id) (even when retryable)")
                try expectEqual(record.lastError, "dead-lettered", "lastError of force-failed task \(id)")
                try expectEqual(record.owner, nil, "owner of force-failed task \(id)")
                try expectSameTime(record.completedAt, at(9), "completedAt of force-failed task \(id)")
            }
            try expectEqual(try await store.task(ids[2]).state, .finished, "a finished task is not force-failed")
            let cancelled = try await store.task(ids[3])
            try expectEqual(cancelled.state, .cancelled, "a cancelled task is not force-failed")
            try expectEqual(cancelled.lastError, nil, "lastError of a cancelled task after forceFail")
            let held = try await store.heartbeat(try await attempts([ids[1]]), owner: agentA, leaseExpiry: at(90))
            try expect(held.isEmpty, "the former owner of a force-failed task cannot heartbeat it, got \(held)")
        }

        func notFoundErrors() async throws {
            let (session, _) = try await makeSession(tasks: 1)
            try await expectThrows(code: .notFound, "reading a task index that was never created") {
                try await store.task(TaskID(session: session, index: 5))
            }
            try await expectThrows(code: .notFound, "reading a task of an unknown session") {
                try await store.task(TaskID(session: SessionID.random(), index: 0))
            }
            try await expectThrows(code: .notFound, "reading an unknown session") {
                try await store.session(SessionID.random())
            }
            try await expectThrows(code: .notFound, "beginning a submission in an unknown session") {
                try await reserve(SessionID.random(), count: 1)
            }
            try await expectThrows(code: .notFound, "cancelling an unknown session") {
                try await store.cancelSession(SessionID.random(), at: at(1))
            }
        }

        func countsByState() async throws {
            let (session, ids) = try await makeSession(tasks: 10)
            let (other, _) = try await makeSession(tasks: 4)
            _ = try await claim(Array(ids[0..<6]), by: agentA)
            _ = try await store.finish(try await completions(Array(ids[0...2]), nil), owner: agentA, at: at(5))
            _ = try await store.fail([try await failure(ids[3], "bad", retryable: false)], owner: agentA, at: at(5))
            _ = try await store.cancel([ids[6]], at: at(5))
            try await expectCounts(session, [.pending: 3, .processing: 2, .finished: 3, .failed: 1, .cancelled: 1])
            try await expectCounts(other, [.pending: 4])
        }

        func pagingHundredThousandTasksByState() async throws {
            let total = 100_000
            let session = try await makeSession(tasks: 0).session
            try expectEqual(try await reserve(session, count: total).map(\.index), Array(0..<total), "reserved indices")
            for start in stride(from: 0, to: total, by: 5_000) {
                try await store.createTasks((start..<(start + 5_000)).map { record(TaskID(session: session, index: $0)) })
            }
            func expectedState(_ index: Int) -> TaskState {
                switch index % 10 {
                case 1: .finished
                case 2: .failed
                case 3: .processing
                case 4: .cancelled
                default: .pending
                }
            }
            func ids(_ state: TaskState) -> [TaskID] {
                (0..<total).filter { expectedState($0) == state }.map { TaskID(session: session, index: $0) }
            }
            for batch in chunks(ids(.finished) + ids(.failed) + ids(.processing), of: 1_000) {
                try expectEqual(try await claim(batch, by: agentA).count, batch.count, "tasks claimed in a batch of \(batch.count)")
            }
            for batch in chunks(ids(.finished), of: 1_000) {
                let done = try await store.finish(try await completions(batch, nil), owner: agentA, at: at(5))
                try expectEqual(done.count, batch.count, "tasks finished in a batch")
            }
            for batch in chunks(ids(.failed), of: 1_000) {
                let batchFailures = try await failures(batch, "bad", retryable: false)
                try expectEqual(try await store.fail(batchFailures, owner: agentA, at: at(5)).count, batch.count, "tasks failed in a batch")
            }
            for batch in chunks(ids(.cancelled), of: 1_000) {
                try expectEqual(try await store.cancel(batch, at: at(5)).pending, batch.count, "tasks cancelled in a batch")
            }
            let expected: [TaskState: Int] = [
                .pending: total / 10 * 6, .processing: total / 10, .finished: total / 10, .failed: total / 10,
                .cancelled: total / 10,
            ]
            try await expectCounts(session, expected)

            var seen = [Bool](repeating: false, count: total)
            for state in TaskState.allCases {
                var cursor: String?
                var last = -1
                var count = 0
                var pages = 0
                repeat {
                    let page = try await store.tasks(session, state: state, after: cursor, limit: 1_000)
                    try expect(page.items.count <= 1_000, "a page of \(state) tasks with limit 1000 holds \(page.items.count)")
                    for record in page.items {
                        let index = record.id.index
                        try expect(record.id.session == session && (0..<total).contains(index), "a listed task of the session: \(record.id)")
                        try expect(record.state == state && expectedState(index) == state, "task \(index) listed as \(state) is \(record.state)")
                        try expect(index > last, "\(state) tasks in index order: \(index) after \(last)")
                        try expect(!seen[index], "task \(index) listed once")
                        seen[index] = true
                        last = index
                        count += 1
                    }
                    cursor = page.next
                    pages += 1
                    try expect(pages <= total / 1_000 + 10, "paging through \(state) tasks ends")
                } while cursor != nil
                try expectEqual(count, expected[state] ?? 0, "\(state) tasks listed")
            }
            try expect(!seen.contains(false), "every task is listed in some state")
        }

        func malformedCursorRejected() async throws {
            let (session, _) = try await makeSession(tasks: 3)
            for cursor in ["not a cursor!", "%%%"] {
                try await expectThrows(code: .invalidArgument, "listing tasks after the malformed cursor '\(cursor)'") {
                    try await store.tasks(session, state: .pending, after: cursor, limit: 10)
                }
                try await expectThrows(code: .invalidArgument, "listing sessions after the malformed cursor '\(cursor)'") {
                    try await store.sessions(after: cursor, limit: 10)
                }
            }
            let first = try await store.tasks(session, state: .pending, after: nil, limit: 2)
            try expectEqual(first.items.map(\.id.index), [0, 1], "indices of the first page")
            let next = try expectSome(first.next, "cursor after the first of two pages")
            let second = try await store.tasks(session, state: .pending, after: next, limit: 2)
            try expectEqual(second.items.map(\.id.index), [2], "indices of the second page")
            try expectEqual(second.next, nil, "cursor after the last page")
        }

        // MARK: Helpers

        func at(_ seconds: Int) -> Date { base.addingTimeInterval(TimeInterval(seconds)) }

        func record(_ id: TaskID, maxRetries: Int = SessionOptions.defaultMaxRetries) -> TaskRecord {
            TaskRecord(id: id, maxRetries: maxRetries, priority: 2, timeout: .seconds(45), submittedAt: base)
        }

        /// Creates a session with `count` pending tasks.
        func makeSession(
            tasks count: Int, maxRetries: Int = SessionOptions.defaultMaxRetries
        ) async throws -> (session: SessionID, ids: [TaskID]) {
            let session = SessionID.random()
            try await store.createSession(
                SessionRecord(id: session, options: SessionOptions(priority: 2, maxRetries: maxRetries), createdAt: base)
            )
            guard count > 0 else { return (session, []) }
            let ids = try await reserve(session, count: count)
            try await store.createTasks(ids.map { record($0, maxRetries: maxRetries) })
            return (session, ids)
        }

        /// Reserves `count` indices through a submission with a fresh key.
        func reserve(_ session: SessionID, count: Int) async throws -> [TaskID] {
            try await store.beginSubmission(.begin(session: session, key: .random(), count: count, at: base)).taskIDs
        }

        /// The current attempts of tasks (0 for those that do not exist), read in one batch.
        func currentAttempts(_ ids: [TaskID]) async throws -> [TaskID: Int] {
            Dictionary(try await store.tasks(ids).map { ($0.id, $0.attempt) }, uniquingKeysWith: { $1 })
        }

        func attempts(_ ids: [TaskID]) async throws -> [TaskAttempt] {
            let current = try await currentAttempts(ids)
            return ids.map { TaskAttempt(id: $0, attempt: current[$0] ?? 0) }
        }

        func completion(_ id: TaskID, _ output: [UInt8]?) async throws -> TaskCompletion {
            try await completions([id], output)[0]
        }

        func completions(_ ids: [TaskID], _ output: [UInt8]?) async throws -> [TaskCompletion] {
            let current = try await currentAttempts(ids)
            return ids.map { TaskCompletion(id: $0, attempt: current[$0] ?? 0, output: output) }
        }

        func failure(_ id: TaskID, _ message: String, retryable: Bool = true) async throws -> TaskFailure {
            try await failures([id], message, retryable: retryable)[0]
        }

        func failures(_ ids: [TaskID], _ message: String, retryable: Bool = true) async throws -> [TaskFailure] {
            let current = try await currentAttempts(ids)
            return ids.map { TaskFailure(id: $0, attempt: current[$0] ?? 0, message: message, retryable: retryable) }
        }

        /// Claims at `now` seconds with a lease to `expiry` seconds.
        func claim(_ ids: [TaskID], by owner: AgentID, expiry: Int = 60, now: Int = 0) async throws -> [TaskRecord] {
            try await store.claim(ids, owner: owner, token: ClaimToken.random(), leaseExpiry: at(expiry), now: at(now))
        }

        func expectCounts(
            _ session: SessionID, _ expected: [TaskState: Int], file: String = #fileID, line: Int = #line
        ) async throws {
            let counts = try await store.counts(session)
            for state in TaskState.allCases {
                try expectEqual(counts[state], expected[state] ?? 0, "\(state) tasks counted", file: file, line: line)
            }
        }

        func chunks(_ ids: [TaskID], of size: Int) -> [[TaskID]] {
            stride(from: 0, to: ids.count, by: size).map { Array(ids[$0..<min($0 + size, ids.count)]) }
        }
    }
}
