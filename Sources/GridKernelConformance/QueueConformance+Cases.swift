import GridKernel

extension QueueConformance {
    /// The cases, one function each, against one fresh queue.
    struct Cases: Sendable {
        let queue: any TaskQueue
        let time: Timeline
        let session = SessionID.random()

        // MARK: Cases

        func roundTrip() async throws {
            let sent = [
                task(0, priority: 3, payload: [0, 1, 2, 255]),
                task(1, priority: 3, payload: []),
                task(2, priority: 3, payload: nil),
                task(3, priority: 3, payload: (0..<4_096).map { UInt8($0 % 256) }),
            ]
            try await queue.enqueue(sent)
            let leases = try await collect(sent.count, duration: long, "four enqueued tasks")
            try expectEqual(Set(leases.map(\.id)), Set(sent.map(\.id)), "ids of the leased messages")
            for lease in leases {
                let original = try expectSome(sent.first { $0.id == lease.id }, "the task of lease \(lease.id)")
                try expectEqual(lease.payload, original.payload, "payload of \(lease.id) (nil and empty must stay apart)")
                try expectEqual(lease.priority, 3, "priority of \(lease.id)")
                try expectEqual(lease.deliveryCount, 1, "delivery count of a first delivery of \(lease.id)")
                try expect(!lease.handle.isEmpty, "lease of \(lease.id) has a handle")
            }
            try expectEqual(Set(leases.map(\.handle)).count, sent.count, "distinct messages have distinct handles")
        }

        func leaseHidesTaskFromOtherConsumers() async throws {
            try await queue.enqueue([task(0)])
            let leasedAt = time.mark()
            _ = try await collect(1, duration: time.units(10), "one enqueued task")
            for order in [PriorityOrder.highestFirst, .lowestFirst] {
                let again = try await lease(order: order)
                try expect(again.isEmpty, "a leased message is not leased again (\(order)), got \(again.map(\.id))")
            }
            try await time.throughout(time.units(5), from: leasedAt, "the message stays hidden while its lease runs") {
                try await lease().isEmpty
            }
        }

        func leaseExpiryRedelivers() async throws {
            try await queue.enqueue([task(0, payload: [7])])
            let first = try await collect(1, duration: time.units(2), "one enqueued task")[0]
            var second: [Lease] = []
            try await time.eventually(after: time.units(3), within: time.units(20), "the message is delivered again once its lease expired") {
                second += try await lease(duration: time.units(2))
                return !second.isEmpty
            }
            try expectEqual(second.map(\.id), [first.id], "the redelivered message")
            try expectEqual(second[0].deliveryCount, 2, "delivery count of the second delivery")
            try expect(second[0].handle != first.handle, "a redelivery has a new handle")
            try expectEqual(second[0].payload, [7], "payload of the redelivered message")
            var third: [Lease] = []
            try await time.eventually(after: time.units(3), within: time.units(20), "the message is delivered a third time") {
                third += try await lease()
                return !third.isEmpty
            }
            try expectEqual(third.map(\.id), [first.id], "the message delivered a third time")
            try expectEqual(third[0].deliveryCount, 3, "delivery count of the third delivery")
        }

        func leaseExtensionKeepsTaskHidden() async throws {
            try await queue.enqueue([task(0)])
            let first = try await collect(1, duration: time.units(3), "one enqueued task")[0]
            let extendedAt = time.mark()
            let extended = try await queue.extend([first], duration: time.units(12))
            try expectEqual(extended.map(\.id), [first.id], "extending a held lease returns it")
            try await time.throughout(time.units(6), from: extendedAt, "an extended lease keeps the message hidden past its original expiry") {
                try await lease().isEmpty
            }
            var second: [Lease] = []
            try await time.eventually(after: time.units(7), within: time.units(30), "the message is delivered again once the extended lease expired") {
                second += try await lease()
                return !second.isEmpty
            }
            try expectEqual(second.map(\.id), [first.id], "the redelivered message")
            try expectEqual(second[0].deliveryCount, 2, "delivery count of the second delivery")
            let stale = try await queue.extend([first], duration: long)
            try expect(stale.isEmpty, "a lease whose message was delivered again is not extended, got \(stale.map(\.handle))")
            let current = try await queue.extend(second, duration: long)
            try expectEqual(current.map(\.id), [first.id], "extending the current lease returns it")
        }

        func acknowledgeRemoves() async throws {
            try await queue.enqueue([task(0), task(1), task(2)])
            let leases = try await collect(3, duration: time.units(2), "three enqueued tasks")
            try await queue.acknowledge(Array(leases.prefix(2)))
            var back: [Lease] = []
            try await time.eventually(after: time.units(3), within: time.units(20), "the unacknowledged message comes back") {
                back += try await lease()
                return !back.isEmpty
            }
            try expectEqual(back.map(\.id), [leases[2].id], "only the unacknowledged message comes back")
            try await queue.acknowledge(back)
            try await time.throughout(time.units(3), "acknowledged messages never come back") {
                try await lease(duration: time.units(1)).isEmpty
            }
            var total = -1
            try await time.settled("depth is empty once every message is acknowledged, got \(total)") {
                total = try await totalDepth()
                return total == 0
            }
        }

