import Foundation
import GRDB
import GridKernel

/// The task queue in an SQLite file: one row per message in the `queue` table.
///
/// A message is ready, leased or delayed (see the schema notes in `SQLiteSchema.swift`). A lease
/// marks messages leased until the lease expiry and draws a new random `lease_token` for each;
/// the ``Lease/handle`` is `<message id>:<token>`, so a handle from an earlier delivery never acts on
/// a message that was delivered again since. A handle stays current until the message is delivered
/// again, even after its lease expired (as an SQS receipt handle does). Leased and delayed messages
/// whose time has come become ready again at the next lease, keeping their place: messages of one
/// priority are served in enqueue order. Time is the database's ``SQLiteDatabase/clock``.
///
/// Every call is one write transaction with cached prepared statements; leasing N messages reads N
/// entries of the `queue_ready` index plus one seek per priority served.
public struct SQLiteTaskQueue: DeadLetteringTaskQueue {
    /// The database holding the queue.
    public let database: SQLiteDatabase
    /// When set, a message that would become visible again after this many deliveries is moved to
    /// the dead letters instead (see ``drainDeadLetters(max:)``); `nil` redelivers forever.
    public let maxDeliveries: Int?
    /// How often a waiting ``lease(max:duration:order:wait:)`` looks for messages nobody announced:
    /// messages whose delay or lease ran out, and messages of processes whose wake-ups cannot reach it
    /// (enqueues and releases by this process and, through the wake-up sockets, by other processes of
    /// this user wake it at once).
    public let pollInterval: Duration

    /// Creates a queue on `database`.
    ///
    /// - Parameters:
    ///   - maxDeliveries: the redrive limit, at least 1; `nil` (the default) redelivers forever.
    ///   - pollInterval: how often a waiting lease looks for messages nobody announced.
    public init(database: SQLiteDatabase, maxDeliveries: Int? = nil, pollInterval: Duration = .milliseconds(250)) {
        precondition(maxDeliveries.map { $0 >= 1 } ?? true, "maxDeliveries must be at least 1")
        self.database = database
        self.maxDeliveries = maxDeliveries
        self.pollInterval = pollInterval
    }

    /// Adds the tasks as ready messages, in order, in one transaction.
    ///
    /// - Throws: ``GridError/Code/unavailable`` when the file is locked past the busy timeout or
    ///   cannot be written; ``GridError/Code/payloadTooLarge`` for a payload over SQLite's 1 GB limit.
    public func enqueue(_ tasks: [QueuedTask]) async throws {
        guard !tasks.isEmpty else { return }
        var batch = SQLiteBatch()
        for task in tasks {
            batch.beginRow()
            batch.plain(task.id.session.rawValue)
            batch.int(task.id.index)
            batch.int(task.priority)
            batch.bytes(task.payload)
            batch.endRow()
        }
        try await database.write("enqueue") { [batch] db in
            // json_each walks the array in order, so rowids (the FIFO order) follow the batch's order.
            try db.cachedStatement(
                sql: """
                    INSERT INTO queue (session, idx, priority, payload, status)
                    SELECT value ->> 0, value ->> 1, value ->> 2,
                           CASE WHEN value ->> 4 < 0 THEN NULL ELSE substr(CAST(?2 AS BLOB), value ->> 3, value ->> 4) END, 0
                    FROM json_each(?1)
                    """
            ).execute(arguments: [batch.text, batch.blob])
        }
        database.wakeUps.notify(.arrivals)
    }

