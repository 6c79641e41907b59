import Foundation
import Logging

/// Settings of a ``GridClient``.
public struct ClientConfiguration: Sendable {
    /// Inputs up to this many bytes travel inline in the queue message instead of the payload store,
    /// which saves two payload-store requests per task. Default 8 KiB (well under SQS' 256 KiB).
    public var inlinePayloadLimit: Int
    /// How many tasks go to the backends per call when submitting. Default 5,000. A submission
    /// records its progress after each batch, so a batch must take well under the reaper's
    /// ``ReaperConfiguration/submissionGrace``.
    public var submitBatchSize: Int
    /// How long a submission keeps retrying a step that failed with ``GridError/Code/unavailable``
    /// (a backend restarting, a dropped connection) before it gives up. Every step is safe to repeat:
    /// the submission's idempotency key keeps its indices. Default 30 s; zero for no retries.
    public var retryTimeout: Duration

    /// Creates a configuration with the defaults.
    public init(inlinePayloadLimit: Int = 8 * 1024, submitBatchSize: Int = 5_000, retryTimeout: Duration = .seconds(30)) {
        self.inlinePayloadLimit = inlinePayloadLimit
        self.submitBatchSize = submitBatchSize
        self.retryTimeout = retryTimeout
    }
}

/// A task's record together with its output.
public struct TaskResult: Sendable {
    /// The task as stored.
    public var record: TaskRecord
    /// The output of a `finished` task; `nil` for other states.
    public var output: [UInt8]?

    /// Creates a result.
    public init(record: TaskRecord, output: [UInt8]?) {
        self.record = record
        self.output = output
    }
}

/// The client side of the engine: sessions, submission, results, cancellation.
///
/// Written once over the three protocols; works the same on every backend. Safe to share between tasks.
public struct GridClient: Sendable {
    /// The backends this client talks to.
    public let backends: GridBackends
    /// Its settings.
    public let configuration: ClientConfiguration
    private let clock: any GridClock
    private let logger: Logger
    private let counters = GridCounters()

    /// Creates a client.
    public init(
        backends: GridBackends,
        configuration: ClientConfiguration = ClientConfiguration(),
        clock: any GridClock = SystemClock(),
        logger: Logger = Logger(label: "htc.client")
    ) {
        self.backends = backends
        self.configuration = configuration
        self.clock = clock
        self.logger = logger
    }

    /// Creates a session.
    ///
    /// - Parameter id: the id to use; a random one when `nil` (HTC-Grid clients bring their own).
    /// - Throws: ``GridError/Code/invalidArgument`` for bad options; ``GridError/Code/conflict`` if the id
    ///   is taken; ``GridError/Code/unavailable``.
    public func createSession(_ options: SessionOptions = SessionOptions(), id: SessionID? = nil) async throws -> SessionRecord {
        try options.validate()
        let record = SessionRecord(id: id ?? .random(), options: options, createdAt: clock.now)
        try await backends.state.createSession(record)
        logger.debug("created session", metadata: ["session": "\(record.id)"])
        return record
    }

    /// Submits tasks to a session: their inputs go to the data plane (or inline into the message when
    /// small), their records to the state store, and their messages to the queue, in that order, batch by
    /// batch, so a task is never visible to agents before its input and record exist.
    ///
    /// The submission is journalled under its idempotency key (``SubmissionRecord``): sent again with the
    /// same key and inputs — after a crash, a dropped connection, a timeout — it creates no task twice,
    /// resumes where the first one stopped, and returns the same ids; a submission interrupted for good is
    /// repaired by the reaper (see docs/architecture.md). Steps that fail with
    /// ``GridError/Code/unavailable`` are retried for ``ClientConfiguration/retryTimeout``.
    ///
    /// - Parameter key: the idempotency key; a random one when `nil` (the call is then not repeatable).
    /// - Returns: the task ids, in the order of `inputs`.
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/conflict`` for a
    ///   cancelled one, for a key used before by a submission of another size, or for a submission
    ///   that was repaired as interrupted; ``GridError/Code/payloadTooLarge``; ``GridError/Code/unavailable``.
    @discardableResult
    public func submit(_ session: SessionID, inputs: [[UInt8]], key: SubmissionKey? = nil) async throws -> [TaskID] {
        try await submit(session, count: inputs.count, key: key) { inputs[$0] }
    }

