import Foundation
import GridKernel
import NIOCore
import PostgresNIO

/// The task queue in PostgreSQL: one row per message in the `queue` table (see `PostgresSchema.swift`).
///
/// A lease takes the first N ready messages of the highest (or lowest) priority band with
/// `SELECT … FOR UPDATE SKIP LOCKED` inside the `UPDATE` that marks them leased: concurrent consumers
/// skip each other's rows instead of waiting, and never take the same message. Leased and delayed
/// messages whose time has come are made ready again by the next lease (one range scan of
/// `queue_timer`, usually empty). The ``Lease/handle`` is `<id>:<delivery count>`; it stays current
/// until the message is delivered again, even after its lease expired, as an SQS receipt handle does.
/// Every call is one statement (a lease two: due messages, then the band), whatever the batch size.
/// An enqueue and a release notify the channel `<schema>_ready` (delivered at commit), which wakes the
/// waiting leases of every process (``PostgresNotifications``).
public struct PostgresTaskQueue: TaskQueue {
    /// The database holding the queue.
    public let database: PostgresDatabase

    /// Creates a queue on `database`.
    public init(database: PostgresDatabase) {
        self.database = database
    }

    private var backend: String { PostgresDatabase.backendName }

    /// Adds the tasks as ready messages, in order, with one `INSERT … SELECT FROM unnest(…)` that also
    /// notifies `<schema>_ready`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/payloadTooLarge`` for an inline payload over PostgreSQL's
    ///   1 GB `bytea` limit; ``GridKernel/GridError/Code/unavailable``.
    public func enqueue(_ tasks: [QueuedTask]) async throws {
        guard !tasks.isEmpty else { return }
        if let big = tasks.first(where: { ($0.payload?.count ?? 0) > PostgresConfiguration.byteaLimit }) {
            throw GridError(
                .payloadTooLarge, "the inline payload of task \(big.id) is \(ByteCount(big.payload?.count ?? 0)); PostgreSQL stores at most 1 GiB",
                backend: backend)
        }
        let sessions = tasks.map(\.id.session.rawValue)
        let indices = tasks.map(\.id.index)
        let priorities = tasks.map(\.priority)
        let hasPayload = tasks.map { $0.payload != nil }
        let payloads = tasks.map { ByteBuffer(bytes: $0.payload ?? []) }
        // WITH ORDINALITY + ORDER BY: identities (the FIFO order) are drawn in the batch's order.
        try await database.execute(
            "enqueue",
            """
            WITH inserted AS (
                INSERT INTO \(unescaped: database.table("queue")) (session, idx, priority, payload)
                SELECT s, i, p, CASE WHEN h THEN d END
                FROM unnest(\(sessions)::text[], \(indices)::int8[], \(priorities)::int8[], \(hasPayload)::bool[], \(payloads)::bytea[])
                    WITH ORDINALITY AS j(s, i, p, h, d, n)
                ORDER BY n
            )
            SELECT pg_notify(\(readyChannel), '') IS NULL
            """)
    }

    /// Leases up to `max` ready messages for `duration`, in `order` of priority, FIFO within a priority.
    ///
    /// When nothing is ready and `wait` is positive, waits until `wait` (real time) has passed for a
    /// notification of `<schema>_ready` (an enqueue or a release by any process), or for the next
    /// delayed or leased message to come due, and looks again; every ``PostgresDatabase/pollInterval``
    /// while notifications cannot reach this process. A negative `duration` counts as zero.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``; `CancellationError` as soon as the task is
    ///   cancelled while waiting.
    public func lease(max: Int, duration: Duration, order: PriorityOrder, wait: Duration) async throws -> [Lease] {
        guard max > 0 else { return [] }
        let duration = Swift.max(duration, .zero)
        return try await database.waitForNotification(readyChannel, key: "", timeout: wait) {
            let (leases, due) = try await leaseOnce(max: max, duration: duration, order: order)
            return (leases.isEmpty ? nil : leases, due)
        } ?? []
    }

    /// The channel of arrivals, `<schema>_ready`.
    private var readyChannel: String { database.channel("ready") }

    /// One look: makes the messages that came due ready, then leases; also tells when the next message
    /// that is delayed or leased comes due, if any.
    private func leaseOnce(max: Int, duration: Duration, order: PriorityOrder) async throws -> (leases: [Lease], due: Duration?) {
        let now = database.clock.now.timeIntervalSince1970
        let expiry = now + duration.timeInterval
        let queue = database.table("queue")
        let nextDue = try await database.collect(
            "lease",
            """
            WITH due AS (
                UPDATE \(unescaped: queue) SET status = 0
                WHERE id IN (SELECT id FROM \(unescaped: queue) WHERE status <> 0 AND visible_at <= \(now) FOR UPDATE SKIP LOCKED)
            )
            SELECT min(visible_at) FROM \(unescaped: queue) WHERE status <> 0 AND visible_at > \(now)
            """
        ) { row in try row.decode(Double?.self) }.first ?? nil
        let direction = order == .highestFirst ? "DESC" : "ASC"
        let beyond = order == .highestFirst ? "<" : ">"
        var leases: [Lease] = []
        var band: Int?
        // One priority band per statement; the next band only when this one ran dry.
        while leases.count < max {
            var taken: [(id: Int, lease: Lease)] = try await database.collect(
                "lease",
                """
                WITH band AS (
                    SELECT priority FROM \(unescaped: queue)
                    WHERE status = 0 AND (\(band)::int8 IS NULL OR priority \(unescaped: beyond) \(band)::int8)
                    ORDER BY priority \(unescaped: direction) LIMIT 1
                ), picked AS (
                    SELECT id FROM \(unescaped: queue) WHERE status = 0 AND priority = (SELECT priority FROM band)
                    ORDER BY id LIMIT \(max - leases.count) FOR UPDATE SKIP LOCKED
                )
                UPDATE \(unescaped: queue) AS q SET status = 1, visible_at = \(expiry), delivery_count = q.delivery_count + 1
                FROM picked WHERE q.id = picked.id
                RETURNING q.id, q.session, q.idx, q.priority, q.payload, q.delivery_count
                """
            ) { row in
                let (id, session, index, priority, payload, deliveries) = try row.decode((Int, String, Int, Int, ByteBuffer?, Int).self)
                return (
                    id,
                    Lease(
                        id: TaskID(session: try SessionID(session), index: index), priority: priority,
                        payload: payload.map { Array($0.readableBytesView) }, handle: "\(id):\(deliveries)", deliveryCount: deliveries)
                )
            }
            guard let priority = taken.first?.lease.priority else { break }
            // RETURNING yields rows in no particular order: restore FIFO.
            taken.sort { $0.id < $1.id }
            leases.append(contentsOf: taken.lazy.map(\.lease))
            band = priority
        }
        return (leases, nextDue.map { Duration(timeInterval: $0 - now) })
    }

