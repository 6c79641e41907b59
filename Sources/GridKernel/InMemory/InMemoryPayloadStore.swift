import Foundation

/// The reference ``PayloadStore``: values kept in a dictionary in memory.
///
/// The clock is accepted so that all in-memory backends are built alike; payloads do not expire.
public actor InMemoryPayloadStore: PayloadStore {
    /// The largest value accepted, in bytes; `nil` for no limit.
    public nonisolated let maxPayloadBytes: Int?

    private let clock: any GridClock
    private var values: [String: [UInt8]] = [:]

    /// Creates an empty store.
    ///
    /// - Parameters:
    ///   - clock: unused today; taken for symmetry with the other in-memory backends.
    ///   - maxPayloadBytes: the largest value ``put(_:)`` accepts, or `nil` for no limit.
    public init(clock: any GridClock = SystemClock(), maxPayloadBytes: Int? = nil) {
        precondition(maxPayloadBytes.map { $0 >= 0 } ?? true, "maxPayloadBytes must not be negative")
        self.clock = clock
        self.maxPayloadBytes = maxPayloadBytes
    }

    /// Stores the values, replacing existing ones; checks every size before writing any.
    ///
    /// - Throws: ``GridError/Code/payloadTooLarge`` when a value exceeds ``maxPayloadBytes``; nothing of
    ///   the batch is then stored.
    public func put(_ items: [PayloadItem]) async throws {
        try checkSizes(items, backend: "memory", setting: "maxPayloadBytes")
        for item in items { values[item.key] = item.value }
    }

    /// Reads the values of the keys that exist. Never throws.
    public func get(_ keys: [String]) async throws -> [String: [UInt8]] {
        var found: [String: [UInt8]] = [:]
        for key in keys {
            if let value = values[key] { found[key] = value }
        }
        return found
    }

    /// Deletes the keys that exist. Never throws.
    public func delete(_ keys: [String]) async throws {
        for key in keys { values[key] = nil }
    }
}
