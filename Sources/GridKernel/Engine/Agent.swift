import Foundation
import Logging
import Synchronization

/// The worker side of the engine: leases messages, claims their tasks, runs them with bounded
/// concurrency, heartbeats while they run, stores outputs, finishes or fails them conditionally and
/// acknowledges their messages.
///
/// Every step works on batches: one lease call, one claim, one input read, one finish and one
/// acknowledge serve many tasks, which is where the grid's throughput comes from. A message is
/// acknowledged only once its task is terminal, so no crash of an agent can lose a task; the
/// conditional claim and finish make sure a duplicate delivery never produces a second result.
///
/// ``run()`` returns after ``stop()`` once running tasks have finished (or ``AgentConfiguration/drainTimeout``
/// passed and they were handed back); cancelling the task that calls ``run()`` stops at once.
public final class Agent: Sendable {
    /// The task the agent owns, from claim until its outcome is stored.
    private struct Owned: Sendable {
        var lease: Lease
        /// The task.
        var id: TaskID
        /// The attempt this agent runs.
        var attempt: Int
        /// The task's time limit.
        var timeout: Duration?
        /// When the lease was taken or last renewed.
        var renewedAt: Date
        var work: Task<[UInt8], any Error>?
        var lost = false
    }

    private enum Outcome: Sendable {
        case success([UInt8])
        case failure(String, retryable: Bool)
        case discarded
    }

    private struct Finished: Sendable {
        var id: TaskID
        var attempt: Int
        var outcome: Outcome
    }

    private struct State: Sendable {
        var owned: [TaskID: Owned] = [:]
        var active = 0
        var completions: [Finished] = []
        /// Messages whose task another run holds: kept leased and renewed until that run ends, so they
        /// neither circulate (each delivery counts toward the queue's dead-letter limit) nor get lost
        /// should the owner die.
        var watched: [TaskID: Lease] = [:]
        var stopping = false
        var leaseCalls = 0
        var heartbeats = 0
    }

    /// The most messages an agent watches; beyond, a message is handed back until the owner's lease
    /// could have run out.
    static let maxWatched = 10_000

    private let backends: GridBackends
    private let handler: any TaskHandler
    /// The agent's settings.
    public let configuration: AgentConfiguration
    private let clock: any GridClock
    private let logger: Logger
    private let state = Mutex(State())
    /// Wakes the work loop when a slot frees up or the agent is asked to stop.
    private let wake = WakeSignal()
    /// Finished by ``stop()``: ends a lease call that waits for messages.
    private let stopped = WakeSignal()
    /// Wakes the flush loop when outcomes are waiting to be stored.
    private let flushes = WakeSignal()
    private let counters = GridCounters()

    /// Creates an agent.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for an invalid configuration.
    public init(
        backends: GridBackends,
        handler: any TaskHandler,
        configuration: AgentConfiguration = AgentConfiguration(),
        clock: any GridClock = SystemClock(),
        logger: Logger = Logger(label: "htc.agent")
    ) throws {
        try configuration.validate()
        self.backends = backends
        self.handler = handler
        self.configuration = configuration
        self.clock = clock
        var logger = logger
        logger[metadataKey: "agent"] = "\(configuration.id)"
        self.logger = logger
    }

    /// How many tasks the agent owns right now (running or waiting for their outcome to be stored).
    public var ownedCount: Int { state.withLock { $0.owned.count } }

    /// How many messages the agent keeps leased for tasks another run holds (see ``heartbeat()``).
    public var watchedCount: Int { state.withLock { $0.watched.count } }

    /// How many heartbeat passes have ended (renewed, checked, or failed): progress to wait on with a
    /// manual clock.
    public var heartbeatPasses: Int { state.withLock { $0.heartbeats } }

    /// Asks the agent to stop: it leases nothing more, lets running tasks finish within the drain
    /// timeout, hands back the rest, and then ``run()`` returns.
    public func stop() {
        state.withLock { $0.stopping = true }
        wake.signal()
        stopped.finish()
    }

    /// Runs the agent until ``stop()`` (graceful) or cancellation (immediate).
    public func run() async {
        logger.info("agent started", metadata: ["concurrency": "\(configuration.concurrency)"])
        await withTaskGroup(of: Void.self) { services in
            services.addTask { await self.flushLoop() }
            services.addTask { await self.heartbeatLoop() }
            await self.workLoop()
            // Every handler has returned: store the last outcomes, then stop heartbeating.
            self.flushes.finish()
            _ = await services.next()
            services.cancelAll()
        }
        await releaseWatched()
        logger.info("agent stopped")
    }