    /// Leases up to `max` ready messages for `duration`, in `order` of priority, FIFO within a
    /// priority, in one transaction.
    ///
    /// When nothing is ready and `wait` is positive, waits up to `wait` of real (monotonic) time, not
    /// of the database's clock: an enqueue or release by this process, or by another process through
    /// the database's wake-up socket, wakes the call at once; other messages (delays and leases
    /// running out) are found by looking every ``pollInterval``. A negative `duration` counts as zero.
    ///
    /// - Throws: ``GridError/Code/unavailable``; `CancellationError` at once if cancelled while waiting.
    public func lease(max: Int, duration: Duration, order: PriorityOrder, wait: Duration) async throws -> [Lease] {
        guard max > 0 else { return [] }
        let deadline = ContinuousClock.now.advanced(by: Swift.max(wait, .zero))
        // Listening before the first look: an enqueue committed after it sends this process a wake-up.
        if wait > .zero { database.wakeUps.listen() }
        while true {
            var generation = database.wakeUps.arrivals.generation
            let leases = try await leaseOnce(max: max, duration: Swift.max(duration, .zero), order: order)
            if !leases.isEmpty || ContinuousClock.now >= deadline { return leases }
            // Sleep until a wake-up or one poll interval passes, then look (with a read) again.
            var visible = false
            while !visible {
                let remaining = ContinuousClock.now.duration(to: deadline)
                guard remaining > .zero else { return [] }
                await database.wakeUps.arrivals.wait(after: generation, timeout: Swift.min(pollInterval, remaining))
                try Task.checkCancellation()
                // A wake-up whose message another waiter took must not make the next wait return at once.
                generation = database.wakeUps.arrivals.generation
                visible = try await hasVisibleMessage()
            }
        }
    }

