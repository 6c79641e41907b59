import Foundation
import GridKernel

extension GridConformance {
    /// The cases, one function each, against one set of fresh backends.
    struct Cases: Sendable {
        let queueFaults = Faults()
        let stateFaults = Faults()
        let backends: GridBackends
        let time: Timeline

        init(backends real: GridBackends, time: Timeline) {
            let stateFaults = self.stateFaults
            backends = GridBackends(
                queue: FaultyQueue(base: real.queue, faults: queueFaults),
                state: InterceptingStateStore(real.state) { point in
                    if point.operation == "createTasks" && !point.applied { try stateFaults.check("createTasks") }
                },
                payloads: real.payloads)
            self.time = time
        }

        /// Inputs above 16 bytes go to the payload store: every third input here.
        private var client: GridClient {
            GridClient(
                backends: backends, configuration: ClientConfiguration(inlinePayloadLimit: 16, submitBatchSize: 10, retryTimeout: .zero),
                clock: time.clock)
        }

        private func inputs(_ count: Int) -> [[UInt8]] {
            (0..<count).map { index in
                let text = index % 3 == 0 ? "input \(index) stored in the payload store, above the inline limit" : "in \(index)"
                return Array(text.utf8)
            }
        }

        func repeatedSubmissionCreatesNoDuplicates() async throws {
            let session = try await client.createSession().id
            let key = try SubmissionKey("repeat-me")
            let first = try await client.submit(session, inputs: inputs(25), key: key)
            let second = try await client.submit(session, inputs: inputs(25), key: key)
            try expectEqual(second, first, "ids of the same submission sent again")
            try expectEqual(first.map(\.index), Array(0..<25), "indices of the submission")
            try expectEqual(try await backends.state.session(session).taskCount, 25, "indices reserved by a submission sent twice")
            try await expectThrows(code: .conflict, "the key used again for another number of tasks") {
                try await client.submit(session, inputs: inputs(26), key: key)
            }
            let other = try await client.submit(session, inputs: inputs(5), key: try SubmissionKey("another"))
            try expectEqual(other.map(\.index), Array(25..<30), "indices of a submission under another key")
            let messages = try await leaseAll()
            try expectEqual(messages.count, 30, "messages for 30 tasks submitted (one submission twice)")
            try expectEqual(Set(messages.map(\.id)).count, 30, "distinct tasks among the messages")
            let counts = try await backends.state.counts(session)
            try expectEqual(counts[.pending], 30, "pending tasks")
        }

        func interruptedSubmissionResumesWithItsKey() async throws {
            let session = try await client.createSession().id
            let key = try SubmissionKey("resume-me")
            let inputs = inputs(35)
            // Batch 2's records are written, its enqueue fails.
            queueFaults.fail(calls: [2])
            try await expectThrows(code: .unavailable, "a submission whose second enqueue fails") {
                try await client.submit(session, inputs: inputs, key: key)
            }
            queueFaults.heal()
            let open = try await backends.state.beginSubmission(.begin(session: session, key: key, count: 35, at: time.clock.now))
            try expectEqual(open.state, .open, "state of the interrupted submission")
            try expectEqual(open.sent, 10, "tasks recorded as sent before the failure (one batch of 10)")
            // Sent again, it resumes at batch 2 and fails again, this time writing the records of batch 3.
            stateFaults.fail(calls: [2])
            try await expectThrows(code: .unavailable, "the submission sent again, whose state store fails in batch 3") {
                try await client.submit(session, inputs: inputs, key: key)
            }
            stateFaults.heal()
            let again = try await backends.state.beginSubmission(.begin(session: session, key: key, count: 35, at: time.clock.now))
            try expectEqual(again.sent, 20, "tasks recorded as sent after the second try")
            let ids = try await client.submit(session, inputs: inputs, key: key)
            try expectEqual(ids.map(\.index), Array(0..<35), "ids of the resumed submission")
            try expectEqual(try await backends.state.session(session).taskCount, 35, "indices reserved by a resumed submission")
            let done = try await backends.state.beginSubmission(.begin(session: session, key: key, count: 35, at: time.clock.now))
            try expectEqual(done.state, .complete, "state of the resumed submission")
            let records = try await backends.state.tasks(ids)
            try expectEqual(records.count, 35, "records of the resumed submission")
            try expect(records.allSatisfy { $0.state == .pending }, "every task of the resumed submission is pending")
            let messages = try await leaseAll()
            try expectEqual(Set(messages.map(\.id)), Set(ids), "tasks with a message after the resumed submission")
            try expect(messages.count <= 35 + 10, "messages sent twice are at most the interrupted batch: \(messages.count)")
            let inline = Set(messages.filter { $0.payload != nil }.map(\.id))
            try expectEqual(inline.count, ids.filter { $0.index % 3 != 0 }.count, "tasks whose input travels inline")
            let stored = try await backends.payloads.get(ids.filter { $0.index % 3 == 0 }.map(PayloadKey.input))
            try expectEqual(stored.count, 12, "inputs in the payload store")
        }

