import GridKernel

/// A ``PayloadStore`` on Redis: one string value per key, written and read with pipelined `SET`/`GET`
/// (one round trip per batch; single-key commands, so keys need not share a Cluster slot).
///
/// Keys are `prefix:payload:<key>`; with an empty `keyPrefix` they are the bare data-plane keys
/// (`<task_id>-input`, `<task_id>-output`, `<session_id>-payload`) that HTC-Grid clients read and
/// write, which is what the server's HTC-Grid compatibility mode needs. Values are plain bytes.
public struct RedisPayloadStore: PayloadStore {
    let client: RedisClient
    private let keyPrefix: String
    /// The largest value accepted (default 64 MiB, `?max_payload_bytes=`).
    public let maxPayloadBytes: Int?

    /// Creates a store; `keyPrefix` defaults to the client's prefix, `""` gives HTC-Grid's bare keys.
    public init(client: RedisClient, keyPrefix: String? = nil, maxPayloadBytes: Int? = nil) {
        self.client = client
        self.keyPrefix = keyPrefix ?? client.settings.prefix
        self.maxPayloadBytes = maxPayloadBytes ?? client.settings.maxPayloadBytes
    }

    /// Stores values; nothing is written if one is too large.
    ///
    /// - Throws: ``GridError/Code/payloadTooLarge``; ``GridError/Code/unavailable``.
    public func put(_ items: [PayloadItem]) async throws {
        guard !items.isEmpty else { return }
        try checkSizes(items, backend: "redis", setting: "max_payload_bytes in the redis:// URL")
        let replies = try await client.send(items.map { RedisCommand(bytes: [Array("SET".utf8), Array(key($0.key).utf8), $0.value]) }, idempotent: true)
        for reply in replies { _ = try reply.checked() }
    }

    /// Reads values; missing keys are absent.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func get(_ keys: [String]) async throws -> [String: [UInt8]] {
        guard !keys.isEmpty else { return [:] }
        let replies = try await client.send(keys.map { RedisCommand("GET", key($0)) }, idempotent: true)
        var values: [String: [UInt8]] = [:]
        for (name, reply) in zip(keys, replies) {
            if case .bytes(let value) = try reply.checked() { values[name] = value }
        }
        return values
    }

    /// Deletes values (`UNLINK`: freed in the background); missing keys are ignored.
    ///
    /// - Throws: ``GridError/Code/unavailable``.
    public func delete(_ keys: [String]) async throws {
        guard !keys.isEmpty else { return }
        for reply in try await client.send(keys.map { RedisCommand("UNLINK", key($0)) }, idempotent: true) { _ = try reply.checked() }
    }

    private func key(_ name: String) -> String { RedisKeys.payload(prefix: keyPrefix, name) }
}