    // MARK: - Leasing and running

    private func workLoop() async {
        await withDiscardingTaskGroup { work in
            var backoff = configuration.idleBackoff.lowerBound
            while !Task.isCancelled {
                guard let free = await waitForFreeSlots() else { break }
                let started: [(Owned, [UInt8])]
                do {
                    started = try await leaseAndClaim(max: min(free, configuration.leaseBatchSize))
                } catch {
                    logger.warning("leasing failed; retrying", metadata: ["error": "\(error)"])
                    started = []
                    backoff = configuration.idleBackoff.upperBound
                }
                if started.isEmpty {
                    await idle(for: backoff)
                    backoff = min(backoff * 2, configuration.idleBackoff.upperBound)
                    continue
                }
                backoff = configuration.idleBackoff.lowerBound
                for (owned, input) in started {
                    work.addTask { await self.execute(owned, input: input) }
                }
            }
            guard !Task.isCancelled else { return }
            // Graceful stop: give running tasks the drain timeout, then stop them.
            work.addTask {
                guard (try? await self.clock.sleep(for: self.configuration.drainTimeout)) != nil else { return }
                self.abortRunning(reason: "agent \(self.configuration.id) stopped before the task finished")
            }
            await waitUntilIdle()
            work.cancelAll()
        }
    }

    /// Waits until a slot is free; returns how many, or `nil` once stopping.
    ///
    /// It waits for a quarter of the slots (or of a lease batch) to be free, so that leases, claims and
    /// finishes stay batched under load instead of degenerating into one task per call.
    private func waitForFreeSlots() async -> Int? {
        let refill = max(1, min(configuration.concurrency, configuration.leaseBatchSize) / 4)
        while true {
            let (stopping, free) = state.withLock { ($0.stopping, configuration.concurrency - $0.active) }
            if stopping || Task.isCancelled { return nil }
            if free >= refill { return free }
            await wake.wait()
        }
    }

