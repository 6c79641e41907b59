import Foundation
import Logging

/// Settings of a ``GridClient``.
public struct ClientConfiguration: Sendable {
    /// Inputs up to this many bytes travel inline in the queue message instead of the payload store,
    /// which saves two payload-store requests per task. Default 8 KiB (well under SQS' 256 KiB).
    public var inlinePayloadLimit: Int
    /// How many tasks go to the backends per call when submitting. Default 5,000.
    public var submitBatchSize: Int

    /// Creates a configuration with the defaults.
    public init(inlinePayloadLimit: Int = 8 * 1024, submitBatchSize: Int = 5_000) {
        self.inlinePayloadLimit = inlinePayloadLimit
        self.submitBatchSize = submitBatchSize
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
    /// - Returns: the new task ids, in the order of `inputs`.
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/conflict`` for a
    ///   cancelled one; ``GridError/Code/payloadTooLarge``; ``GridError/Code/unavailable``.
    @discardableResult
    public func submit(_ session: SessionID, inputs: [[UInt8]]) async throws -> [TaskID] {
        guard !inputs.isEmpty else { return [] }
        let record = try await backends.state.session(session)
        let indices = try await backends.state.reserveTaskIndices(session, count: inputs.count)
        let now = clock.now
        var ids: [TaskID] = []
        ids.reserveCapacity(inputs.count)
        let batch = max(1, configuration.submitBatchSize)
        var start = 0
        while start < inputs.count {
            let end = min(start + batch, inputs.count)
            var records: [TaskRecord] = []
            var queued: [QueuedTask] = []
            var external: [PayloadItem] = []
            records.reserveCapacity(end - start)
            queued.reserveCapacity(end - start)
            for offset in start..<end {
                let id = TaskID(session: session, index: indices.lowerBound + offset)
                let input = inputs[offset]
                records.append(
                    TaskRecord(
                        id: id,
                        maxRetries: record.options.maxRetries,
                        priority: record.options.priority,
                        timeout: record.options.taskTimeout,
                        submittedAt: now
                    )
                )
                if input.count <= configuration.inlinePayloadLimit {
                    queued.append(QueuedTask(id: id, priority: record.options.priority, payload: input))
                } else {
                    external.append(PayloadItem(key: PayloadKey.input(id), value: input))
                    queued.append(QueuedTask(id: id, priority: record.options.priority, payload: nil))
                }
                ids.append(id)
            }
            if !external.isEmpty { try await backends.payloads.put(external) }
            try await backends.state.createTasks(records)
            try await backends.queue.enqueue(queued)
            start = end
        }
        logger.debug("submitted tasks", metadata: ["session": "\(session)", "count": "\(inputs.count)"])
        return ids
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
        return try await backends.payloads.get(PayloadKey.output(id))
    }

    /// Pages through a session's tasks in one state, with the outputs of finished tasks.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a bad cursor; ``GridError/Code/notFound`` if a
    ///   finished task's output is missing from the data plane; ``GridError/Code/unavailable``.
    public func results(_ session: SessionID, state: TaskState, after cursor: String? = nil, limit: Int = 1_000) async throws -> Page<TaskResult> {
        let page = try await backends.state.tasks(session, state: state, after: cursor, limit: limit)
        guard state == .finished else {
            return Page(items: page.items.map { TaskResult(record: $0, output: nil) }, next: page.next)
        }
        let externalKeys = page.items.filter { $0.output == nil }.map { PayloadKey.output($0.id) }
        let external = externalKeys.isEmpty ? [:] : try await backends.payloads.get(externalKeys)
        let items = try page.items.map { record -> TaskResult in
            if let inline = record.output { return TaskResult(record: record, output: inline) }
            guard let stored = external[PayloadKey.output(record.id)] else {
                throw GridError.notFound("output of finished task \(record.id) is missing from the payload store")
            }
            return TaskResult(record: record, output: stored)
        }
        return Page(items: items, next: page.next)
    }

    /// Waits until every task of the session is terminal, polling its counts.
    ///
    /// - Parameters:
    ///   - expected: the number of tasks to wait for; the session's task count when `nil`.
    ///   - timeout: give up after this long; wait for ever when `nil`.
    ///   - progress: called with the counts after every poll.
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
        let deadline = timeout.map { clock.now.addingTimeInterval($0.timeInterval) }
        while true {
            let counts = try await backends.state.counts(session)
            progress(counts)
            if counts.terminal >= total { return counts }
            if let deadline, clock.now >= deadline {
                throw GridError(.timeout, "session \(session) has \(counts.terminal) of \(total) tasks terminal after the timeout")
            }
            try await clock.sleep(for: pollInterval)
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
    /// removes its records, then its payloads (inputs, outputs and the session payload), 1,000 keys
    /// per call.
    ///
    /// - Returns: how many task records were removed.
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``. Repeating a delete that
    ///   failed half-way is safe until the records are gone; payloads left behind by a failure after that
    ///   point are orphans no reader can reach.
    @discardableResult
    public func deleteSession(_ session: SessionID) async throws -> Int {
        let record = try await backends.state.session(session)
        _ = try await backends.state.cancelSession(session, at: clock.now)
        let removed = try await backends.state.deleteSession(session)
        try await backends.payloads.delete([PayloadKey.sessionPayload(session)])
        for start in stride(from: 0, to: record.taskCount, by: 500) {
            let keys = (start..<min(start + 500, record.taskCount)).flatMap { index -> [String] in
                let id = TaskID(session: session, index: index)
                return [PayloadKey.input(id), PayloadKey.output(id)]
            }
            try await backends.payloads.delete(keys)
        }
        return removed
    }

    /// Cancels tasks.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func cancel(_ tasks: [TaskID]) async throws -> CancelCounts {
        try await backends.state.cancel(tasks, at: clock.now)
    }
}
