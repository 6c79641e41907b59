import Foundation
import GRDB
import GridKernel

/// The payload store in an SQLite file: one row per key in the `payload` table.
///
/// Good for small and medium payloads next to the queue and the state; large payloads are better
/// kept on disk with ``LocalDiskPayloadStore``, which does not grow the database file or its WAL.
public struct SQLitePayloadStore: PayloadStore {
    /// The database holding the payloads.
    public let database: SQLiteDatabase
    /// The largest value accepted, in bytes; `nil` for SQLite's own limit (1 GB).
    public let maxPayloadBytes: Int?

    /// Creates a payload store on `database`.
    ///
    /// - Parameter maxPayloadBytes: the largest value accepted (64 MiB unless given).
    public init(database: SQLiteDatabase, maxPayloadBytes: Int? = 64 << 20) {
        self.database = database
        self.maxPayloadBytes = maxPayloadBytes
    }

    /// Stores values, replacing existing ones, in one transaction.
    ///
    /// - Throws: ``GridError/Code/payloadTooLarge`` when a value exceeds ``maxPayloadBytes`` (nothing
    ///   is stored); ``GridError/Code/unavailable``.
    public func put(_ items: [PayloadItem]) async throws {
        guard !items.isEmpty else { return }
        try checkSizes(items, backend: SQLiteDatabase.backendName, setting: "SQLitePayloadStore maxPayloadBytes")
        try await database.write("put") { db in
            let upsert = try db.cachedStatement(
                sql: "INSERT INTO payload (key, value) VALUES (?, CAST(? AS BLOB)) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            for item in items {
                try item.value.withUnsafeBytes { bytes in
                    // Bind the array's storage without copying it into a Data first.
                    guard let base = bytes.baseAddress, bytes.count > 0 else {
                        return try upsert.execute(arguments: [item.key, DatabaseValue.blob([])])
                    }
                    let data = Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: base), count: bytes.count, deallocator: .none)
                    try upsert.execute(arguments: [item.key, data])
                }
            }
        }
    }

    /// Reads values; missing keys are absent from the result.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func get(_ keys: [String]) async throws -> [String: [UInt8]] {
        guard !keys.isEmpty else { return [:] }
        return try await database.read("get") { db in
            let select = try db.cachedStatement(sql: "SELECT value FROM payload WHERE key = ?")
            var values: [String: [UInt8]] = [:]
            for key in keys {
                let rows = try Row.fetchCursor(select, arguments: [key])
                if let row = try rows.next() {
                    values[key] = try row.bytes(atIndex: 0) ?? []
                }
            }
            return values
        }
    }

    /// Deletes values, in one transaction; missing keys are ignored.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func delete(_ keys: [String]) async throws {
        guard !keys.isEmpty else { return }
        try await database.write("delete") { db in
            let delete = try db.cachedStatement(sql: "DELETE FROM payload WHERE key = ?")
            for key in keys { try delete.execute(arguments: [key]) }
        }
    }
}