    /// Sleeps for `duration`, or less when a task completes or ``stop()`` is called.
    private func idle(for duration: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await self.clock.sleep(for: duration) }
            group.addTask { await self.wake.wait() }
            await group.next()
            group.cancelAll()
        }
    }

    private func waitUntilIdle() async {
        while state.withLock({ $0.active }) > 0 && !Task.isCancelled {
            await wake.wait()
        }
    }

    /// One lease call that may wait up to ``AgentConfiguration/pollWait`` for messages, ended early by
    /// ``stop()``; messages it got while the agent was stopping are given back at once.
    private func waitingLease(max: Int, order: PriorityOrder) async throws -> [Lease] {
        let queue = backends.queue
        let duration = configuration.leaseDuration
        let wait = configuration.pollWait
        guard wait > .zero else { return try await queue.lease(max: max, duration: duration, order: order, wait: .zero) }
        let leases = try await withThrowingTaskGroup(of: [Lease]?.self) { group in
            group.addTask { try await queue.lease(max: max, duration: duration, order: order, wait: wait) }
            group.addTask {
                await self.stopped.wait()
                return nil
            }
            var leases: [Lease] = []
            // The first to end decides; the lease call, cancelled by a stop, may still bring messages.
            if let first = try await group.next(), let got = first { leases = got }
            group.cancelAll()
            while let next = try? await group.next() { if let got = next { leases += got } }
            return leases
        }
        guard state.withLock({ $0.stopping }), !leases.isEmpty else { return leases }
        try? await queue.release(leases, delay: .zero)
        return []
    }

    private func leaseAndClaim(max: Int) async throws -> [(Owned, [UInt8])] {
        let order: PriorityOrder = state.withLock { state in
            state.leaseCalls += 1
            let guardEvery = configuration.starvationGuard
            return guardEvery > 0 && state.leaseCalls % guardEvery == 0 ? .lowestFirst : .highestFirst
        }
        let leases = try await waitingLease(max: max, order: order)
        guard !leases.isEmpty else { return [] }

        var byID: [TaskID: Lease] = [:]
        var duplicates: [Lease] = []
        for lease in leases {
            if byID[lease.id] == nil { byID[lease.id] = lease } else { duplicates.append(lease) }
        }
        let now = clock.now
        let claimed = try await claim(Array(byID.keys), now: now)
        var lost = duplicates
        let won = Dictionary(uniqueKeysWithValues: claimed.map { ($0.id, $0) })
        for (id, lease) in byID where won[id] == nil { lost.append(lease) }
        guard !claimed.isEmpty else {
            await settleUnowned(lost)
            return []
        }

        var owned: [Owned] = claimed.compactMap { record in byID[record.id].map { Owned(lease: $0, id: record.id, attempt: record.attempt, timeout: record.timeout, renewedAt: now) } }
        owned.sort { $0.id < $1.id }
        let externalKeys = owned.filter { $0.lease.payload == nil }.map { PayloadKey.input($0.id) }
        let external: [String: [UInt8]]
        do {
            external = externalKeys.isEmpty ? [:] : try await backends.payloads.get(externalKeys)
        } catch {
            // Nothing ran: hand the tasks back at once, uncharged, rather than hold them until their
            // leases expire and the reaper charges them a retry.
            logger.warning("reading inputs failed; releasing the claimed tasks", metadata: ["error": "\(error)", "count": "\(owned.count)"])
            await releaseUnrun(owned)
            await settleUnowned(lost)
            throw error
        }
        var started: [(Owned, [UInt8])] = []
        var missing: [Finished] = []
        var replaced: [Task<[UInt8], any Error>] = []
        state.withLock { state in
            for task in owned {
                // The same task under an older attempt of this agent (its lease was reaped while it ran):
                // that run is stale; stop it, and let nothing it produces be stored.
                if let older = state.owned[task.id], let work = older.work { replaced.append(work) }
                state.owned[task.id] = task
                if let input = task.lease.payload ?? external[PayloadKey.input(task.id)] {
                    state.active += 1
                    started.append((task, input))
                } else {
                    missing.append(
                        Finished(
                            id: task.id, attempt: task.attempt,
                            outcome: .failure("input \(PayloadKey.input(task.id)) is missing from the payload store", retryable: false)
                        )
                    )
                }
            }
            state.completions += missing
        }
        for work in replaced { work.cancel() }
        if !missing.isEmpty { flushes.signal() }
        await settleUnowned(lost)
        return started
    }

    /// Claims tasks with one token; a claim that failed for want of a reply is sent again with the same
    /// token once, so that tasks it had won are not lost until their leases expire.
    private func claim(_ ids: [TaskID], now: Date) async throws -> [TaskRecord] {
        let token = ClaimToken.random()
        let expiry = now.addingTimeInterval(configuration.leaseDuration.timeInterval)
        do {
            return try await backends.state.claim(ids, owner: configuration.id, token: token, leaseExpiry: expiry, now: now)
        } catch let error as GridError where error.code == .unavailable {
            logger.warning("claim failed; sending it again with the same token", metadata: ["error": "\(error)"])
            return try await backends.state.claim(ids, owner: configuration.id, token: token, leaseExpiry: expiry, now: now)
        }
    }

    /// Gives claimed tasks back unrun (state and queue); best effort: what fails here is reaped later.
    private func releaseUnrun(_ owned: [Owned]) async {
        do {
            let released = try await backends.state.release(owned.map { TaskAttempt(id: $0.id, attempt: $0.attempt) }, owner: configuration.id)
            counters.released.increment(by: released.count)
            try await backends.queue.release(owned.map(\.lease), delay: .zero)
        } catch {
            logger.warning("releasing tasks failed; their leases will expire", metadata: ["error": "\(error)", "count": "\(owned.count)"])
        }
    }

    private func execute(_ task: Owned, input: [UInt8]) async {
        let id = task.id
        let attempt = task.attempt
        var taskLogger = logger
        taskLogger[metadataKey: "task"] = "\(id)"
        let context = TaskContext(id: id, attempt: attempt, timeout: task.timeout, logger: taskLogger)
        // The handler runs in its own task so that a heartbeat that finds the task cancelled or its lease
        // lost can cancel just this one; the child here awaits it, so it never outlives the agent.
        let work = Task { try await self.runHandler(input: input, context: context) }
        let cancelNow = state.withLock { state -> Bool in
            guard state.owned[id]?.attempt == attempt else { return true }
            state.owned[id]?.work = work
            return state.owned[id]?.lost ?? true
        }
        if cancelNow { work.cancel() }
        let result = await withTaskCancellationHandler { await work.result } onCancel: { work.cancel() }

        state.withLock { state in
            state.active -= 1
            // A newer attempt of the same task replaced this run: there is nothing of it to store.
            guard let current = state.owned[id], current.attempt == attempt else { return }
            let outcome: Outcome
            if current.lost {
                outcome = .discarded
            } else {
                switch result {
                case .success(let output):
                    outcome = .success(output)
                case .failure(let error as GridError) where error.code == .timeout:
                    outcome = .failure(error.message, retryable: true)
                case .failure(let error as TaskHandlerError):
                    outcome = .failure(error.description, retryable: false)
                case .failure(is CancellationError) where state.stopping:
                    outcome = .failure(
                        "agent \(configuration.id) stopped before the task finished (drain timeout \(configuration.drainTimeout))", retryable: true)
                case .failure(let error):
                    outcome = .failure(String(describing: error), retryable: true)
                }
            }
            state.completions.append(Finished(id: id, attempt: attempt, outcome: outcome))
        }
        flushes.signal()
        wake.signal()
    }

    private func runHandler(input: [UInt8], context: TaskContext) async throws -> [UInt8] {
        guard let timeout = context.timeout else {
            return try await handler.run(input: input, context: context)
        }
        return try await withThrowingTaskGroup(of: [UInt8].self) { group in
            group.addTask { try await self.handler.run(input: input, context: context) }
            group.addTask {
                try await self.clock.sleep(for: timeout)
                throw GridError(.timeout, "task ran longer than its time limit of \(timeout)")
            }
            defer { group.cancelAll() }
            guard let output = try await group.next() else { throw CancellationError() }
            return output
        }
    }

    /// Stops the handlers of tasks still running after the drain timeout; their runs count as failures
    /// that will be retried elsewhere.
    private func abortRunning(reason: String) {
        let works: [Task<[UInt8], any Error>] = state.withLock { state in
            state.owned.values.compactMap(\.work)
        }
        logger.warning("drain timeout reached; stopping running tasks", metadata: ["count": "\(works.count)"])
        for work in works { work.cancel() }
    }

    // MARK: - Storing outcomes

    private func flushLoop() async {
        while !flushes.isFinished && !Task.isCancelled {
            await flushes.wait()
            await flushPending()
        }
        await flushPending()
    }

    private func flushPending() async {
        var backoff = configuration.idleBackoff.upperBound
        while true {
            let batch = state.withLock { state -> [Finished] in
                defer { state.completions.removeAll(keepingCapacity: true) }
                return state.completions
            }
            guard !batch.isEmpty else { return }
            do {
                try await store(batch)
                backoff = configuration.idleBackoff.upperBound
            } catch {
                logger.warning("storing task outcomes failed; retrying", metadata: ["error": "\(error)", "count": "\(batch.count)"])
                state.withLock { $0.completions.insert(contentsOf: batch, at: 0) }
                guard (try? await clock.sleep(for: backoff)) != nil else { return }
                backoff = min(backoff * 2, .seconds(10))
            }
        }
    }

    private func store(_ batch: [Finished]) async throws {
        // Only outcomes of the attempt the agent still owns are stored; anything else is stale.
        let leases: [TaskID: Lease] = state.withLock { state in
            Dictionary(
                batch.compactMap { item in
                    state.owned[item.id].flatMap { $0.attempt == item.attempt ? (item.id, $0.lease) : nil }
                }, uniquingKeysWith: { first, _ in first })
        }
        var completions: [TaskCompletion] = []
        var external: [TaskID: PayloadItem] = [:]
        var failures: [TaskFailure] = []
        var unowned: [Lease] = []
        var ran: [TaskID] = []
        // Outside readers of a shared data plane (HTC-Grid's connector) look for every output there.
        let shared = backends.payloads is any SharedPayloadStore
        let inlineLimit = shared ? -1 : configuration.inlineOutputLimit
        for item in batch {
            guard let lease = leases[item.id] else { continue }
            switch item.outcome {
            case .success(let output):
                ran.append(item.id)
                if output.count <= inlineLimit {
                    completions.append(TaskCompletion(id: item.id, attempt: item.attempt, output: output))
                } else {
                    // Under the attempt's own key: a stale attempt writing late never replaces the output
                    // another attempt committed, since the finish names the attempt whose key is current.
                    external[item.id] = PayloadItem(key: PayloadKey.output(item.id, attempt: item.attempt), value: output)
                    completions.append(TaskCompletion(id: item.id, attempt: item.attempt, output: nil))
                }
            case .failure(let message, let retryable):
                failures.append(TaskFailure(id: item.id, attempt: item.attempt, message: message, retryable: retryable))
            case .discarded:
                unowned.append(lease)
            }
        }
        let now = clock.now
        var acknowledge: [Lease] = []
        var retry: [Lease] = []
        var finishedCount = 0
        var failedCount = 0
        // One outcome that cannot be stored (an output over the payload limit, say) fails its own task;
        // the rest of the batch is stored.
        func unstorable(_ id: TaskID, _ what: String, _ error: any Error) {
            guard let index = completions.firstIndex(where: { $0.id == id }) else { return }
            let completion = completions.remove(at: index)
            let permanent = (error as? GridError).map { [.payloadTooLarge, .invalidArgument].contains($0.code) } ?? false
            failures.append(TaskFailure(id: id, attempt: completion.attempt, message: "\(what): \(error)", retryable: !permanent))
        }
        if !external.isEmpty {
            let refused = try await isolating(Array(external)) { outputs -> [Void] in
                try await self.backends.payloads.put(outputs.map(\.value))
                return []
            }.refused
            for (output, error) in refused {
                external[output.key] = nil
                unstorable(output.key, "the task's output could not be stored", error)
            }
        }
        if !completions.isEmpty {
            let (finishedIDs, unrecorded) = try await isolating(completions) { items in
                Array(try await self.backends.state.finish(items, owner: self.configuration.id, at: now))
            }
            let finished = Set(finishedIDs)
            for (completion, error) in unrecorded {
                if let stored = external.removeValue(forKey: completion.id) { try? await backends.payloads.delete([stored.key]) }
                unstorable(completion.id, "the task's result could not be recorded", error)
            }
            finishedCount = finished.count
            // A finish refused because an earlier try of this same flush went through (its reply was
            // lost) committed this attempt all the same: the record says so.
            var committed = finished
            let refused = completions.filter { !finished.contains($0.id) }
            if !refused.isEmpty {
                let attempts = Dictionary(refused.map { ($0.id, $0.attempt) }, uniquingKeysWith: { first, _ in first })
                for record in try await backends.state.tasks(refused.map(\.id))
                where record.state == .finished && attempts[record.id] == record.attempt {
                    committed.insert(record.id)
                }
            }
            for completion in completions {
                guard let lease = leases[completion.id] else { continue }
                if committed.contains(completion.id) { acknowledge.append(lease) } else { unowned.append(lease) }
            }
            let lost = refused.filter { !committed.contains($0.id) }
            if !lost.isEmpty {
                // Outputs of attempts that lost their task are no one's: remove them (best effort).
                let stale = lost.compactMap { external[$0.id]?.key }
                logger.info(
                    "finishes of attempts that lost their task were refused; their outputs are discarded",
                    metadata: ["count": "\(lost.count)", "stored": "\(stale.count)"])
                if !stale.isEmpty { try? await backends.payloads.delete(stale) }
            }
            if shared {
                // Outside readers look for a finished task's output under HTC-Grid's key: it is written
                // only once the finish made this attempt's output the task's.
                let published = external.filter { committed.contains($0.key) }.map { PayloadItem(key: PayloadKey.output($0.key), value: $0.value.value) }
                if !published.isEmpty { try await backends.payloads.put(published) }
            }
        }
        if !failures.isEmpty {
            let (outcomes, unrecordable) = try await isolating(failures) { items in
                try await self.backends.state.fail(items, owner: self.configuration.id, at: now).map { ($0.key, $0.value) }
            }
            let states = Dictionary(outcomes, uniquingKeysWith: { $1 })
            for (failure, error) in unrecordable {
                // Not even its failure can be recorded: the task keeps its lease, which lapses, and the
                // reaper retries or fails it then.
                logger.error("recording a task's failure failed; its lease will lapse", metadata: ["task": "\(failure.id)", "error": "\(error)"])
            }
            let unrecorded = Set(unrecordable.map(\.item.id))
            for failure in failures where !unrecorded.contains(failure.id) {
                guard let lease = leases[failure.id] else { continue }
                switch states[failure.id] {
                case .pending?: retry.append(lease)
                case .some:
                    acknowledge.append(lease)
                    failedCount += 1
                case nil: unowned.append(lease)
                }
            }
        }
        if !acknowledge.isEmpty { try await backends.queue.acknowledge(acknowledge) }
        if !retry.isEmpty { try await backends.queue.release(retry, delay: configuration.retryDelay) }
        if !unowned.isEmpty { await settleUnowned(unowned) }
        state.withLock { state in
            for item in batch where state.owned[item.id]?.attempt == item.attempt { state.owned[item.id] = nil }
        }
        counters.finished.increment(by: finishedCount)
        counters.failed.increment(by: failedCount)
        counters.retried.increment(by: retry.count)
        counters.retriesAfterFailure.increment(by: retry.count)
        counters.discarded.increment(by: unowned.count)
        if !ran.isEmpty { configuration.onRunsCompleted?(ran) }
    }

    /// Runs a batched write. When it fails for another reason than the backend being out of reach (or
    /// the agent stopping), the items are written one at a time, so that one bad item cannot hold the
    /// others back for ever: those that fail alone are returned with their error.
    ///
    /// - Throws: what the whole batch threw when it was ``GridError/Code/unavailable`` or a cancellation
    ///   (the batch is tried again later), or what a single item threw that was.
    private func isolating<Item: Sendable, Output: Sendable>(
        _ items: [Item], _ write: @Sendable ([Item]) async throws -> [Output]
    ) async throws -> (outputs: [Output], refused: [(item: Item, error: any Error)]) {
        do {
            return (try await write(items), [])
        } catch {
            guard Self.isPerItem(error) else { throw error }
            if items.count == 1 { return ([], [(items[0], error)]) }
            logger.warning("a batched write failed; writing its items one at a time", metadata: ["error": "\(error)", "count": "\(items.count)"])
        }
        var outputs: [Output] = []
        var refused: [(item: Item, error: any Error)] = []
        for item in items {
            do {
                outputs += try await write([item])
            } catch where Self.isPerItem(error) {
                refused.append((item, error))
            }
        }
        return (outputs, refused)
    }

    /// Whether a write's error may be one item's own fault, rather than the backend's or the agent's.
    private static func isPerItem(_ error: any Error) -> Bool {
        if error is CancellationError { return false }
        return (error as? GridError)?.code != .unavailable
    }

    /// Decides the fate of messages whose task this agent does not own: acknowledged when the task is
    /// terminal or unknown, handed back at once when it is pending, and watched when another run holds
    /// it. Best effort: a message left alone here is delivered again when its lease lapses.
    private func settleUnowned(_ leases: [Lease]) async {
        guard !leases.isEmpty else { return }
        do {
            let records = Dictionary(
                try await backends.state.tasks(Array(Set(leases.map(\.id)))).map { ($0.id, $0) }, uniquingKeysWith: { $1 })
            var acknowledge: [Lease] = []
            var later: [Lease] = []
            var watch: [Lease] = []
            for lease in leases {
                guard let record = records[lease.id] else {
                    logger.warning("message for an unknown task dropped", metadata: ["task": "\(lease.id)"])
                    acknowledge.append(lease)
                    continue
                }
                switch record.state {
                case .finished, .failed, .cancelled: acknowledge.append(lease)
                case .pending: later.append(lease)
                case .processing: watch.append(lease)
                }
            }
            let overflow: [Lease] = state.withLock { state in
                var overflow: [Lease] = []
                for lease in watch {
                    if let previous = state.watched[lease.id], previous != lease {
                        // A second copy of a watched message: one is enough.
                        overflow.append(previous)
                    } else if state.watched.count >= Self.maxWatched || state.stopping {
                        overflow.append(lease)
                        continue
                    }
                    state.watched[lease.id] = lease
                }
                return overflow
            }
            if !acknowledge.isEmpty { try await backends.queue.acknowledge(acknowledge) }
            if !later.isEmpty { try await backends.queue.release(later, delay: .zero) }
            if !overflow.isEmpty { try await backends.queue.release(overflow, delay: configuration.leaseDuration) }
        } catch {
            logger.warning("settling messages of tasks held elsewhere failed; they will be delivered again", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - Heartbeats

    private func heartbeatLoop() async {
        while true {
            guard (try? await clock.sleep(for: configuration.heartbeatInterval)) != nil else { return }
            do {
                try await heartbeat()
            } catch {
                logger.warning("heartbeat failed; retrying next interval", metadata: ["error": "\(error)"])
            }
            state.withLock { $0.heartbeats += 1 }
        }
    }

    /// Renews the leases that are due (older than ``AgentConfiguration/renewAfter``), reads the sessions
    /// of the other tasks, and stops the handlers of tasks that were cancelled, deleted or whose lease
    /// was lost. Short tasks thus cost no lease writes, and a cancelled session still stops within one
    /// interval; a task cancelled on its own stops at its next renewal.
    func heartbeat() async throws {
        let now = clock.now
        do {
            try await checkWatched()
        } catch {
            // The agent's own leases must be renewed even when the watched messages cannot be looked at.
            logger.warning("checking watched messages failed; retrying next interval", metadata: ["error": "\(error)"])
        }
        let snapshot: [Owned] = state.withLock { Array($0.owned.values) }
        guard !snapshot.isEmpty else { return }
        let renewAfter = configuration.renewAfter.timeInterval
        let due = snapshot.filter { now.timeIntervalSince($0.renewedAt) >= renewAfter }
        let young = snapshot.filter { now.timeIntervalSince($0.renewedAt) < renewAfter }
        var lost: [Owned] = []
        if !due.isEmpty {
            let expiry = now.addingTimeInterval(configuration.leaseDuration.timeInterval)
            let stillOwned = try await backends.state.heartbeat(
                due.map { TaskAttempt(id: $0.id, attempt: $0.attempt) }, owner: configuration.id, leaseExpiry: expiry)
            lost += due.filter { !stillOwned.contains($0.id) }
            let renewed = due.filter { stillOwned.contains($0.id) }
            state.withLock { state in
                for task in renewed { state.owned[task.id]?.renewedAt = now }
            }
            if !renewed.isEmpty {
                _ = try await backends.queue.extend(renewed.map(\.lease), duration: configuration.leaseDuration)
            }
        }
        for session in Set(young.map(\.id.session)) {
            let ended: Bool
            do {
                ended = try await backends.state.session(session).cancelled
            } catch let error as GridError where error.code == .notFound {
                ended = true
            }
            if ended { lost += young.filter { $0.id.session == session } }
        }
        if !lost.isEmpty {
            let works: [Task<[UInt8], any Error>] = state.withLock { state in
                lost.compactMap { task in
                    guard state.owned[task.id]?.attempt == task.attempt else { return nil }
                    state.owned[task.id]?.lost = true
                    return state.owned[task.id]?.work
                }
            }
            for work in works { work.cancel() }
            logger.info("stopped tasks that were cancelled or whose lease was lost", metadata: ["count": "\(lost.count)"])
        }
    }

    /// Keeps the watched messages leased while another run holds their task, and lets go of each once
    /// that run ended: acknowledged when the task is terminal (or gone), handed back when it is pending
    /// again (its owner died and the reaper put it back).
    private func checkWatched() async throws {
        let watched: [Lease] = state.withLock { Array($0.watched.values) }
        guard !watched.isEmpty else { return }
        let held = Set(try await backends.queue.extend(watched, duration: configuration.leaseDuration))
        let records = Dictionary(try await backends.state.tasks(watched.map(\.id)).map { ($0.id, $0) }, uniquingKeysWith: { $1 })
        var acknowledge: [Lease] = []
        var release: [Lease] = []
        var done: [Lease] = []
        for lease in watched {
            guard held.contains(lease) else {
                done.append(lease)
                continue
            }
            switch records[lease.id]?.state {
            case .processing?: continue
            case .pending?: release.append(lease)
            case nil, .finished?, .failed?, .cancelled?: acknowledge.append(lease)
            }
            done.append(lease)
        }
        if !acknowledge.isEmpty { try await backends.queue.acknowledge(acknowledge) }
        if !release.isEmpty { try await backends.queue.release(release, delay: .zero) }
        state.withLock { state in
            for lease in done where state.watched[lease.id] == lease { state.watched[lease.id] = nil }
        }
    }

    /// Hands back the watched messages (on stop).
    private func releaseWatched() async {
        let watched: [Lease] = state.withLock { state in
            defer { state.watched.removeAll() }
            return Array(state.watched.values)
        }
        guard !watched.isEmpty else { return }
        try? await backends.queue.release(watched, delay: .zero)
    }
}
