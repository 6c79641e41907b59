import Foundation
import GridKernel

/// A ``StateStore`` on Redis.
///
/// Each task is one string `prefix:{session}:t:<index>`, the record packed as MessagePack
/// (``RedisTaskCodec``: a transition is one `GET` and one `SET`, whatever the number of fields). A
/// session's tasks are also indexed per state in sorted sets scored by index (pages are
/// `ZRANGEBYSCORE`), and processing tasks in a sorted set scored by lease expiry, so expired leases
/// are found without a scan. The scripts that move tasks also keep the session's counts per state
/// (the hash `prefix:{session}:counts`) and its completion order (the list `prefix:{session}:order`
/// of task indices, the task numbered n at position n − 1), and publish the last completion number on
/// the channel `prefix:{session}:done`. All keys of a session share the hash tag `{session}`. Every
/// transition is a Lua script, one call per session per batch, the calls of a batch pipelined in one
/// write (see ``RedisScripts``).
///
/// Sessions written by the previous version (no counters) are counted and numbered by the first
/// script that touches them, reads included (see `upgrade` in ``RedisScripts``).
///
/// Cursors: sessions page with the last session id, tasks with the last task index (``IntegerCursor``).
public struct RedisStateStore: StateStore {
    let client: RedisClient
    private let prefix: String
    /// The longest pause of ``waitForCompletions(_:after:timeout:)`` between two looks (real time)
    /// while the subscriber connection is down; while it is up, the longest is 5 s or this if longer.
    private let pollInterval: Duration
    private static let backend = "redis"

    /// Creates a store under the client's key prefix; ``waitForCompletions(_:after:timeout:)`` looks at
    /// least every `pollInterval` when the subscriber connection is down (and every 5 s, or
    /// `pollInterval` if longer, when it is up: a safety net, since completions are published).
    public init(client: RedisClient, pollInterval: Duration = .milliseconds(250)) {
        self.client = client
        self.prefix = client.settings.prefix
        self.pollInterval = pollInterval
    }

    // MARK: Sessions

    /// Creates a session.
    ///
    /// - Throws: ``GridError/Code/conflict`` if it exists; ``GridError/Code/unavailable``.
    public func createSession(_ session: SessionRecord) async throws {
        let options = try JSONEncoder().encode(session.options)
        let fields: [[UInt8]] = [
            Array("options".utf8), Array(options), Array("created".utf8), RedisKeys.bytes(session.createdAt),
            Array("count".utf8), RedisKeys.bytes(session.taskCount), Array("cancelled".utf8), Array((session.cancelled ? "1" : "0").utf8),
        ]
        let reply = try await client.run([RedisScriptCall(script: RedisScripts.createSession, keys: [base(session.id)], arguments: fields)])[0]
        guard reply.int == 1 else {
            throw GridError(.conflict, "session '\(session.id)' already exists", backend: Self.backend)
        }
        _ = try await client.send([RedisCommand("ZADD", RedisKeys.sessions(prefix: prefix), "0", session.id.rawValue)], idempotent: true)[0].checked()
    }