    /// Extends the leases whose handle is current to `duration` from now.
    ///
    /// - Returns: the extended leases, unchanged (their handles stay current).
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a handle this queue did not make;
    ///   ``GridKernel/GridError/Code/unavailable``.
    public func extend(_ leases: [Lease], duration: Duration) async throws -> [Lease] {
        guard !leases.isEmpty else { return [] }
        let expiry = database.clock.now.timeIntervalSince1970 + Swift.max(duration, .zero).timeInterval
        let held = try await updateCurrent("extend", leases, status: 1, visibleAt: expiry)
        return leases.filter { held.contains($0.handle) }
    }

    /// Deletes the messages whose handle is current; stale handles are ignored.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a handle this queue did not make;
    ///   ``GridKernel/GridError/Code/unavailable``.
    public func acknowledge(_ leases: [Lease]) async throws {
        guard !leases.isEmpty else { return }
        let (ids, deliveries) = try Self.parseHandles(leases)
        try await database.execute(
            "acknowledge",
            """
            DELETE FROM \(unescaped: database.table("queue")) AS q USING unnest(\(ids)::int8[], \(deliveries)::int8[]) AS j(id, n)
            WHERE q.id = j.id AND q.delivery_count = j.n
            """)
    }

    /// Makes the messages whose handle is current visible again after `delay`, and notifies
    /// `<schema>_ready` (a waiting lease learns when they come due); stale handles are ignored.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a handle this queue did not make;
    ///   ``GridKernel/GridError/Code/unavailable``.
    public func release(_ leases: [Lease], delay: Duration) async throws {
        guard !leases.isEmpty else { return }
        let visibleAt = database.clock.now.timeIntervalSince1970 + Swift.max(delay, .zero).timeInterval
        _ = try await updateCurrent("release", leases, status: 2, visibleAt: visibleAt, notifying: true)
    }

    /// Counts messages per priority: `inFlight` are leased with a lease that has not expired; `waiting`
    /// are all others. Priorities without messages are absent.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func depth() async throws -> [Int: QueueDepth] {
        let now = database.clock.now.timeIntervalSince1970
        let rows = try await database.collect(
            "depth",
            """
            SELECT priority, count(*) FILTER (WHERE status = 1 AND visible_at > \(now)),
                   count(*) FILTER (WHERE NOT (status = 1 AND visible_at > \(now)))
            FROM \(unescaped: database.table("queue")) GROUP BY priority
            """
        ) { row in try row.decode((Int, Int, Int).self) }
        var depth: [Int: QueueDepth] = [:]
        for (priority, inFlight, waiting) in rows { depth[priority] = QueueDepth(waiting: waiting, inFlight: inFlight) }
        return depth
    }

    /// Sets the status (1 leased, 2 delayed) and the due time of the messages whose handle is current,
    /// in one statement, notifying `<schema>_ready` if asked and a message changed; returns their handles.
    private func updateCurrent(
        _ operation: String, _ leases: [Lease], status: Int, visibleAt: Double, notifying: Bool = false
    ) async throws -> Set<String> {
        let notify = notifying ? "pg_notify(\(PostgresStateStore.literal(readyChannel)), '') IS NULL" : "true"
        let (ids, deliveries) = try Self.parseHandles(leases)
        let rows = try await database.collect(
            operation,
            """
            UPDATE \(unescaped: database.table("queue")) AS q SET status = \(unescaped: String(status)), visible_at = \(visibleAt)
            FROM unnest(\(ids)::int8[], \(deliveries)::int8[]) AS j(id, n)
            WHERE q.id = j.id AND q.delivery_count = j.n
            RETURNING q.id, q.delivery_count, \(unescaped: notify)
            """
        ) { row in try row.decode((Int, Int, Bool).self) }
        return Set(rows.map { "\($0.0):\($0.1)" })
    }

    private static func parseHandles(_ leases: [Lease]) throws -> (ids: [Int], deliveries: [Int]) {
        var ids: [Int] = []
        var deliveries: [Int] = []
        ids.reserveCapacity(leases.count)
        deliveries.reserveCapacity(leases.count)
        for lease in leases {
            let parts = lease.handle.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let id = Int(parts[0]), let count = Int(parts[1]) else {
                throw GridError.invalidArgument(
                    "lease handle '\(lease.handle)' of task \(lease.id) was not made by the PostgreSQL queue; pass a lease that lease(max:duration:order:wait:) returned",
                    backend: PostgresDatabase.backendName)
            }
            ids.append(id)
            deliveries.append(count)
        }
        return (ids, deliveries)
    }
}