    /// Submits `count` tasks whose inputs are already in the payload store under
    /// ``PayloadKey/input(_:)``, as HTC-Grid clients upload them before submitting: only their records
    /// and messages are written. The new tasks take the session's next indices.
    ///
    /// - Returns: the new task ids, in index order.
    /// - Throws: as ``submit(_:inputs:key:)``.
    @discardableResult
    public func submitStored(_ session: SessionID, count: Int, key: SubmissionKey? = nil) async throws -> [TaskID] {
        try await submit(session, count: count, key: key) { _ in nil }
    }

    /// The one submission path: `input(offset)` gives a task's input, or `nil` when it is already stored.
    private func submit(_ session: SessionID, count: Int, key: SubmissionKey?, input inputAt: (Int) -> [UInt8]?) async throws -> [TaskID] {
        guard count > 0 else { return [] }
        let key = key ?? .random()
        let record = try await retrying("reading session \(session)") { try await backends.state.session(session) }
        var submission = try await retrying("beginning submission \(key)") {
            try await backends.state.beginSubmission(.begin(session: session, key: key, count: count, at: clock.now))
        }
        guard submission.count == count else {
            throw GridError(
                .conflict,
                "idempotency key '\(key)' was used in session \(session) by a submission of \(submission.count) tasks; this one has \(count): use a new key for a different submission"
            )
        }
        switch submission.state {
        case .complete:
            logger.debug("submission already complete", metadata: ["session": "\(session)", "key": "\(key)"])
            return submission.taskIDs
        case .repairing, .repaired:
            throw Self.repairedError(submission)
        case .open:
            break
        }
        let batch = max(1, configuration.submitBatchSize)
        let resumedAt = submission.sent
        var start = submission.sent
        while start < count {
            let end = min(start + batch, count)
            var records: [TaskRecord] = []
            var queued: [QueuedTask] = []
            var external: [PayloadItem] = []
            records.reserveCapacity(end - start)
            queued.reserveCapacity(end - start)
            let now = clock.now
            for offset in start..<end {
                let id = TaskID(session: session, index: submission.first + offset)
                records.append(
                    TaskRecord(
                        id: id,
                        maxRetries: record.options.maxRetries,
                        priority: record.options.priority,
                        timeout: record.options.taskTimeout,
                        submittedAt: now
                    )
                )
                switch inputAt(offset) {
                case let input? where input.count <= configuration.inlinePayloadLimit:
                    queued.append(QueuedTask(id: id, priority: record.options.priority, payload: input))
                case let input?:
                    external.append(PayloadItem(key: PayloadKey.input(id), value: input))
                    queued.append(QueuedTask(id: id, priority: record.options.priority, payload: nil))
                case nil:
                    queued.append(QueuedTask(id: id, priority: record.options.priority, payload: nil))
                }
            }
            if !external.isEmpty { try await retrying("storing inputs") { try await backends.payloads.put(external) } }
            try await retrying("creating task records") { try await backends.state.createTasks(records) }
            try await retrying("enqueueing tasks") { try await backends.queue.enqueue(queued) }
            submission = try await progress(submission, to: end)
            start = end
        }
        counters.submitted.increment(by: count - resumedAt)
        logger.debug("submitted tasks", metadata: ["session": "\(session)", "count": "\(count)", "key": "\(key)"])
        return submission.taskIDs
    }

    /// Records that the first `sent` tasks of a submission are written, conditionally on the version
    /// read last; another writer (a retry with the same key, a repairer) makes it read again.
    private func progress(_ submission: SubmissionRecord, to sent: Int) async throws -> SubmissionRecord {
        var current = submission
        while true {
            // Already recorded: by this call before a lost reply, or by a concurrent retry of the same key.
            if current.sent >= sent { return current }
            guard let next = current.progressed(to: sent, at: clock.now) else { throw Self.repairedError(current) }
            let expected = current.version
            if try await retrying("recording submission progress", { try await backends.state.updateSubmission(next, expectedVersion: expected) }) {
                return next
            }
            current = try await retrying("reading submission \(current.key)") {
                try await backends.state.beginSubmission(.begin(session: submission.session, key: submission.key, count: submission.count, at: clock.now))
            }
        }
    }