    /// Reads a session.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    public func session(_ id: SessionID) async throws -> SessionRecord {
        let reply = try await client.send([RedisCommand("HGETALL", base(id) + ":info")], idempotent: true)[0].checked()
        guard let record = try Self.session(id, reply) else {
            throw GridError.notFound("session '\(id)' does not exist", backend: Self.backend)
        }
        return record
    }

    /// Lists sessions in id order.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a malformed cursor or a `limit` below 1;
    ///   ``GridError/Code/unavailable``.
    public func sessions(after cursor: String?, limit: Int) async throws -> Page<SessionRecord> {
        try Self.check(limit: limit)
        var start = "-"
        if let id = try SessionCursor.parse(cursor, backend: Self.backend) { start = "(" + id.rawValue }
        let listed = try await client.send([
            RedisCommand("ZRANGEBYLEX", RedisKeys.sessions(prefix: prefix), start, "+", "LIMIT", "0", String(limit + 1))
        ], idempotent: true)[0].checked().elements.compactMap { $0.string }.compactMap { try? SessionID($0) }
        let ids = Array(listed.prefix(limit))
        let replies = try await client.send(ids.map { RedisCommand("HGETALL", base($0) + ":info") }, idempotent: true)
        var items: [SessionRecord] = []
        var expired: [String] = []
        for (id, reply) in zip(ids, replies) {
            if let record = try Self.session(id, try reply.checked()) { items.append(record) } else { expired.append(id.rawValue) }
        }
        if !expired.isEmpty {
            // Sessions whose keys expired after their retention period leave the list here.
            _ = try? await client.send([RedisCommand(bytes: [Array("ZREM".utf8), Array(RedisKeys.sessions(prefix: prefix).utf8)] + expired.map { Array($0.utf8) })], idempotent: true)
        }
        return Page(items: items, next: listed.count > limit ? ids.last?.rawValue : nil)
    }

    /// Begins a submission: one script reserves the indices and stores the submission in the session's
    /// `subs` hash, or returns the one with the same key. The submission is also named in the grid-wide
    /// sorted set `prefix:submissions` (scored by its last update) while it is open or repairing, which
    /// is how ``stalledSubmissions(before:limit:)`` finds it; the set is written around the script so
    /// that a crash leaves at most a stale name (dropped by the next look), never a missing one.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/conflict`` for a cancelled session;
    ///   ``GridError/Code/invalidArgument`` for a negative count; ``GridError/Code/unavailable``.
    public func beginSubmission(_ submission: SubmissionRecord) async throws -> SubmissionRecord {
        guard submission.count >= 0 else {
            throw GridError.invalidArgument("count is \(submission.count); it must not be negative", backend: Self.backend)
        }
        let member = Self.member(submission)
        if submission.state.isActive {
            _ = try await client.send([RedisCommand("ZADD", submissionsKey, "NX", RedisKeys.text(submission.updatedAt), member)], idempotent: true)[0]
                .checked()
        }
        let tail = Self.encodeProgress(submission)
        let reply = try await client.run([
            RedisScriptCall(
                script: RedisScripts.beginSubmission, keys: [base(submission.session)],
                arguments: [Array(submission.key.rawValue.utf8), RedisKeys.bytes(submission.count), Array(tail.utf8)])
        ])[0].elements
        let stored: SubmissionRecord
        let code: Int? = reply.first.flatMap { $0.int }
        switch code {
        case .some(-1):
            try await forget(member)
            throw GridError.notFound("session '\(submission.session)' does not exist", backend: Self.backend)
        case .some(-2):
            try await forget(member)
            throw GridError(.conflict, "session '\(submission.session)' was cancelled; it takes no more tasks", backend: Self.backend)
        case .some(0), .some(1):
            guard reply.count == 2, let text = reply[1].string, let record = Self.decode(text, session: submission.session, key: submission.key) else {
                throw GridError(.internalError, "beginning a submission returned \(reply)", backend: Self.backend)
            }
            stored = record
        default:
            throw GridError(.internalError, "beginning a submission returned \(reply)", backend: Self.backend)
        }
        if !stored.state.isActive { try await forget(member) }
        return stored
    }

    /// Replaces a submission if its stored version is `expectedVersion` (one script), then moves or
    /// removes its name in `prefix:submissions`.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func updateSubmission(_ submission: SubmissionRecord, expectedVersion: Int) async throws -> Bool {
        let reply = try await client.run([
            RedisScriptCall(
                script: RedisScripts.updateSubmission, keys: [base(submission.session)],
                arguments: [Array(submission.key.rawValue.utf8), RedisKeys.bytes(expectedVersion), Array(Self.encode(submission).utf8)])
        ])[0]
        guard reply.int == 1 else { return false }
        let member = Self.member(submission)
        if submission.state.isActive {
            _ = try await client.send([RedisCommand("ZADD", submissionsKey, RedisKeys.text(submission.updatedAt), member)], idempotent: true)[0]
                .checked()
        } else {
            try await forget(member)
        }
        return true
    }

    /// The open and repairing submissions last updated before `date`, oldest first: names from
    /// `prefix:submissions` by score, each checked against its record (stale names are dropped or
    /// re-scored on the way).
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func stalledSubmissions(before date: Date, limit: Int) async throws -> [SubmissionRecord] {
        guard limit > 0 else { return [] }
        var found: [SubmissionRecord] = []
        var offset = 0
        let page = max(100, limit * 2)
        while found.count < limit {
            let members = try await client.send([
                RedisCommand("ZRANGEBYSCORE", submissionsKey, "-inf", "(" + RedisKeys.text(date), "LIMIT", String(offset), String(page))
            ], idempotent: true)[0].checked().elements.compactMap(\.string)
            guard !members.isEmpty else { break }
            let named = members.compactMap(Self.parse(member:))
            let replies = try await client.send(named.map { RedisCommand("HGET", base($0.session) + ":subs", $0.key.rawValue) }, idempotent: true)
            var stale: [String] = []
            var rescored: [(String, Date)] = []
            for (name, reply) in zip(named, replies) {
                let member = "\(name.session.rawValue) \(name.key.rawValue)"
                guard let text = try reply.checked().string, let record = Self.decode(text, session: name.session, key: name.key), record.state.isActive
                else {
                    stale.append(member)
                    continue
                }
                if record.updatedAt < date { found.append(record) } else { rescored.append((member, record.updatedAt)) }
            }
            for member in stale { try await forget(member) }
            for (member, updated) in rescored {
                _ = try await client.send([RedisCommand("ZADD", submissionsKey, RedisKeys.text(updated), member)], idempotent: true)[0].checked()
            }
            offset += members.count - stale.count - rescored.count
            if members.count < page { break }
        }
        found.sort { ($0.updatedAt, $0.session, $0.key) < ($1.updatedAt, $1.session, $1.key) }
        return Array(found.prefix(limit))
    }

    private var submissionsKey: String { prefix + ":submissions" }

    private func forget(_ member: String) async throws {
        _ = try await client.send([RedisCommand("ZREM", submissionsKey, member)], idempotent: true)[0].checked()
    }

    /// `<session> <key>`: a submission's name in `prefix:submissions` (neither holds a space).
    private static func member(_ submission: SubmissionRecord) -> String { "\(submission.session.rawValue) \(submission.key.rawValue)" }

    private static func parse(member: String) -> (session: SessionID, key: SubmissionKey)? {
        let parts = member.split(separator: " ", maxSplits: 1).map(String.init)
        guard parts.count == 2, let session = try? SessionID(parts[0]), let key = try? SubmissionKey(parts[1]) else { return nil }
        return (session, key)
    }

    /// `first|count|sent|state|version|created|updated`.
    static func encode(_ submission: SubmissionRecord) -> String {
        "\(submission.first)|\(submission.count)|" + encodeProgress(submission)
    }

    /// `sent|state|version|created|updated`: what follows the range, which the begin script puts in front.
    static func encodeProgress(_ submission: SubmissionRecord) -> String {
        [String(submission.sent), submission.state.rawValue, String(submission.version), RedisKeys.text(submission.createdAt), RedisKeys.text(submission.updatedAt)]
            .joined(separator: "|")
    }

    static func decode(_ text: String, session: SessionID, key: SubmissionKey) -> SubmissionRecord? {
        let fields = text.split(separator: "|").map(String.init)
        guard fields.count == 7, let first = Int(fields[0]), let count = Int(fields[1]), let sent = Int(fields[2]),
            let state = SubmissionState(rawValue: fields[3]), let version = Int(fields[4]), let created = RedisKeys.date(fields[5]),
            let updated = RedisKeys.date(fields[6])
        else { return nil }
        return SubmissionRecord(
            session: session, key: key, first: first, count: count, sent: sent, state: state, version: version, createdAt: created, updatedAt: updated)
    }

    /// Marks the session cancelled and cancels its pending and processing tasks.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    public func cancelSession(_ id: SessionID, at: Date) async throws -> CancelCounts {
        let reply = try await client.run([
            RedisScriptCall(script: RedisScripts.cancelSession, keys: [base(id)], arguments: [RedisKeys.bytes(at)])
        ])[0].elements.map { $0.int ?? 0 }
        guard reply.count == 2 else { throw GridError.notFound("session '\(id)' does not exist", backend: Self.backend) }
        await retire([id])
        return CancelCounts(pending: reply[0], processing: reply[1])
    }

    /// Removes the session and its task records, 10,000 records per script call so that Redis is
    /// never blocked for long; then removes it from the session list.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    public func deleteSession(_ id: SessionID) async throws -> Int {
        var removed = 0
        while true {
            let reply = try await client.run([
                RedisScriptCall(script: RedisScripts.deleteSession, keys: [base(id)], arguments: [RedisKeys.bytes(10_000)])
            ])[0].elements.map { $0.int ?? 0 }
            guard reply.count == 2 else {
                // A repeated call after a dropped reply finds the session gone: report what this call saw.
                if removed > 0 { break }
                throw GridError.notFound("session '\(id)' does not exist", backend: Self.backend)
            }
            removed += reply[0]
            if reply[1] == 1 { break }
        }
        _ = try await client.send([RedisCommand("ZREM", RedisKeys.sessions(prefix: prefix), id.rawValue)], idempotent: true)[0].checked()
        return removed
    }

    // MARK: Tasks

    /// Creates the tasks that do not exist yet, 1,000 per script call, pipelined.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func createTasks(_ tasks: [TaskRecord]) async throws {
        let calls = chunked(tasks, by: \.id) { records in
            var arguments: [[UInt8]] = []
            arguments.reserveCapacity(records.count * 4)
            for record in records {
                arguments.append(RedisKeys.bytes(record.id.index))
                arguments.append(Array(record.state.rawValue.utf8))
                arguments.append(record.state == .processing ? record.leaseExpiry.map(RedisKeys.bytes) ?? [] : [])
                arguments.append(RedisTaskCodec.encode(record))
            }
            return (RedisScripts.createTasks, arguments)
        }
        _ = try await run(calls, idempotent: true)
    }

    /// Claims the pending, unowned tasks, each starting a new attempt; the same call sent again (same
    /// owner and token) gets back what it won.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func claim(_ ids: [TaskID], owner: AgentID, token: ClaimToken, leaseExpiry: Date, now: Date) async throws -> [TaskRecord] {
        let head = [Array(owner.rawValue.utf8), RedisKeys.bytes(leaseExpiry), RedisKeys.bytes(now), Array(token.rawValue.utf8)]
        let calls = chunked(Self.unique(ids), by: \.self) { (RedisScripts.claim, head + $0.map { RedisKeys.bytes($0.index) }) }
        return try await records(calls, idempotent: true)
    }

    /// Moves the lease expiry of the current attempts `owner` holds.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func heartbeat(_ attempts: [TaskAttempt], owner: AgentID, leaseExpiry: Date) async throws -> Set<TaskID> {
        let head = [Array(owner.rawValue.utf8), RedisKeys.bytes(leaseExpiry)]
        let calls = chunked(attempts, by: \.id) { (RedisScripts.heartbeat, head + Self.pairs($0)) }
        return try await indices(calls, idempotent: true)
    }

    /// Gives back the current attempts `owner` holds, unrun.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func release(_ attempts: [TaskAttempt], owner: AgentID) async throws -> Set<TaskID> {
        let calls = chunked(attempts, by: \.id) { (RedisScripts.releaseTasks, [Array(owner.rawValue.utf8)] + Self.pairs($0)) }
        return try await indices(calls)
    }

    /// Finishes the current attempts `owner` holds.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func finish(_ completions: [TaskCompletion], owner: AgentID, at: Date) async throws -> Set<TaskID> {
        let head = [Array(owner.rawValue.utf8), RedisKeys.bytes(at)]
        let calls = chunked(completions, by: \.id) { items in
            var arguments = head
            for item in items {
                arguments.append(RedisKeys.bytes(item.id.index))
                arguments.append(RedisKeys.bytes(item.attempt))
                arguments.append(item.output == nil ? [UInt8(ascii: "0")] : [UInt8(ascii: "1")])
                arguments.append(item.output ?? [])
            }
            return (RedisScripts.finish, arguments)
        }
        let finished = try await indices(calls)
        await retire(completions.map(\.id.session))
        return finished
    }

    /// Records failed runs of the current attempts `owner` holds, by the retry rule.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func fail(_ failures: [TaskFailure], owner: AgentID, at: Date) async throws -> [TaskID: TaskState] {
        let head = [Array(owner.rawValue.utf8), RedisKeys.bytes(at)]
        let calls = chunked(failures, by: \.id) { items in
            var arguments = head
            for item in items {
                arguments.append(RedisKeys.bytes(item.id.index))
                arguments.append(RedisKeys.bytes(item.attempt))
                arguments.append(Array(item.message.utf8))
                arguments.append(item.retryable ? [UInt8(ascii: "1")] : [UInt8(ascii: "0")])
            }
            return (RedisScripts.fail, arguments)
        }
        let states = try await states(calls)
        if states.values.contains(.failed) { await retire(failures.map(\.id.session)) }
        return states
    }

    /// (index, attempt) arguments.
    private static func pairs(_ attempts: [TaskAttempt]) -> [[UInt8]] {
        var arguments: [[UInt8]] = []
        arguments.reserveCapacity(attempts.count * 2)
        for attempt in attempts {
            arguments.append(RedisKeys.bytes(attempt.id.index))
            arguments.append(RedisKeys.bytes(attempt.attempt))
        }
        return arguments
    }

    private static func unique(_ ids: [TaskID]) -> [TaskID] {
        var seen = Set<TaskID>()
        return ids.filter { seen.insert($0).inserted }
    }

    /// Reaps the tasks whose lease expired before `now`.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func expire(_ ids: [TaskID], now: Date) async throws -> [TaskID: TaskState] {
        let calls = chunked(ids, by: \.self) { (RedisScripts.expire, [RedisKeys.bytes(now)] + $0.map { RedisKeys.bytes($0.index) }) }
        let states = try await states(calls)
        if states.values.contains(.failed) { await retire(ids.map(\.session)) }
        return states
    }

    /// Fails the tasks that are not terminal.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func forceFail(_ failures: [TaskFailure], at: Date) async throws -> Set<TaskID> {
        let calls = chunked(failures, by: \.id) { items in
            var arguments = [RedisKeys.bytes(at)]
            for item in items {
                arguments.append(RedisKeys.bytes(item.id.index))
                arguments.append(Array(item.message.utf8))
            }
            return (RedisScripts.forceFail, arguments)
        }
        let failed = try await indices(calls)
        await retire(failures.map(\.id.session))
        return failed
    }

    /// Cancels the tasks that are not terminal.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func cancel(_ ids: [TaskID], at: Date) async throws -> CancelCounts {
        let calls = chunked(ids, by: \.self) { (RedisScripts.cancel, [RedisKeys.bytes(at)] + $0.map { RedisKeys.bytes($0.index) }) }
        var counts = CancelCounts()
        for (_, reply) in try await run(calls) {
            let values = reply.elements.map { $0.int ?? 0 }
            guard values.count == 2 else { continue }
            counts.pending += values[0]
            counts.processing += values[1]
        }
        await retire(ids.map(\.session))
        return counts
    }

    /// Reads one task.
    ///
    /// - Throws: ``GridError/Code/notFound``; ``GridError/Code/unavailable``.
    public func task(_ id: TaskID) async throws -> TaskRecord {
        let reply = try await client.send([RedisCommand("GET", base(id.session) + ":t:\(id.index)")], idempotent: true)[0].checked()
        guard let record = try Self.record(id, reply) else {
            throw GridError.notFound("task '\(id)' does not exist", backend: Self.backend)
        }
        return record
    }

    /// Reads the tasks that exist among `ids`: their `GET`s pipelined in one round trip.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func tasks(_ ids: [TaskID]) async throws -> [TaskRecord] {
        let unique = Self.unique(ids)
        guard !unique.isEmpty else { return [] }
        let replies = try await client.send(unique.map { RedisCommand("GET", base($0.session) + ":t:\($0.index)") }, idempotent: true)
        var records: [TaskRecord] = []
        for (id, reply) in zip(unique, replies) {
            if let record = try Self.record(id, try reply.checked()) { records.append(record) }
        }
        return records
    }

    /// Counts a session's tasks by state: one `HGETALL` of the counters the scripts keep. A session the
    /// previous version wrote (no `counted` marker) is upgraded first, by one more script call.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func counts(_ session: SessionID) async throws -> StateCounts {
        var reply = try await client.send([RedisCommand("HGETALL", base(session) + ":counts")], idempotent: true)[0].checked()
        var fields = Self.fields(reply)
        if fields["counted"] == nil {
            reply = try await client.run([RedisScriptCall(script: RedisScripts.counts, keys: [base(session)], arguments: [])], idempotent: true)[0]
            fields = Self.fields(reply)
        }
        var counts = StateCounts()
        for state in TaskState.allCases {
            if let count = fields[state.rawValue]?.int, count > 0 { counts[state] = count }
        }
        return counts
    }

    /// Reads a session's terminal tasks in completion order: one script call, an `LRANGE` of the
    /// completion order and a `GET` per task returned.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a negative `sequence` or a `limit` below 1;
    ///   ``GridError/Code/unavailable``.
    public func completions(_ session: SessionID, after sequence: Int, limit: Int) async throws -> [TaskRecord] {
        try CompletionPolling.check(after: sequence, limit: limit, backend: Self.backend)
        let call = RedisScriptCall(
            script: RedisScripts.completions, keys: [base(session)], arguments: [RedisKeys.bytes(sequence), RedisKeys.bytes(limit)])
        return try Self.records(session, try await client.run([call], idempotent: true)[0])
    }

    /// Waits until the session has a terminal task numbered above `sequence`: woken within a
    /// millisecond by the scripts' publish on `prefix:{session}:done` (whatever process or connection
    /// made the transition), looking at the counts after each wake; without the subscriber connection,
    /// every `pollInterval`.
    ///
    /// - Returns: `true` when such a task exists; `false` at the timeout.
    /// - Throws: `CancellationError` as soon as the waiting task is cancelled; ``GridError/Code/unavailable``.
    public func waitForCompletions(_ session: SessionID, after sequence: Int, timeout: Duration) async throws -> Bool {
        let found = try await client.subscriber.wait(
            on: doneChannel(session), timeout: timeout, poll: pollInterval, livePoll: max(pollInterval, .seconds(5))
        ) { () async throws -> (found: Bool?, again: Duration?) in
            (try await counts(session).terminal > sequence ? true : nil, nil)
        }
        return found ?? false
    }

    /// The channel the scripts publish a session's last completion number on.
    func doneChannel(_ session: SessionID) -> String { base(session) + ":done" }

    /// Pages through a session's tasks in one state, in index order.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a malformed cursor or a `limit` below 1;
    ///   ``GridError/Code/unavailable``.
    public func tasks(_ session: SessionID, state: TaskState, after cursor: String?, limit: Int) async throws -> Page<TaskRecord> {
        try Self.check(limit: limit)
        let after = try IntegerCursor.parse(cursor, backend: Self.backend)
        let arguments = [Array(state.rawValue.utf8), Array((after.map { "(\($0)" } ?? "-inf").utf8), RedisKeys.bytes(limit + 1)]
        let reply = try await client.run([RedisScriptCall(script: RedisScripts.page, keys: [base(session)], arguments: arguments)], idempotent: true)[0]
        let found = try Self.records(session, reply)
        let items = Array(found.prefix(limit))
        return Page(items: items, next: found.count > limit ? items.last.map { IntegerCursor.make($0.id.index) } : nil)
    }

    /// Finds up to `limit` processing tasks whose lease expired before `now`, earliest first.
    ///
    /// Looks in every session's lease set, one script call per session, pipelined: the cost grows with
    /// the number of sessions kept, not with the number of tasks.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func expiredLeases(now: Date, limit: Int) async throws -> [TaskRecord] {
        guard limit > 0 else { return [] }
        let ids = try await client.send([RedisCommand("ZRANGE", RedisKeys.sessions(prefix: prefix), "0", "-1")], idempotent: true)[0]
            .checked().elements.compactMap { $0.string }.compactMap { try? SessionID($0) }
        let arguments = [RedisKeys.bytes(now), RedisKeys.bytes(limit)]
        let calls = ids.map { RedisScriptCall(script: RedisScripts.expired, keys: [base($0)], arguments: arguments) }
        var found: [TaskRecord] = []
        for (session, reply) in zip(ids, try await client.run(calls, idempotent: true)) {
            found += try Self.records(session, reply)
        }
        found.sort { ($0.leaseExpiry ?? .distantPast, $0.id) < ($1.leaseExpiry ?? .distantPast, $1.id) }
        return Array(found.prefix(limit))
    }

    // MARK: Retention

    /// With a retention period, sets the expiry of every key of each session that is now complete
    /// (every reserved index terminal): task records 10,000 per script call, then the session's info
    /// and indexes, which a submission arriving meanwhile keeps alive (the last script checks again,
    /// and `beginSubmission` removes expiries). Best effort: a failure here leaves the keys in place
    /// (nothing is lost) and the next transition of the session tries again.
    private func retire(_ sessions: [SessionID]) async {
        guard let retention = client.settings.retention else { return }
        let seconds = RedisKeys.bytes(Int(retention.components.seconds))
        var seen = Set<SessionID>()
        for session in sessions where seen.insert(session).inserted {
            let key = [base(session)]
            do {
                guard try await client.run([RedisScriptCall(script: RedisScripts.complete, keys: key, arguments: [])])[0].int == 1 else {
                    continue
                }
                for state in [TaskState.finished, .failed, .cancelled] {
                    var first = 0
                    while true {
                        let call = RedisScriptCall(
                            script: RedisScripts.expireTasks, keys: key,
                            arguments: [seconds, Array(state.rawValue.utf8), RedisKeys.bytes(first), RedisKeys.bytes(10_000)]
                        )
                        let done = try await client.run([call], idempotent: true)[0].int ?? 0
                        first += done
                        if done < 10_000 { break }
                    }
                }
                _ = try await client.run([RedisScriptCall(script: RedisScripts.expireSession, keys: key, arguments: [seconds])], idempotent: true)
            } catch {
                continue
            }
        }
    }

    // MARK: Encoding

    private func base(_ session: SessionID) -> String { RedisKeys.session(prefix: prefix, session.rawValue) }

    /// Groups items by session and makes one script call per session and per 1,000 items.
    private func chunked<Item>(
        _ items: [Item], by id: (Item) -> TaskID, _ make: ([Item]) -> (RedisScript, [[UInt8]])
    ) -> [(SessionID, RedisScriptCall)] {
        var groups: [SessionID: [Item]] = [:]
        var order: [SessionID] = []
        for item in items {
            let session = id(item).session
            if groups[session] == nil { order.append(session) }
            groups[session, default: []].append(item)
        }
        var calls: [(SessionID, RedisScriptCall)] = []
        for session in order {
            let group = groups[session] ?? []
            for start in stride(from: 0, to: group.count, by: 1_000) {
                let (script, arguments) = make(Array(group[start..<min(start + 1_000, group.count)]))
                calls.append((session, RedisScriptCall(script: script, keys: [base(session)], arguments: arguments)))
            }
        }
        return calls
    }

    private func run(_ calls: [(SessionID, RedisScriptCall)], idempotent: Bool = false) async throws -> [(SessionID, RedisValue)] {
        let replies = try await client.run(calls.map(\.1), idempotent: idempotent)
        return Array(zip(calls.map(\.0), replies))
    }

    private func records(_ calls: [(SessionID, RedisScriptCall)], idempotent: Bool = false) async throws -> [TaskRecord] {
        var records: [TaskRecord] = []
        for (session, reply) in try await run(calls, idempotent: idempotent) { records += try Self.records(session, reply) }
        return records
    }

    private func indices(_ calls: [(SessionID, RedisScriptCall)], idempotent: Bool = false) async throws -> Set<TaskID> {
        var ids: Set<TaskID> = []
        for (session, reply) in try await run(calls, idempotent: idempotent) {
            for index in reply.elements.compactMap(\.int) { ids.insert(TaskID(session: session, index: index)) }
        }
        return ids
    }

    private func states(_ calls: [(SessionID, RedisScriptCall)]) async throws -> [TaskID: TaskState] {
        var states: [TaskID: TaskState] = [:]
        for (session, reply) in try await run(calls) {
            let items = reply.elements
            for start in stride(from: 0, to: items.count - 1, by: 2) {
                guard let index = items[start].int, let state = items[start + 1].string.flatMap(TaskState.init(rawValue:)) else { continue }
                states[TaskID(session: session, index: index)] = state
            }
        }
        return states
    }

    private static func check(limit: Int) throws {
        guard limit >= 1 else {
            throw GridError.invalidArgument("limit is \(limit); it must be at least 1", backend: backend)
        }
    }

    /// A record from its packed form (``RedisTaskCodec``); `nil` for the nil reply (no such task).
    static func record(_ id: TaskID, _ reply: RedisValue) throws -> TaskRecord? {
        guard case .bytes(let packed) = reply else { return nil }
        return try RedisTaskCodec.decode(id, packed)
    }

    /// Records from a script's `(index, packed record)` pairs; missing records are left out.
    static func records(_ session: SessionID, _ reply: RedisValue) throws -> [TaskRecord] {
        let items = reply.elements
        var records: [TaskRecord] = []
        records.reserveCapacity(items.count / 2)
        for start in stride(from: 0, to: items.count - 1, by: 2) {
            guard let index = items[start].int, index >= 0 else { continue }
            if let record = try record(TaskID(session: session, index: index), items[start + 1]) { records.append(record) }
        }
        return records
    }

    /// The fields of an `HGETALL` reply.
    static func fields(_ reply: RedisValue) -> [String: RedisValue] {
        let items = reply.elements
        var map: [String: RedisValue] = [:]
        for start in stride(from: 0, to: items.count - 1, by: 2) {
            if let name = items[start].string { map[name] = items[start + 1] }
        }
        return map
    }

    /// A session from `HGETALL` of its info hash; `nil` for an empty hash.
    static func session(_ id: SessionID, _ reply: RedisValue) throws -> SessionRecord? {
        let map = fields(reply)
        guard !map.isEmpty else { return nil }
        guard let json = map["options"]?.bytes, let options = try? JSONDecoder().decode(SessionOptions.self, from: Data(json)),
            let created = RedisKeys.date(map["created"]?.string)
        else {
            throw GridError(.internalError, "session '\(id)' is stored malformed in Redis", backend: backend)
        }
        return SessionRecord(
            id: id, options: options, createdAt: created, taskCount: map["count"]?.int ?? 0, cancelled: map["cancelled"]?.string == "1"
        )
    }
}
