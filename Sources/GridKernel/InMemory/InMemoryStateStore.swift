import Foundation

/// The reference ``StateStore``: sessions and task records kept in memory.
///
/// Every transition is checked and applied inside the actor, so it is atomic and exactly one of
/// several concurrent claimers wins. Each session keeps its task indices sorted per state, and
/// processing tasks are kept sorted by lease expiry, so paging a state and finding expired leases cost
/// O(log n + page) however many tasks there are.
///
/// The store takes every time from its callers (`now`, `at`, the records' dates); the clock is
/// accepted so that all in-memory backends are built alike.
///
/// Cursors: ``sessions(after:limit:)`` pages with the last session id, ``tasks(_:state:after:limit:)``
/// with the last task index (``IntegerCursor``).
public actor InMemoryStateStore: StateStore {
    /// A session's task indices, sorted, one list per state.
    private struct StateIndex {
        private var lists = [SortedList<Int>](repeating: SortedList(), count: TaskState.allCases.count)

        subscript(state: TaskState) -> SortedList<Int> { lists[Self.slot(state)] }

        mutating func insert(_ index: Int, into state: TaskState) { lists[Self.slot(state)].insert(index) }

        mutating func remove(_ index: Int, from state: TaskState) { lists[Self.slot(state)].remove(index) }

        private static func slot(_ state: TaskState) -> Int {
            switch state {
            case .pending: 0
            case .processing: 1
            case .finished: 2
            case .failed: 3
            case .cancelled: 4
            }
        }
    }

    /// A processing task by lease expiry.
    private struct ExpiryKey: Comparable {
        let expiry: Date
        let id: TaskID
        static func < (lhs: ExpiryKey, rhs: ExpiryKey) -> Bool { (lhs.expiry, lhs.id) < (rhs.expiry, rhs.id) }
    }

    private let clock: any GridClock
    private var sessionRecords: [SessionID: SessionRecord] = [:]
    private var sessionOrder = SortedList<SessionID>()
    private var records: [TaskID: TaskRecord] = [:]
    private var indexes: [SessionID: StateIndex] = [:]
    /// Each session's terminal tasks in completion order: the task numbered `n` is at `n - 1`.
    private var completionOrder: [SessionID: [Int]] = [:]
    /// Rung whenever a task becomes terminal, for ``waitForCompletions(_:after:timeout:)``.
    private nonisolated let completed = ArrivalSignal()
    /// Whether tasks became terminal since the waiters were last woken (once per call, not per task).
    private var unannounced = false
    private var expiries = SortedList<ExpiryKey>()
    private var submissions: [SubmissionSlot: SubmissionRecord] = [:]

    private struct SubmissionSlot: Hashable {
        let session: SessionID
        let key: SubmissionKey
    }

    /// Creates an empty store.
    public init(clock: any GridClock = SystemClock()) {
        self.clock = clock
    }

    // MARK: - Sessions

    /// Creates a session.
    ///
    /// - Throws: ``GridError/Code/conflict`` if it exists.
    public func createSession(_ session: SessionRecord) async throws {
        guard sessionRecords[session.id] == nil else {
            throw GridError(.conflict, "session '\(session.id)' already exists", backend: Self.backend)
        }
        sessionRecords[session.id] = session
        sessionOrder.insert(session.id)
    }

    /// Reads a session.
    ///
    /// - Throws: ``GridError/Code/notFound``.
    public func session(_ id: SessionID) async throws -> SessionRecord {
        try existingSession(id)
    }

    /// Lists sessions in id order; the cursor is the last id of the previous page.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a malformed cursor or a `limit` below 1.
    public func sessions(after cursor: String?, limit: Int) async throws -> Page<SessionRecord> {
        try Self.check(limit: limit)
        let after = try SessionCursor.parse(cursor, backend: Self.backend)
        let (ids, more) = sessionOrder.elements(after: after, limit: limit)
        return Page(items: ids.compactMap { sessionRecords[$0] }, next: more ? ids.last?.rawValue : nil)
    }

    /// Begins a submission: reserves its indices and keeps it, or returns the one with the same key.
    ///
    /// - Throws: ``GridError/Code/notFound`` for an unknown session; ``GridError/Code/conflict`` if it was
    ///   cancelled; ``GridError/Code/invalidArgument`` for a negative count.
    public func beginSubmission(_ submission: SubmissionRecord) async throws -> SubmissionRecord {
        guard submission.count >= 0 else {
            throw GridError.invalidArgument("count is \(submission.count); it must not be negative", backend: Self.backend)
        }
        var record = try existingSession(submission.session)
        let key = SubmissionSlot(session: submission.session, key: submission.key)
        if let existing = submissions[key] { return existing }
        guard !record.cancelled else {
            throw GridError(.conflict, "session '\(submission.session)' was cancelled; it takes no more tasks", backend: Self.backend)
        }
        var stored = submission
        stored.first = record.taskCount
        record.taskCount += submission.count
        sessionRecords[submission.session] = record
        submissions[key] = stored
        return stored
    }

    /// Replaces a submission if its version is `expectedVersion`. Never throws.
    public func updateSubmission(_ submission: SubmissionRecord, expectedVersion: Int) async throws -> Bool {
        let key = SubmissionSlot(session: submission.session, key: submission.key)
        guard var stored = submissions[key], stored.version == expectedVersion else { return false }
        stored.sent = submission.sent
        stored.state = submission.state
        stored.version = submission.version
        stored.updatedAt = submission.updatedAt
        submissions[key] = stored
        return true
    }

    /// The active submissions last updated before `date`, oldest first. Never throws.
    public func stalledSubmissions(before date: Date, limit: Int) async throws -> [SubmissionRecord] {
        let stalled = submissions.values.filter { $0.isStalled(before: date) }
        return Array(stalled.sorted { ($0.updatedAt, $0.session, $0.key) < ($1.updatedAt, $1.session, $1.key) }.prefix(max(0, limit)))
    }

    /// Marks the session cancelled and cancels its pending and processing tasks.
    ///
    /// - Throws: ``GridError/Code/notFound`` for an unknown session.
    public func cancelSession(_ id: SessionID, at: Date) async throws -> CancelCounts {
        var record = try existingSession(id)
        record.cancelled = true
        sessionRecords[id] = record
        guard let index = indexes[id] else { return CancelCounts() }
        let live = (index[.pending].all + index[.processing].all).map { TaskID(session: id, index: $0) }
        return cancelTasks(live, at: at)
    }

    /// Removes the session and all its task records.
    ///
    /// - Throws: ``GridError/Code/notFound`` for an unknown session.
    public func deleteSession(_ id: SessionID) async throws -> Int {
        _ = try existingSession(id)
        sessionRecords[id] = nil
        sessionOrder.remove(id)
        submissions = submissions.filter { $0.key.session != id }
        completionOrder[id] = nil
        guard let index = indexes.removeValue(forKey: id) else { return 0 }
        var removed = 0
        for state in TaskState.allCases {
            for taskIndex in index[state].all {
                let taskID = TaskID(session: id, index: taskIndex)
                guard let record = records.removeValue(forKey: taskID) else { continue }
                if let key = Self.expiryKey(record) { expiries.remove(key) }
                removed += 1
            }
        }
        return removed
    }

    // MARK: - Tasks

    /// Creates the records of tasks that do not exist yet; existing ones are left as they are.
    /// Tasks of sessions the store does not know are accepted. Never throws.
    public func createTasks(_ tasks: [TaskRecord]) async throws {
        for task in tasks where records[task.id] == nil {
            store(task, replacing: nil)
        }
        announceCompletions()
    }

    /// Claims tasks by ``TaskRecord/claimed(by:token:leaseExpiry:now:)``. Unknown tasks are ignored.
    /// Never throws.
    public func claim(_ ids: [TaskID], owner: AgentID, token: ClaimToken, leaseExpiry: Date, now: Date) async throws -> [TaskRecord] {
        transition(ids) { $0.claimed(by: owner, token: token, leaseExpiry: leaseExpiry, now: now) }.map(\.new)
    }

    /// Moves the lease expiry of the current attempts `owner` runs. Never throws.
    public func heartbeat(_ attempts: [TaskAttempt], owner: AgentID, leaseExpiry: Date) async throws -> Set<TaskID> {
        let byID = Dictionary(attempts.map { ($0.id, $0.attempt) }, uniquingKeysWith: { $1 })
        return Set(transition(attempts.map(\.id)) { $0.heartbeated(by: owner, attempt: byID[$0.id] ?? -1, leaseExpiry: leaseExpiry) }.map(\.new.id))
    }

    /// Finishes the current attempts `owner` runs, keeping inline outputs in ``TaskRecord/output``.
    /// Never throws.
    public func finish(_ completions: [TaskCompletion], owner: AgentID, at: Date) async throws -> Set<TaskID> {
        let byID = Dictionary(completions.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        return Set(
            transition(completions.map(\.id)) { old in
                byID[old.id].flatMap { old.finished(by: owner, attempt: $0.attempt, output: $0.output, at: at) }
            }.map(\.new.id))
    }

    /// Records failed runs of the current attempts `owner` runs, by the retry rule. Never throws.
    public func fail(_ failures: [TaskFailure], owner: AgentID, at: Date) async throws -> [TaskID: TaskState] {
        let byID = Dictionary(failures.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        let changed = transition(failures.map(\.id)) { old in
            byID[old.id].flatMap { old.failed(by: owner, attempt: $0.attempt, message: $0.message, retryable: $0.retryable, at: at) }
        }
        return Dictionary(changed.map { ($0.new.id, $0.new.state) }, uniquingKeysWith: { $1 })
    }

    /// Gives back the current attempts `owner` runs, unrun. Never throws.
    public func release(_ attempts: [TaskAttempt], owner: AgentID) async throws -> Set<TaskID> {
        let byID = Dictionary(attempts.map { ($0.id, $0.attempt) }, uniquingKeysWith: { $1 })
        return Set(transition(attempts.map(\.id)) { $0.released(by: owner, attempt: byID[$0.id] ?? -1) }.map(\.new.id))
    }

    /// Reaps the tasks whose lease expired before `now`, by the retry rule. Never throws.
    public func expire(_ ids: [TaskID], now: Date) async throws -> [TaskID: TaskState] {
        Dictionary(transition(ids) { $0.expired(now: now) }.map { ($0.new.id, $0.new.state) }, uniquingKeysWith: { $1 })
    }

    /// Fails the tasks that are not terminal, whatever their owner or retries. Never throws.
    public func forceFail(_ failures: [TaskFailure], at: Date) async throws -> Set<TaskID> {
        let byID = Dictionary(failures.map { ($0.id, $0.message) }, uniquingKeysWith: { first, _ in first })
        return Set(transition(failures.map(\.id)) { old in byID[old.id].flatMap { old.forceFailed(message: $0, at: at) } }.map(\.new.id))
    }

    /// Cancels the tasks that are not terminal. Never throws.
    public func cancel(_ ids: [TaskID], at: Date) async throws -> CancelCounts {
        cancelTasks(ids, at: at)
    }

    /// Reads one task.
    ///
    /// - Throws: ``GridError/Code/notFound``.
    public func task(_ id: TaskID) async throws -> TaskRecord {
        guard let record = records[id] else {
            throw GridError.notFound("task '\(id)' does not exist", backend: Self.backend)
        }
        return record
    }

    /// Reads the tasks that exist among `ids`. Never throws.
    public func tasks(_ ids: [TaskID]) async throws -> [TaskRecord] {
        var seen = Set<TaskID>()
        return ids.compactMap { seen.insert($0).inserted ? records[$0] : nil }
    }

    /// Reads a session's terminal tasks in completion order, after the number `sequence`.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a negative `sequence` or a `limit` below 1.
    public func completions(_ session: SessionID, after sequence: Int, limit: Int) async throws -> [TaskRecord] {
        try CompletionPolling.check(after: sequence, limit: limit, backend: Self.backend)
        guard let order = completionOrder[session], sequence < order.count else { return [] }
        return order[sequence..<min(order.count, sequence + limit)].compactMap { records[TaskID(session: session, index: $0)] }
    }

    /// Waits until the session has a terminal task numbered above `sequence`; woken by the transitions
    /// of this store, without polling.
    ///
    /// - Throws: `CancellationError` when cancelled.
    public func waitForCompletions(_ session: SessionID, after sequence: Int, timeout: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            let generation = completed.generation
            if (completionOrder[session]?.count ?? 0) > sequence { return true }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { return false }
            await completed.wait(after: generation, timeout: remaining)
            try Task.checkCancellation()
        }
    }

    /// Counts a session's tasks by state (the sizes of its state lists); an unknown session has no
    /// tasks. Never throws.
    public func counts(_ session: SessionID) async throws -> StateCounts {
        var counts = StateCounts()
        guard let index = indexes[session] else { return counts }
        for state in TaskState.allCases where index[state].count > 0 {
            counts[state] = index[state].count
        }
        return counts
    }

    /// Pages through a session's tasks in one state, in index order; the cursor is the last index of
    /// the previous page.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a malformed cursor or a `limit` below 1.
    public func tasks(_ session: SessionID, state: TaskState, after cursor: String?, limit: Int) async throws -> Page<TaskRecord> {
        try Self.check(limit: limit)
        let after = try IntegerCursor.parse(cursor, backend: Self.backend)
        guard let index = indexes[session] else { return Page(items: [], next: nil) }
        let (indices, more) = index[state].elements(after: after, limit: limit)
        let items = indices.compactMap { records[TaskID(session: session, index: $0)] }
        return Page(items: items, next: more ? indices.last.map(IntegerCursor.make) : nil)
    }

    /// Finds up to `limit` processing tasks whose lease expired before `now`, earliest first. Never throws.
    public func expiredLeases(now: Date, limit: Int) async throws -> [TaskRecord] {
        var found: [TaskRecord] = []
        for key in expiries.prefix(limit, while: { $0.expiry < now }) {
            if let record = records[key.id] { found.append(record) }
        }
        return found
    }

    // MARK: - Bookkeeping

    private static let backend = "memory"

    private static func check(limit: Int) throws {
        guard limit >= 1 else {
            throw GridError.invalidArgument("limit is \(limit); it must be at least 1", backend: backend)
        }
    }

    private func existingSession(_ id: SessionID) throws -> SessionRecord {
        guard let record = sessionRecords[id] else {
            throw GridError.notFound("session '\(id)' does not exist", backend: Self.backend)
        }
        return record
    }

    private func cancelTasks(_ ids: [TaskID], at: Date) -> CancelCounts {
        var counts = CancelCounts()
        for (old, _) in transition(ids, { $0.cancelled(at: at) }) {
            if old.state == .pending { counts.pending += 1 } else { counts.processing += 1 }
        }
        return counts
    }

    /// Applies a rule to each existing task once (a repeated id counts once), storing the records it
    /// changes; returns the changed records before and after, in the order of `ids`.
    private func transition(_ ids: [TaskID], _ rule: (TaskRecord) -> TaskRecord?) -> [(old: TaskRecord, new: TaskRecord)] {
        var seen = Set<TaskID>()
        var changed: [(old: TaskRecord, new: TaskRecord)] = []
        for id in ids where seen.insert(id).inserted {
            guard let old = records[id], let new = rule(old) else { continue }
            changed.append((old, new != old ? store(new, replacing: old) : new))
        }
        announceCompletions()
        return changed
    }

    /// Wakes the completion waiters once if the call made tasks terminal.
    private func announceCompletions() {
        guard unannounced else { return }
        unannounced = false
        completed.signal()
    }

    /// Writes a record, numbering it in its session's completion order if it just became terminal, and
    /// keeps the state lists and the expiry index in step with it; returns the record as stored.
    @discardableResult
    private func store(_ record: TaskRecord, replacing old: TaskRecord?) -> TaskRecord {
        var new = record
        let id = new.id
        if new.enteredTerminalState(from: old) {
            completionOrder[id.session, default: []].append(id.index)
            new.completionSequence = completionOrder[id.session]?.count
            unannounced = true
        }
        if old?.state != new.state {
            if let old { indexes[id.session, default: StateIndex()].remove(id.index, from: old.state) }
            indexes[id.session, default: StateIndex()].insert(id.index, into: new.state)
        }
        let oldKey = old.flatMap(Self.expiryKey)
        let newKey = Self.expiryKey(new)
        if oldKey != newKey {
            if let oldKey { expiries.remove(oldKey) }
            if let newKey { expiries.insert(newKey) }
        }
        records[id] = new
        return new
    }

    private static func expiryKey(_ record: TaskRecord) -> ExpiryKey? {
        guard record.state == .processing, let expiry = record.leaseExpiry else { return nil }
        return ExpiryKey(expiry: expiry, id: record.id)
    }
}

/// A sorted set kept as a list of sorted chunks: O(log n + chunk) insert, remove and seek, in-order
/// paging, and cheap removal at the front (the common case when tasks are claimed in order).
private struct SortedList<Element: Comparable> {
    private static var maxChunk: Int { 1_024 }
    private var chunks: [[Element]] = []
    private(set) var count = 0

    /// Every element, in order.
    var all: [Element] { chunks.flatMap { $0 } }

    /// Inserts an element; does nothing if it is present.
    mutating func insert(_ element: Element) {
        guard let last = chunks.last?.last else {
            chunks = [[element]]
            count = 1
            return
        }
        // Tasks are mostly created in index order: append without searching.
        let chunk = element > last ? chunks.count - 1 : chunkIndex(firstNotBelow: element) ?? chunks.count - 1
        let position = Self.position(in: chunks[chunk], firstNotBelow: element)
        if position < chunks[chunk].count, chunks[chunk][position] == element { return }
        chunks[chunk].insert(element, at: position)
        count += 1
        if chunks[chunk].count > Self.maxChunk {
            let upper = Array(chunks[chunk][(Self.maxChunk / 2)...])
            chunks[chunk].removeSubrange((Self.maxChunk / 2)...)
            chunks.insert(upper, at: chunk + 1)
        }
    }

    /// Removes an element; does nothing if it is absent.
    mutating func remove(_ element: Element) {
        guard let chunk = chunkIndex(firstNotBelow: element) else { return }
        let position = Self.position(in: chunks[chunk], firstNotBelow: element)
        guard position < chunks[chunk].count, chunks[chunk][position] == element else { return }
        chunks[chunk].remove(at: position)
        count -= 1
        if chunks[chunk].isEmpty { chunks.remove(at: chunk) }
    }

    /// Up to `limit` elements greater than `after` (all from the start when `nil`), and whether more follow.
    func elements(after: Element?, limit: Int) -> (elements: [Element], more: Bool) {
        var result: [Element] = []
        var chunk = 0
        var position = 0
        if let after {
            guard let found = chunkIndex(firstAbove: after) else { return ([], false) }
            chunk = found
            position = Self.position(in: chunks[chunk], firstAbove: after)
        }
        while chunk < chunks.count {
            while position < chunks[chunk].count {
                if result.count == limit { return (result, true) }
                result.append(chunks[chunk][position])
                position += 1
            }
            chunk += 1
            position = 0
        }
        return (result, false)
    }

    /// Up to `limit` elements from the start, while `predicate` holds.
    func prefix(_ limit: Int, while predicate: (Element) -> Bool) -> [Element] {
        var result: [Element] = []
        for chunk in chunks {
            for element in chunk {
                guard result.count < limit, predicate(element) else { return result }
                result.append(element)
            }
        }
        return result
    }

    /// The first chunk whose last element is `>= element`.
    private func chunkIndex(firstNotBelow element: Element) -> Int? {
        firstChunk { $0 >= element }
    }

    /// The first chunk whose last element is `> element`.
    private func chunkIndex(firstAbove element: Element) -> Int? {
        firstChunk { $0 > element }
    }

    /// The first chunk whose last element satisfies `test`, which must be monotonic over the chunks.
    private func firstChunk(where test: (Element) -> Bool) -> Int? {
        var low = 0
        var high = chunks.count
        while low < high {
            let middle = (low + high) / 2
            if test(chunks[middle][chunks[middle].count - 1]) { high = middle } else { low = middle + 1 }
        }
        return low < chunks.count ? low : nil
    }

    private static func position(in chunk: [Element], firstNotBelow element: Element) -> Int {
        var low = 0
        var high = chunk.count
        while low < high {
            let middle = (low + high) / 2
            if chunk[middle] < element { low = middle + 1 } else { high = middle }
        }
        return low
    }

    private static func position(in chunk: [Element], firstAbove element: Element) -> Int {
        var low = 0
        var high = chunk.count
        while low < high {
            let middle = (low + high) / 2
            if chunk[middle] <= element { low = middle + 1 } else { high = middle }
        }
        return low
    }
}