        func staleAcknowledgeIsHarmless() async throws {
            try await queue.enqueue([task(0)])
            let first = try await collect(1, duration: time.units(2), "one enqueued task")[0]
            var second: [Lease] = []
            try await time.eventually(after: time.units(3), within: time.units(20), "the message is delivered again once its lease expired") {
                second += try await lease()
                return !second.isEmpty
            }
            try expectEqual(second.map(\.id), [first.id], "the redelivered message")
            try await queue.acknowledge([first])
            let held = try await queue.extend(second, duration: long)
            try expectEqual(held.map(\.id), [first.id], "the newer delivery is still held after a stale acknowledge")
            var depth: [Int: QueueDepth] = [:]
            try await time.settled("the message is still queued and leased after a stale acknowledge, depth \(depth)") {
                depth = try await nonEmptyDepth()
                return depth == [0: QueueDepth(waiting: 0, inFlight: 1)]
            }
            try await queue.release(second, delay: .zero)
            var third: [Lease] = []
            try await time.settled("the message can be leased again after its release") {
                third += try await lease()
                return !third.isEmpty
            }
            try expectEqual(third.map(\.id), [first.id], "the message leased after its release")
            try expectEqual(third[0].deliveryCount, 3, "delivery count of the third delivery")
            try await queue.acknowledge(third)
            try await queue.acknowledge(third)
            var total = -1
            try await time.settled("depth is empty after the current lease is acknowledged (twice), got \(total)") {
                total = try await totalDepth()
                return total == 0
            }
        }

        func releaseWithDelay() async throws {
            try await queue.enqueue([task(0)])
            let first = try await collect(1, duration: long, "one enqueued task")[0]
            let releasedAt = time.mark()
            try await queue.release([first], delay: time.units(4))
            try await time.throughout(time.units(2), from: releasedAt, "a message released with a delay stays hidden during the delay") {
                try await lease().isEmpty
            }
            var second: [Lease] = []
            try await time.eventually(after: time.units(3), within: time.units(20), "the released message is delivered again after the delay") {
                second += try await lease()
                return !second.isEmpty
            }
            try expectEqual(second.map(\.id), [first.id], "the message delivered after the delay")
            try expectEqual(second[0].deliveryCount, 2, "delivery count after a release")
            try await queue.release(second, delay: .zero)
            var third: [Lease] = []
            try await time.settled("a message released without a delay can be leased at once") {
                third += try await lease()
                return !third.isEmpty
            }
            try expectEqual(third.map(\.id), [first.id], "the message released without a delay")
            try expectEqual(third[0].deliveryCount, 3, "delivery count after a second release")
            try await queue.release([first], delay: .zero)
            let none = try await lease()
            try expect(none.isEmpty, "releasing a stale lease does not make a leased message visible, got \(none.map(\.id))")
        }

        /// Two enqueue calls of mixed priorities, then a late task of an intermediate priority; leased
        /// one at a time, they come in `order` of priority, FIFO within a priority.
        func priorityOrder(_ order: PriorityOrder) async throws {
            let firstCall = [task(0, priority: 1), task(1, priority: 5), task(2, priority: -3), task(3, priority: 9)]
            let secondCall = [
                task(4, priority: 5), task(5, priority: 1), task(6, priority: 9), task(7, priority: -3), task(8, priority: 5),
            ]
            try await queue.enqueue(firstCall)
            try await queue.enqueue(secondCall)
            var waiting = (firstCall + secondCall).enumerated().map { (position: $0.offset, task: $0.element) }
            func servedBefore(_ a: (position: Int, task: QueuedTask), _ b: (position: Int, task: QueuedTask)) -> Bool {
                guard a.task.priority != b.task.priority else { return a.position < b.position }
                return order == .highestFirst ? a.task.priority > b.task.priority : a.task.priority < b.task.priority
            }
            var expected: [TaskID] = []
            var served: [TaskID] = []
            for step in 0...waiting.count {
                if step == 3 {
                    let late = task(9, priority: 7)
                    try await queue.enqueue([late])
                    waiting.append((position: firstCall.count + secondCall.count, task: late))
                }
                let next = try expectSome(waiting.min(by: servedBefore), "a task left to serve")
                waiting.removeAll { $0.position == next.position }
                expected.append(next.task.id)
                served += try await collect(1, duration: long, order: order, max: 1, "lease \(step + 1)").map(\.id)
            }
            try expectEqual(served.map(\.index), expected.map(\.index), "task indices in delivery order with \(order)")
        }

