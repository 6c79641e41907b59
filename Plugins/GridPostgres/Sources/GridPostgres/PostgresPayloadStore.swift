import GridKernel
import NIOCore
import PostgresNIO

/// The payload store in PostgreSQL: one `bytea` row per key in the `payload` table.
///
/// Good for small and medium payloads next to the queue and the state (a batch is one statement);
/// large payloads are better kept elsewhere (`--payload file:///dir` on one machine), since every
/// value passes through the database's WAL.
public struct PostgresPayloadStore: PayloadStore {
    /// The database holding the payloads.
    public let database: PostgresDatabase
    /// The largest value accepted, in bytes.
    public let maxPayloadBytes: Int?

    /// Creates a payload store on `database`.
    ///
    /// - Parameter maxPayloadBytes: the largest value accepted (64 MiB unless given; at most 1 GiB, PostgreSQL's limit).
    public init(database: PostgresDatabase, maxPayloadBytes: Int = 64 << 20) {
        self.database = database
        self.maxPayloadBytes = Swift.min(maxPayloadBytes, PostgresConfiguration.byteaLimit)
    }

    /// Stores values, replacing existing ones, with one `INSERT … ON CONFLICT DO UPDATE`. A key given
    /// twice keeps its last value.
    ///
    /// - Throws: ``GridKernel/GridError/Code/payloadTooLarge`` when a value exceeds ``maxPayloadBytes``
    ///   (nothing is stored); ``GridKernel/GridError/Code/unavailable``.
    public func put(_ items: [PayloadItem]) async throws {
        guard !items.isEmpty else { return }
        try checkSizes(items, backend: PostgresDatabase.backendName, setting: "max_payload_bytes in the postgres:// URL")
        // ON CONFLICT may touch a row once per statement: keep the last value of a repeated key.
        var last: [String: Int] = [:]
        for (position, item) in items.enumerated() { last[item.key] = position }
        let unique = items.indices.filter { last[items[$0].key] == $0 }.map { items[$0] }
        try await database.execute(
            "put",
            """
            INSERT INTO \(unescaped: database.table("payload")) (key, value)
            SELECT k, v FROM unnest(\(unique.map(\.key))::text[], \(unique.map { ByteBuffer(bytes: $0.value) })::bytea[]) AS j(k, v)
            ON CONFLICT (key) DO UPDATE SET value = excluded.value
            """)
    }

    /// Reads values; missing keys are absent from the result.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func get(_ keys: [String]) async throws -> [String: [UInt8]] {
        guard !keys.isEmpty else { return [:] }
        let rows = try await database.collect(
            "get", "SELECT key, value FROM \(unescaped: database.table("payload")) WHERE key = ANY(\(keys)::text[])"
        ) { row in
            let (key, value) = try row.decode((String, ByteBuffer).self)
            return (key, Array(value.readableBytesView))
        }
        return Dictionary(rows, uniquingKeysWith: { first, _ in first })
    }

    /// Deletes values; missing keys are ignored.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable``.
    public func delete(_ keys: [String]) async throws {
        guard !keys.isEmpty else { return }
        try await database.execute("delete", "DELETE FROM \(unescaped: database.table("payload")) WHERE key = ANY(\(keys)::text[])")
    }
}
