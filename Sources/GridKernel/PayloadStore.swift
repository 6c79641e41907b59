/// One value to store.
public struct PayloadItem: Sendable, Hashable {
    /// The key, e.g. `<task_id>-input` (see ``PayloadKey``).
    public var key: String
    /// The bytes.
    public var value: [UInt8]

    /// Creates an item.
    public init(key: String, value: [UInt8]) {
        self.key = key
        self.value = value
    }
}

/// The data plane: task inputs and outputs as plain bytes under string keys.
///
/// Keys follow HTC-Grid's layout (`<task_id>-input`, `<task_id>-output`, `<session_id>-payload`) so
/// a grid in compatibility mode shares the data plane with HTC-Grid clients.
///
/// Implementing: batch forms are the requirements; single-key forms come from an extension. Run
/// ``PayloadConformance`` against the backend.
public protocol PayloadStore: Sendable {
    /// The largest value accepted, in bytes; `nil` when the backend sets no limit of its own.
    var maxPayloadBytes: Int? { get }

    /// Stores values, replacing existing ones.
    ///
    /// - Throws: ``GridError/Code/payloadTooLarge`` when a value exceeds ``maxPayloadBytes`` (nothing of
    ///   the batch is then stored); ``GridError/Code/unavailable``.
    func put(_ items: [PayloadItem]) async throws

    /// Reads values; keys that do not exist are absent from the result.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func get(_ keys: [String]) async throws -> [String: [UInt8]]

    /// Deletes values; keys that do not exist are ignored.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    func delete(_ keys: [String]) async throws
}

extension PayloadStore {
    /// Stores one value.
    ///
    /// - Throws: as ``put(_:)-(([PayloadItem]))``.
    public func put(_ key: String, _ value: [UInt8]) async throws {
        try await put([PayloadItem(key: key, value: value)])
    }

    /// Reads one value.
    ///
    /// - Throws: ``GridError/Code/notFound`` when the key does not exist; ``GridError/Code/unavailable``.
    public func get(_ key: String) async throws -> [UInt8] {
        guard let value = try await get([key])[key] else {
            throw GridError.notFound("no payload under key '\(key)'")
        }
        return value
    }

    /// Checks values against ``maxPayloadBytes``; backends call this before writing.
    ///
    /// - Throws: ``GridError/Code/payloadTooLarge`` naming the key, the size and the limit.
    public func checkSizes(_ items: [PayloadItem], backend: String, setting: String) throws {
        guard let limit = maxPayloadBytes else { return }
        for item in items where item.value.count > limit {
            throw GridError(
                .payloadTooLarge,
                "payload '\(item.key)' is \(ByteCount(item.value.count)); the limit is \(ByteCount(limit)) (\(setting))",
                backend: backend
            )
        }
    }
}

/// The data-plane keys, as HTC-Grid names them.
public enum PayloadKey {
    /// `<task_id>-input`: a task's input.
    public static func input(_ id: TaskID) -> String { "\(id.rawValue)-input" }
    /// `<task_id>-output`: a task's output in HTC-Grid's layout, where outside readers look for it (a
    /// ``SharedPayloadStore``), and the output of tasks finished before attempts were numbered.
    public static func output(_ id: TaskID) -> String { "\(id.rawValue)-output" }
    /// `<task_id>-output.<attempt>`: the output one attempt of a task wrote. A finish makes it current
    /// (the record names its attempt), so a stale attempt writing late never replaces what another
    /// attempt committed. Attempt 0 (a record from before attempts) gives ``output(_:)``.
    public static func output(_ id: TaskID, attempt: Int) -> String {
        attempt > 0 ? "\(id.rawValue)-output.\(attempt)" : output(id)
    }
    /// The key of a finished task's current output (``output(_:attempt:)`` of its attempt).
    public static func output(of record: TaskRecord) -> String { output(record.id, attempt: record.attempt) }
    /// `<session_id>-payload`: an HTC-Grid submission document.
    public static func sessionPayload(_ id: SessionID) -> String { "\(id.rawValue)-payload" }
}

/// A byte count printed for people (`12 MiB`, `512 B`).
public struct ByteCount: CustomStringConvertible, Sendable {
    /// The number of bytes.
    public var bytes: Int

    /// Wraps a byte count.
    public init(_ bytes: Int) { self.bytes = bytes }

    public var description: String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024, unit < units.count - 1, value.truncatingRemainder(dividingBy: 1024) == 0 || value >= 10 * 1024 {
            value /= 1024
            unit += 1
        }
        return value == value.rounded() ? "\(Int(value)) \(units[unit])" : String(format: "%.1f %@", value, units[unit])
    }
}