        func depthCountsWaitingAndInFlight() async throws {
            try await queue.enqueue([
                task(0, priority: 2), task(1, priority: 2), task(2, priority: 2), task(3, priority: 7), task(4, priority: 7),
            ])
            var depth: [Int: QueueDepth] = [:]
            try await time.settled("three waiting at priority 2, two at priority 7; got \(depth)") {
                depth = try await nonEmptyDepth()
                return depth == [2: QueueDepth(waiting: 3, inFlight: 0), 7: QueueDepth(waiting: 2, inFlight: 0)]
            }
            let leased = try await collect(3, duration: long, "three of five messages")
            try expectEqual(leased.map(\.priority).sorted(), [2, 7, 7], "priorities leased first")
            try await time.settled("priority 2: two waiting, one in flight; priority 7: two in flight; got \(depth)") {
                depth = try await nonEmptyDepth()
                return depth == [2: QueueDepth(waiting: 2, inFlight: 1), 7: QueueDepth(waiting: 0, inFlight: 2)]
            }
            try await queue.acknowledge(leased.filter { $0.priority == 7 })
            try await time.settled("priority 7 is gone once acknowledged; got \(depth)") {
                depth = try await nonEmptyDepth()
                return depth == [2: QueueDepth(waiting: 2, inFlight: 1)]
            }
            try await queue.release(leased.filter { $0.priority == 2 }, delay: .zero)
            try await time.settled("a released message counts as waiting; got \(depth)") {
                depth = try await nonEmptyDepth()
                return depth == [2: QueueDepth(waiting: 3, inFlight: 0)]
            }
        }

        func leaseRespectsMax() async throws {
            try await queue.enqueue((0..<10).map { task($0) })
            let leases = try await collect(10, duration: long, max: 3, "ten messages, at most three per call")
            try expectEqual(Set(leases.map(\.id)).count, 10, "distinct messages leased")
            try await queue.enqueue([task(10), task(11)])
            let one = try await collect(1, duration: long, max: 1, "one of two messages with max 1")
            try expectEqual(one.count, 1, "messages leased with max 1")
        }

        func concurrentLeasesNeverShareAMessage() async throws {
            let count = 500
            for start in stride(from: 0, to: count, by: 100) {
                try await queue.enqueue((start..<(start + 100)).map { task($0) })
            }
            var leases = try await withThrowingTaskGroup(of: [Lease].self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        var mine: [Lease] = []
                        while true {
                            let batch = try await lease()
                            if batch.isEmpty { return mine }
                            mine += batch
                        }
                    }
                }
                var all: [Lease] = []
                for try await part in group { all += part }
                return all
            }
            // In real mode a consumer may see an empty answer while messages remain: sweep them up.
            try await time.settled("all \(count) messages were leased, got \(leases.count)") {
                while leases.count < count {
                    let batch = try await lease()
                    if batch.isEmpty { break }
                    leases += batch
                }
                return leases.count >= count
            }
            let deliveries = Dictionary(grouping: leases, by: \.id).filter { $0.value.count > 1 }
            try expect(
                deliveries.isEmpty,
                "no message is delivered twice while leased; \(deliveries.count) were, e.g. \(deliveries.keys.sorted().prefix(5))"
            )
            try expectEqual(leases.count, count, "messages leased")
            try expect(leases.allSatisfy { $0.deliveryCount == 1 }, "every message was delivered once")
        }

        // MARK: Helpers

        /// A lease no case outlives.
        private var long: Duration { time.units(60) }

        private func task(_ index: Int, priority: Int = 0, payload: [UInt8]? = nil) -> QueuedTask {
            QueuedTask(id: TaskID(session: session, index: index), priority: priority, payload: payload)
        }

        /// One lease call for up to 10 messages, without waiting.
        private func lease(duration: Duration? = nil, order: PriorityOrder = .highestFirst) async throws -> [Lease] {
            try await queue.lease(max: 10, duration: duration ?? long, order: order, wait: .zero)
        }

        /// Leases until `count` messages were collected, `max` (default: as many as missing) per call:
        /// manual mode stops at the first empty answer, real mode polls for up to 20 units.
        private func collect(
            _ count: Int, duration: Duration, order: PriorityOrder = .highestFirst, max: Int? = nil, _ what: String,
            file: String = #fileID, line: Int = #line
        ) async throws -> [Lease] {
            var leases: [Lease] = []
            try await time.settled("\(what): \(count) message(s) can be leased, got \(leases.count)", file: file, line: line) {
                while leases.count < count {
                    let limit = max ?? (count - leases.count)
                    let batch = try await queue.lease(max: limit, duration: duration, order: order, wait: .zero)
                    try expect(batch.count <= limit, "\(what): a lease call with max \(limit) returned \(batch.count) messages", file: file, line: line)
                    if batch.isEmpty { break }
                    leases += batch
                }
                return leases.count >= count
            }
            try expectEqual(leases.count, count, "\(what): messages leased", file: file, line: line)
            return leases
        }

        /// The depth without priorities that have no messages (backends may or may not list them).
        private func nonEmptyDepth() async throws -> [Int: QueueDepth] {
            try await queue.depth().filter { $0.value.waiting + $0.value.inFlight > 0 }
        }

        private func totalDepth() async throws -> Int {
            try await queue.depth().values.reduce(0) { $0 + $1.waiting + $1.inFlight }
        }
    }
}