    private static func repairedError(_ submission: SubmissionRecord) -> GridError {
        GridError(
            .conflict,
            "submission '\(submission.key)' of session \(submission.session) made no progress for longer than the reaper's grace period and was repaired as interrupted: tasks \(submission.first + submission.sent)..<\(submission.range.upperBound) that had not been sent were enqueued again if their input was stored, and failed otherwise; submit the failed ones again under a new key"
        )
    }

    /// Runs a step, repeating it while it fails with ``GridError/Code/unavailable``, for up to
    /// ``ClientConfiguration/retryTimeout`` with exponential backoff (50 ms to 2 s).
    private func retrying<T>(_ what: String, _ body: () async throws -> T) async throws -> T {
        let deadline = clock.now.addingTimeInterval(configuration.retryTimeout.timeInterval)
        var backoff = Duration.milliseconds(50)
        while true {
            do {
                return try await body()
            } catch let error as GridError where error.code == .unavailable && clock.now < deadline {
                logger.warning("\(what) failed; retrying", metadata: ["error": "\(error)", "backoff": "\(backoff)"])
                try await clock.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(2))
            }
        }
    }

    /// Submits tasks whose inputs are JSON documents.
    ///
    /// - Throws: as ``submit(_:inputs:)``, and `EncodingError`.
    @discardableResult
    public func submit<Input: Encodable>(_ session: SessionID, json inputs: [Input]) async throws -> [TaskID] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try await submit(session, inputs: inputs.map { Array(try encoder.encode($0)) })
    }

    /// Reads a session.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    public func session(_ id: SessionID) async throws -> SessionRecord {
        try await backends.state.session(id)
    }

    /// Counts a session's tasks by state.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func counts(_ session: SessionID) async throws -> StateCounts {
        try await backends.state.counts(session)
    }

    /// Reads one task.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    public func task(_ id: TaskID) async throws -> TaskRecord {
        try await backends.state.task(id)
    }

    /// Reads a finished task's output.
    ///
    /// - Throws: ``GridError/Code/conflict`` if the task is not `finished`; ``GridError/Code/notFound``.
    public func output(_ id: TaskID) async throws -> [UInt8] {
        let record = try await backends.state.task(id)
        guard record.state == .finished else {
            throw GridError(.conflict, "task \(id) is \(record.state.rawValue), not finished; it has no output")
        }
        if let inline = record.output { return inline }
        return try await backends.payloads.get(PayloadKey.output(of: record))
    }

    /// Pages through a session's tasks in one state, with the outputs of finished tasks.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a bad cursor; ``GridError/Code/notFound`` if a
    ///   finished task's output is missing from the data plane; ``GridError/Code/unavailable``.
    public func results(_ session: SessionID, state: TaskState, after cursor: String? = nil, limit: Int = 1_000) async throws -> Page<TaskResult> {
        try await results(session, state: state, after: cursor, limit: limit, maxOutputBytes: .max)
    }

    /// Pages through a session's tasks in one state, with the outputs of finished tasks, at most about
    /// `maxOutputBytes` of them.
    ///
    /// Outputs are read from the payload store in batches sized by the outputs already read (16 to
    /// 1,000), and the page ends early — after at least
    /// one task — once the outputs read reach `maxOutputBytes`, so neither the page nor the memory it
    /// takes grows with the number of tasks asked for. `next` then resumes right after the last task
    /// returned (task cursors are ``IntegerCursor`` task indices on every backend), so no task is skipped.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a bad cursor; ``GridError/Code/notFound`` if a
    ///   finished task's output is missing from the data plane; ``GridError/Code/unavailable``.
    public func results(_ session: SessionID, state: TaskState, after cursor: String?, limit: Int, maxOutputBytes: Int) async throws -> Page<TaskResult> {
        let page = try await backends.state.tasks(session, state: state, after: cursor, limit: limit)
        guard state == .finished else {
            return Page(items: page.items.map { TaskResult(record: $0, output: nil) }, next: page.next)
        }
        let items = try await withOutputs(page.items, maxOutputBytes: maxOutputBytes)
        guard items.count == page.items.count else {
            return Page(items: items, next: items.last.map { IntegerCursor.make($0.record.id.index) })
        }
        return Page(items: items, next: page.next)
    }

    /// Reads a session's results in the order the tasks became terminal (their
    /// ``TaskRecord/completionSequence``), after the number `after`, with the outputs of finished tasks
    /// (unless `outputs` is false) up to about `maxOutputBytes`.
    ///
    /// With a positive `wait`, a call that finds nothing new waits up to `wait` for the next completion
    /// (woken by the state store, see ``StateStore/waitForCompletions(_:after:timeout:)``) and reads
    /// again. ``CompletionPage/next`` is the cursor to pass next: the cursor never skips nor repeats a
    /// task, also across processes, restarts and backends' lagging indexes.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a negative `after` or a `limit` below 1;
    ///   ``GridError/Code/notFound`` for an unknown session, or when a finished task's output is
    ///   missing; ``GridError/Code/unavailable``.
    public func completions(
        _ session: SessionID, after: Int = 0, limit: Int = 1_000, outputs: Bool = true, maxOutputBytes: Int = .max, wait: Duration = .zero
    ) async throws -> CompletionPage {
        var records = try await backends.state.completions(session, after: after, limit: limit)
        if records.isEmpty && wait > .zero {
            if try await backends.state.waitForCompletions(session, after: after, timeout: wait) {
                records = try await backends.state.completions(session, after: after, limit: limit)
            }
        }
        var items: [TaskResult]
        if outputs {
            items = try await withOutputs(records, maxOutputBytes: maxOutputBytes)
        } else {
            items = records.map { TaskResult(record: $0, output: nil) }
        }
        let next = items.last?.record.completionSequence ?? after
        // Whether the session is complete matters only once the reader has caught up.
        var taskCount: Int?
        if items.count < limit { taskCount = try await backends.state.session(session).taskCount }
        return CompletionPage(items: items, next: next, taskCount: taskCount)
    }

    /// A session's results as they complete, in completion order from after the number `after`, with
    /// their outputs (unless `outputs` is false); the sequence ends once every task of the session is
    /// terminal and was returned. Each read waits up to 30 s for the next completion, woken by the state
    /// store. See ``CompletionStream``.
    public func follow(_ session: SessionID, after: Int = 0, outputs: Bool = true) -> CompletionStream {
        CompletionStream(after: after) { after in
            try await completions(session, after: after, limit: 1_000, outputs: outputs, maxOutputBytes: 64 << 20, wait: .seconds(30))
        }
    }

    /// The outputs of `records`, in order: those of finished tasks from the record or the payload store,
    /// `nil` for the others. Outputs are read in batches sized by the outputs already read (16 to 1,000);
    /// once they reach `maxOutputBytes` the answer ends early (after at least one task), so neither it nor
    /// the memory it takes grows with the number of records.
    ///
    /// - Throws: ``GridError/Code/notFound`` if a finished task's output is missing from the payload
    ///   store; ``GridError/Code/unavailable``.
    private func withOutputs(_ records: [TaskRecord], maxOutputBytes: Int) async throws -> [TaskResult] {
        var items: [TaskResult] = []
        items.reserveCapacity(records.count)
        var bytes = 0
        var start = records.startIndex
        while start < records.endIndex {
            // A few outputs first; then as many as the outputs seen so far say fit in what is left.
            var count = 16
            if !items.isEmpty { count = min(1_000, max(16, (maxOutputBytes - bytes) / max(1, bytes / items.count))) }
            let batch = records[start..<min(start + count, records.endIndex)]
            let externalKeys = batch.filter { $0.state == .finished && $0.output == nil }.map { PayloadKey.output(of: $0) }
            let external = externalKeys.isEmpty ? [:] : try await backends.payloads.get(externalKeys)
            for record in batch {
                guard record.state == .finished else {
                    items.append(TaskResult(record: record, output: nil))
                    continue
                }
                let output: [UInt8]
                if let inline = record.output {
                    output = inline
                } else if let stored = external[PayloadKey.output(of: record)] {
                    output = stored
                } else {
                    throw GridError.notFound("output of finished task \(record.id) is missing from the payload store")
                }
                if !items.isEmpty && bytes + output.count > maxOutputBytes { return items }
                bytes += output.count
                items.append(TaskResult(record: record, output: output))
            }
            start = batch.endIndex
        }
        return items
    }

    /// Waits until every task of the session is terminal, woken by the state store's completions
    /// (``StateStore/waitForCompletions(_:after:timeout:)``) rather than by polling its counts.
    ///
    /// - Parameters:
    ///   - expected: the number of tasks to wait for; the session's task count when `nil`.
    ///   - pollInterval: how often `progress` is called while tasks remain.
    ///   - timeout: give up after this long; wait for ever when `nil`.
    ///   - progress: called with the counts at the start, every `pollInterval` and at the end.
    /// - Returns: the final counts.
    /// - Throws: ``GridError/Code/timeout``; ``GridError/Code/unavailable``; `CancellationError`.
    @discardableResult
    public func wait(
        for session: SessionID,
        expected: Int? = nil,
        pollInterval: Duration = .milliseconds(50),
        timeout: Duration? = nil,
        progress: @Sendable (StateCounts) -> Void = { _ in }
    ) async throws -> StateCounts {
        let total: Int
        if let expected { total = expected } else { total = try await backends.state.session(session).taskCount }
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while true {
            let counts = try await backends.state.counts(session)
            progress(counts)
            if counts.terminal >= total { return counts }
            var pause = pollInterval
            if let deadline {
                let remaining = deadline - ContinuousClock.now
                guard remaining > .zero else {
                    throw GridError(.timeout, "session \(session) has \(counts.terminal) of \(total) tasks terminal after the timeout")
                }
                pause = min(pause, remaining)
            }
            // Woken when the last task completes, or after the pause for the next progress report.
            _ = try await backends.state.waitForCompletions(session, after: total - 1, timeout: pause)
        }
    }

    /// Cancels a session: later submissions are refused, waiting tasks never run and running ones are
    /// stopped within one heartbeat interval.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    public func cancel(_ session: SessionID) async throws -> CancelCounts {
        try await backends.state.cancelSession(session, at: clock.now)
    }

    /// Deletes a session: cancels it (so agents stop its running tasks and drop its queued messages),
    /// removes its payloads (inputs, the outputs of every attempt, the session payload) 1,000 keys per
    /// call while its records still say which attempts wrote outputs, then its records and submissions.
    ///
    /// - Returns: how many task records were removed.
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``. Repeating a delete that
    ///   failed half-way is safe: the records go last.
    @discardableResult
    public func deleteSession(_ session: SessionID) async throws -> Int {
        let record = try await backends.state.session(session)
        _ = try await backends.state.cancelSession(session, at: clock.now)
        var keys: [String] = []
        func flush(_ force: Bool) async throws {
            guard keys.count >= 1_000 || (force && !keys.isEmpty) else { return }
            try await backends.payloads.delete(keys)
            keys.removeAll(keepingCapacity: true)
        }
        // Every reserved index may have an input and an output under HTC-Grid's key, record or not.
        for index in 0..<record.taskCount {
            let id = TaskID(session: session, index: index)
            keys += [PayloadKey.input(id), PayloadKey.output(id)]
            try await flush(false)
        }
        // Attempts wrote their outputs under keys of their own; only the records say how many there were.
        for state in TaskState.allCases {
            var cursor: String?
            repeat {
                let page = try await backends.state.tasks(session, state: state, after: cursor, limit: 1_000)
                for task in page.items where task.attempt > 0 {
                    keys += (1...task.attempt).map { PayloadKey.output(task.id, attempt: $0) }
                    try await flush(false)
                }
                cursor = page.next
            } while cursor != nil
        }
        keys.append(PayloadKey.sessionPayload(session))
        try await flush(true)
        return try await backends.state.deleteSession(session)
    }

    /// Cancels tasks.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func cancel(_ tasks: [TaskID]) async throws -> CancelCounts {
        try await backends.state.cancel(tasks, at: clock.now)
    }
}
