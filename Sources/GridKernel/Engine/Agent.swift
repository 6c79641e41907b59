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
        var record: TaskRecord
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
        var outcome: Outcome
    }

    private struct State: Sendable {
        var owned: [TaskID: Owned] = [:]
        var active = 0
        var completions: [Finished] = []
        var stopping = false
        var leaseCalls = 0
        var heartbeats = 0
    }

    private let backends: GridBackends
    private let handler: any TaskHandler
    /// The agent's settings.
    public let configuration: AgentConfiguration
    private let clock: any GridClock
    private let logger: Logger
    private let state = Mutex(State())
    /// Wakes the work loop when a slot frees up or the agent is asked to stop.
    private let wake = WakeSignal()
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

    /// How many heartbeat passes have ended (renewed, checked, or failed): progress to wait on with a
    /// manual clock.
    public var heartbeatPasses: Int { state.withLock { $0.heartbeats } }

    /// Asks the agent to stop: it leases nothing more, lets running tasks finish within the drain
    /// timeout, hands back the rest, and then ``run()`` returns.
    public func stop() {
        state.withLock { $0.stopping = true }
        wake.signal()
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

    private func leaseAndClaim(max: Int) async throws -> [(Owned, [UInt8])] {
        let order: PriorityOrder = state.withLock { state in
            state.leaseCalls += 1
            let guardEvery = configuration.starvationGuard
            return guardEvery > 0 && state.leaseCalls % guardEvery == 0 ? .lowestFirst : .highestFirst
        }
        let leases = try await backends.queue.lease(
            max: max,
            duration: configuration.leaseDuration,
            order: order,
            wait: configuration.pollWait
        )
        guard !leases.isEmpty else { return [] }

        var byID: [TaskID: Lease] = [:]
        var duplicates: [Lease] = []
        for lease in leases {
            if byID[lease.id] == nil { byID[lease.id] = lease } else { duplicates.append(lease) }
        }
        let now = clock.now
        let claimed = try await backends.state.claim(
            Array(byID.keys),
            owner: configuration.id,
            leaseExpiry: now.addingTimeInterval(configuration.leaseDuration.timeInterval),
            now: now
        )
        var lost = duplicates
        let won = Dictionary(uniqueKeysWithValues: claimed.map { ($0.id, $0) })
        for (id, lease) in byID where won[id] == nil { lost.append(lease) }
        if !lost.isEmpty { try await settleUnowned(lost) }
        guard !claimed.isEmpty else { return [] }

        var owned: [Owned] = claimed.compactMap { record in byID[record.id].map { Owned(lease: $0, record: record, renewedAt: now) } }
        let externalKeys = owned.filter { $0.lease.payload == nil }.map { PayloadKey.input($0.record.id) }
        let external = externalKeys.isEmpty ? [:] : try await backends.payloads.get(externalKeys)
        var started: [(Owned, [UInt8])] = []
        var missing: [Finished] = []
        owned.sort { $0.record.id < $1.record.id }
        state.withLock { state in
            for task in owned {
                state.owned[task.record.id] = task
                if let input = task.lease.payload ?? external[PayloadKey.input(task.record.id)] {
                    state.active += 1
                    started.append((task, input))
                } else {
                    missing.append(
                        Finished(
                            id: task.record.id,
                            outcome: .failure("input \(PayloadKey.input(task.record.id)) is missing from the payload store", retryable: false)
                        )
                    )
                }
            }
            state.completions += missing
        }
        if !missing.isEmpty { flushes.signal() }
        return started
    }

    private func execute(_ task: Owned, input: [UInt8]) async {
        let id = task.record.id
        var taskLogger = logger
        taskLogger[metadataKey: "task"] = "\(id)"
        let context = TaskContext(id: id, attempt: task.record.retries + 1, timeout: task.record.timeout, logger: taskLogger)
        // The handler runs in its own task so that a heartbeat that finds the task cancelled or its lease
        // lost can cancel just this one; the child here awaits it, so it never outlives the agent.
        let work = Task { try await self.runHandler(input: input, context: context) }
        let cancelNow = state.withLock { state -> Bool in
            state.owned[id]?.work = work
            return state.owned[id]?.lost ?? true
        }
        if cancelNow { work.cancel() }
        let result = await withTaskCancellationHandler { await work.result } onCancel: { work.cancel() }

        let outcome: Outcome = state.withLock { state in
            if state.owned[id]?.lost ?? true { return .discarded }
            switch result {
            case .success(let output):
                return .success(output)
            case .failure(let error as GridError) where error.code == .timeout:
                return .failure(error.message, retryable: true)
            case .failure(let error as TaskHandlerError):
                return .failure(error.description, retryable: false)
            case .failure(is CancellationError) where state.stopping:
                return .failure("agent \(configuration.id) stopped before the task finished (drain timeout \(configuration.drainTimeout))", retryable: true)
            case .failure(let error):
                return .failure(String(describing: error), retryable: true)
            }
        }
        state.withLock { state in
            state.active -= 1
            state.completions.append(Finished(id: id, outcome: outcome))
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
        let leases: [TaskID: Lease] = state.withLock { state in
            Dictionary(uniqueKeysWithValues: batch.compactMap { item in state.owned[item.id].map { (item.id, $0.lease) } })
        }
        var completions: [TaskCompletion] = []
        var external: [PayloadItem] = []
        var failures: [TaskFailure] = []
        var unowned: [Lease] = []
        var ran: [TaskID] = []
        // Outside readers of a shared data plane (HTC-Grid's connector) look for every output there.
        let inlineLimit = backends.payloads is any SharedPayloadStore ? -1 : configuration.inlineOutputLimit
        for item in batch {
            guard let lease = leases[item.id] else { continue }
            switch item.outcome {
            case .success(let output):
                ran.append(item.id)
                if output.count <= inlineLimit {
                    completions.append(TaskCompletion(id: item.id, output: output))
                } else {
                    external.append(PayloadItem(key: PayloadKey.output(item.id), value: output))
                    completions.append(TaskCompletion(id: item.id, output: nil))
                }
            case .failure(let message, let retryable):
                failures.append(TaskFailure(id: item.id, message: message, retryable: retryable))
            case .discarded:
                unowned.append(lease)
            }
        }
        let now = clock.now
        var acknowledge: [Lease] = []
        var retry: [Lease] = []
        var finishedCount = 0
        var failedCount = 0
        if !external.isEmpty { try await backends.payloads.put(external) }
        if !completions.isEmpty {
            let finished = try await backends.state.finish(completions, owner: configuration.id, at: now)
            finishedCount = finished.count
            for completion in completions {
                guard let lease = leases[completion.id] else { continue }
                if finished.contains(completion.id) { acknowledge.append(lease) } else { unowned.append(lease) }
            }
        }
        if !failures.isEmpty {
            let states = try await backends.state.fail(failures, owner: configuration.id, at: now)
            for failure in failures {
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
        if !unowned.isEmpty { try await settleUnowned(unowned) }
        state.withLock { state in
            for item in batch { state.owned[item.id] = nil }
        }
        counters.finished.increment(by: finishedCount)
        counters.failed.increment(by: failedCount)
        counters.retried.increment(by: retry.count)
        counters.retriesAfterFailure.increment(by: retry.count)
        counters.discarded.increment(by: unowned.count)
        if !ran.isEmpty { configuration.onRunsCompleted?(ran) }
    }

    /// Decides the fate of messages whose task this agent does not own: acknowledged when the task is
    /// terminal or unknown, otherwise handed back for whoever owns it or for the reaper.
    private func settleUnowned(_ leases: [Lease]) async throws {
        var acknowledge: [Lease] = []
        var later: [Lease] = []
        for lease in leases {
            do {
                let record = try await backends.state.task(lease.id)
                if record.state.isTerminal { acknowledge.append(lease) } else { later.append(lease) }
            } catch let error as GridError where error.code == .notFound {
                logger.warning("message for an unknown task dropped", metadata: ["task": "\(lease.id)"])
                acknowledge.append(lease)
            }
        }
        if !acknowledge.isEmpty { try await backends.queue.acknowledge(acknowledge) }
        if !later.isEmpty { try await backends.queue.release(later, delay: configuration.heartbeatInterval) }
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
        let snapshot: [Owned] = state.withLock { Array($0.owned.values) }
        guard !snapshot.isEmpty else { return }
        let renewAfter = configuration.renewAfter.timeInterval
        let due = snapshot.filter { now.timeIntervalSince($0.renewedAt) >= renewAfter }
        let young = snapshot.filter { now.timeIntervalSince($0.renewedAt) < renewAfter }
        var lost: [Owned] = []
        if !due.isEmpty {
            let expiry = now.addingTimeInterval(configuration.leaseDuration.timeInterval)
            let stillOwned = try await backends.state.heartbeat(due.map(\.record.id), owner: configuration.id, leaseExpiry: expiry)
            lost += due.filter { !stillOwned.contains($0.record.id) }
            let renewed = due.filter { stillOwned.contains($0.record.id) }
            state.withLock { state in
                for task in renewed { state.owned[task.record.id]?.renewedAt = now }
            }
            if !renewed.isEmpty {
                _ = try await backends.queue.extend(renewed.map(\.lease), duration: configuration.leaseDuration)
            }
        }
        for session in Set(young.map(\.record.id.session)) {
            let ended: Bool
            do {
                ended = try await backends.state.session(session).cancelled
            } catch let error as GridError where error.code == .notFound {
                ended = true
            }
            if ended { lost += young.filter { $0.record.id.session == session } }
        }
        if !lost.isEmpty {
            let works: [Task<[UInt8], any Error>] = state.withLock { state in
                lost.compactMap { task in
                    state.owned[task.record.id]?.lost = true
                    return state.owned[task.record.id]?.work
                }
            }
            for work in works { work.cancel() }
            logger.info("stopped tasks that were cancelled or whose lease was lost", metadata: ["count": "\(lost.count)"])
        }
    }
}