        func interruptedSubmissionIsRepaired() async throws {
            let session = try await client.createSession().id
            let key = try SubmissionKey("repair-me")
            // Batch 1 is sent whole; batch 2 gets its records but its enqueue fails; batches 3 and 4
            // are never written.
            queueFaults.fail(calls: [2])
            let submitted = ContinuousClock.now
            try await expectThrows(code: .unavailable, "a submission interrupted in its second batch") {
                try await client.submit(session, inputs: inputs(35), key: key)
            }
            queueFaults.heal()
            let grace = time.units(1)
            let reaper = Reaper(backends: backends, configuration: ReaperConfiguration(submissionGrace: grace), clock: time.clock)
            let early = try await reaper.runOnce()
            if early.submissionsRepaired != 0 && !(time.clock is ManualClock) && ContinuousClock.now - submitted >= grace {
                // On real time, a slow machine let the grace period pass before the first look.
                var failure = ConformanceFailure(
                    expectation: "a first reaper pass within the grace period of \(grace), but it came \(ContinuousClock.now - submitted) after the submission",
                    file: #fileID, line: #line)
                failure.inconclusive = true
                throw failure
            }
            try expectEqual(early.submissionsRepaired, 0, "submissions repaired before the grace period passed")
            var report = ReaperReport()
            try await time.eventually(after: grace * 2, within: grace * 20, "the reaper repairs the interrupted submission") {
                report = try await reaper.runOnce()
                return report.submissionsRepaired == 1
            }
            let ids = (0..<35).map { TaskID(session: session, index: $0) }
            let records = Dictionary(uniqueKeysWithValues: try await backends.state.tasks(ids).map { ($0.id, $0) })
            try expectEqual(records.count, 35, "records after the repair: one per reserved index")
            for index in 0..<10 {
                try expectEqual(records[ids[index]]?.state, .pending, "state of task \(index), sent before the failure")
            }
            for index in 10..<20 {
                let record = try expectSome(records[ids[index]], "record of task \(index)")
                if index % 3 == 0 {
                    try expectEqual(record.state, .pending, "state of task \(index), unsent with its input stored")
                } else {
                    try expectEqual(record.state, .failed, "state of task \(index), unsent with its input inline")
                    try expectEqual(record.lastError, Reaper.inputLost, "error of task \(index)")
                }
            }
            for index in 20..<35 {
                let record = try expectSome(records[ids[index]], "record of task \(index)")
                try expectEqual(record.state, .failed, "state of task \(index), never written")
                try expectEqual(record.lastError, Reaper.neverWritten, "error of task \(index)")
                try expect(record.completedAt != nil, "completedAt of task \(index)")
            }
            try expectEqual(report.resent, 3, "tasks sent again (10..<20 with a stored input: 12, 15, 18)")
            try expectEqual(report.unsentFailed, 7 + 15, "tasks failed by the repair")
            let counts = try await backends.state.counts(session)
            try expectEqual(counts.total, try await backends.state.session(session).taskCount, "tasks counted against indices reserved")
            let pending = Set(ids.filter { records[$0]?.state == .pending })
            let messages = Set(try await leaseAll().map(\.id))
            try expect(pending.isSubset(of: messages), "every pending task has a message; without: \(pending.subtracting(messages).map(\.index).sorted())")
            try await expectThrows(code: .conflict, "the key of a repaired submission used again") {
                try await client.submit(session, inputs: inputs(35), key: key)
            }
            try expectEqual(try await reaper.runOnce().submissionsRepaired, 0, "a repaired submission is not repaired again")
        }

        /// Leases every visible message (for a minute), until two lease calls come back empty.
        private func leaseAll() async throws -> [Lease] {
            var leases: [Lease] = []
            var empty = 0
            while empty < 2 {
                let batch = try await backends.queue.lease(max: 100, duration: .seconds(60), order: .highestFirst, wait: .zero)
                if batch.isEmpty { empty += 1 } else { leases += batch }
            }
            return leases
        }
    }
}