    private func hasVisibleMessage() async throws -> Bool {
        let now = database.clock.now.timeIntervalSince1970
        return try await database.read("lease") { db in
            try Bool.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT EXISTS (SELECT 1 FROM queue WHERE status = 0)
                            OR EXISTS (SELECT 1 FROM queue WHERE status <> 0 AND visible_at <= ?)
                        """),
                arguments: [now]) ?? false
        }
    }

    private func leaseOnce(max: Int, duration: Duration, order: PriorityOrder) async throws -> [Lease] {
        let now = database.clock.now.timeIntervalSince1970
        let expiry = now + duration.timeInterval
        let highestFirst = order == .highestFirst
        let maxDeliveries = self.maxDeliveries
        return try await database.write("lease") { db in
            try Self.promoteDue(db, now: now, maxDeliveries: maxDeliveries)
            let firstBand = try db.cachedStatement(
                sql: "SELECT priority FROM queue WHERE status = 0 ORDER BY priority \(highestFirst ? "DESC" : "ASC") LIMIT 1")
            let nextBand = try db.cachedStatement(
                sql: highestFirst
                    ? "SELECT priority FROM queue WHERE status = 0 AND priority < ? ORDER BY priority DESC LIMIT 1"
                    : "SELECT priority FROM queue WHERE status = 0 AND priority > ? ORDER BY priority ASC LIMIT 1")
            let take = try db.cachedStatement(
                sql: """
                    UPDATE queue SET status = 1, visible_at = ?, lease_token = random(), delivery_count = delivery_count + 1
                    WHERE id IN (SELECT id FROM queue WHERE status = 0 AND priority = ? ORDER BY id LIMIT ?)
                    RETURNING id, session, idx, priority, payload, lease_token, delivery_count
                    """)
            var leases: [Lease] = []
            leases.reserveCapacity(max)
            var sessions = SessionCache()
            var band = try Int.fetchOne(firstBand)
            while let priority = band {
                var taken: [(id: Int64, lease: Lease)] = []
                let rows = try Row.fetchCursor(take, arguments: [expiry, priority, max - leases.count])
                while let row = try rows.next() {
                    let id: Int64 = row[0]
                    let token: Int64 = row[5]
                    let lease = Lease(
                        id: TaskID(session: try sessions.session(row[1]), index: row[2]),
                        priority: row[3],
                        payload: try row.bytes(atIndex: 4),
                        handle: "\(id):\(token)",
                        deliveryCount: row[6]
                    )
                    taken.append((id, lease))
                }
                // RETURNING yields rows in no particular order: restore FIFO.
                taken.sort { $0.id < $1.id }
                leases.append(contentsOf: taken.lazy.map(\.lease))
                guard leases.count < max else { break }
                band = try Int.fetchOne(nextBand, arguments: [priority])
            }
            return leases
        }
    }

    /// Makes leased and delayed messages whose time has come ready again, or dead letters once they
    /// were delivered `maxDeliveries` times. Both are range scans of the `queue_timer` index.
    private static func promoteDue(_ db: Database, now: Double, maxDeliveries: Int?) throws {
        if let maxDeliveries {
            try db.cachedStatement(
                sql: """
                    INSERT INTO dead_letter (session, idx, reason)
                    SELECT session, idx, 'message was delivered ' || delivery_count || ' times; the queue''s redrive limit is ' || ?2
                    FROM queue WHERE status <> 0 AND visible_at <= ?1 AND delivery_count >= ?2 ORDER BY id
                    """
            ).execute(arguments: [now, maxDeliveries])
            try db.cachedStatement(sql: "DELETE FROM queue WHERE status <> 0 AND visible_at <= ?1 AND delivery_count >= ?2")
                .execute(arguments: [now, maxDeliveries])
        }
        try db.cachedStatement(sql: "UPDATE queue SET status = 0 WHERE status <> 0 AND visible_at <= ?").execute(arguments: [now])
    }

    /// Extends the leases whose handle is current (the message was not delivered again and not
    /// acknowledged) to `duration` from now.
    ///
    /// - Returns: the extended leases, unchanged (their handles stay current).
    /// - Throws: ``GridError/Code/invalidArgument`` for a handle this queue did not make;
    ///   ``GridError/Code/unavailable``.
    public func extend(_ leases: [Lease], duration: Duration) async throws -> [Lease] {
        guard !leases.isEmpty else { return [] }
        let handles = try leases.map(Self.parseHandle)
        let expiry = database.clock.now.timeIntervalSince1970 + Swift.max(duration, .zero).timeInterval
        let held = try await database.write("extend") { db in
            try Self.updateCurrent(db, handles, set: "status = 1, visible_at = ?2", expiry)
        }
        return zip(leases, handles).filter { held.contains(Handle(id: $1.id, token: $1.token)) }.map(\.0)
    }

    /// Deletes the messages whose handle is current, in one transaction; stale handles are ignored.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a handle this queue did not make;
    ///   ``GridError/Code/unavailable``.
    public func acknowledge(_ leases: [Lease]) async throws {
        guard !leases.isEmpty else { return }
        let handles = try leases.map(Self.parseHandle)
        let batch = Self.handleBatch(handles)
        try await database.write("acknowledge") { db in
            try db.cachedStatement(
                sql: """
                    DELETE FROM queue WHERE id IN (
                        SELECT q.id FROM json_each(?) AS j JOIN queue AS q ON q.id = j.value ->> 0 AND q.lease_token = j.value ->> 1)
                    """
            ).execute(arguments: [batch.text])
        }
    }

    /// Makes the messages whose handle is current visible again after `delay` (at the next lease, or
    /// as dead letters once delivered `maxDeliveries` times); stale handles are ignored.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a handle this queue did not make;
    ///   ``GridError/Code/unavailable``.
    public func release(_ leases: [Lease], delay: Duration) async throws {
        guard !leases.isEmpty else { return }
        let handles = try leases.map(Self.parseHandle)
        let visibleAt = database.clock.now.timeIntervalSince1970 + Swift.max(delay, .zero).timeInterval
        _ = try await database.write("release") { db in
            try Self.updateCurrent(db, handles, set: "status = 2, visible_at = ?2", visibleAt)
        }
        database.wakeUps.notify(.arrivals)
    }

    /// Counts messages per priority: `inFlight` are leased with a lease that has not expired;
    /// `waiting` are all others (ready, or released with a delay). Priorities without messages are absent.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func depth() async throws -> [Int: QueueDepth] {
        let now = database.clock.now.timeIntervalSince1970
        return try await database.read("depth") { db in
            var depth: [Int: QueueDepth] = [:]
            // Ready messages: a scan of the partial index `queue_ready`.
            let ready = try Row.fetchCursor(
                db.cachedStatement(sql: "SELECT priority, count(*) FROM queue WHERE status = 0 GROUP BY priority"))
            while let row = try ready.next() {
                depth[row[0]] = QueueDepth(waiting: row[1], inFlight: 0)
            }
            // Leased and delayed messages: a scan of the partial index `queue_timer`.
            let timed = try Row.fetchCursor(
                db.cachedStatement(
                    sql: """
                        SELECT priority, sum(status = 1 AND visible_at > ?1), sum(NOT (status = 1 AND visible_at > ?1))
                        FROM queue WHERE status <> 0 GROUP BY priority
                        """),
                arguments: [now])
            while let row = try timed.next() {
                let priority: Int = row[0]
                let inFlight: Int = row[1]
                let waiting: Int = row[2]
                depth[priority, default: QueueDepth(waiting: 0, inFlight: 0)].inFlight += inFlight
                depth[priority, default: QueueDepth(waiting: 0, inFlight: 0)].waiting += waiting
            }
            return depth
        }
    }

    /// Removes and returns up to `max` dead letters, oldest first, after moving the messages that are
    /// due to the dead letters.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func drainDeadLetters(max: Int) async throws -> [DeadLetter] {
        guard max > 0 else { return [] }
        let now = database.clock.now.timeIntervalSince1970
        let maxDeliveries = self.maxDeliveries
        return try await database.write("drainDeadLetters") { db in
            try Self.promoteDue(db, now: now, maxDeliveries: maxDeliveries)
            let rows = try Row.fetchCursor(
                db.cachedStatement(
                    sql: """
                        DELETE FROM dead_letter WHERE id IN (SELECT id FROM dead_letter ORDER BY id LIMIT ?)
                        RETURNING id, session, idx, reason
                        """),
                arguments: [max])
            var letters: [(id: Int64, letter: DeadLetter)] = []
            var sessions = SessionCache()
            while let row = try rows.next() {
                letters.append((row[0], DeadLetter(id: TaskID(session: try sessions.session(row[1]), index: row[2]), reason: row[3])))
            }
            return letters.sorted { $0.id < $1.id }.map(\.letter)
        }
    }

    /// A parsed lease handle: the message's rowid and the delivery's token.
    private struct Handle: Hashable {
        let id: Int64
        let token: Int64
    }

    private static func handleBatch(_ handles: [(id: Int64, token: Int64)]) -> SQLiteBatch {
        var batch = SQLiteBatch()
        for handle in handles {
            batch.beginRow()
            batch.int(handle.id)
            batch.int(handle.token)
            batch.endRow()
        }
        return batch
    }

    /// Applies `set` (whose `?2` is `value`) to the messages whose handle is current, in one statement;
    /// returns the handles that were.
    private static func updateCurrent(
        _ db: Database, _ handles: [(id: Int64, token: Int64)], set: String, _ value: Double
    ) throws -> Set<Handle> {
        // The materialised list drives the join, so each handle is one rowid lookup.
        let rows = try Row.fetchCursor(
            db.cachedStatement(
                sql: """
                    WITH j(id, token) AS MATERIALIZED (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
                    UPDATE queue SET \(set) FROM j WHERE queue.id = j.id AND queue.lease_token = j.token
                    RETURNING queue.id, queue.lease_token
                    """),
            arguments: [handleBatch(handles).text, value])
        var updated = Set<Handle>()
        while let row = try rows.next() { updated.insert(Handle(id: row[0], token: row[1])) }
        return updated
    }

    private static func parseHandle(_ lease: Lease) throws -> (id: Int64, token: Int64) {
        let parts = lease.handle.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let id = Int64(parts[0]), let token = Int64(parts[1]) else {
            throw GridError.invalidArgument(
                "lease handle '\(lease.handle)' of task \(lease.id) was not made by the SQLite queue; pass a lease that lease(max:duration:order:wait:) returned",
                backend: SQLiteDatabase.backendName)
        }
        return (id, token)
    }
}

/// Validates each distinct session id of a result once (rows of one batch mostly share a session).
struct SessionCache {
    private var last: SessionID?

    mutating func session(_ text: String) throws -> SessionID {
        if let last, last.rawValue == text { return last }
        let session = try SessionID(text)
        last = session
        return session
    }
}
