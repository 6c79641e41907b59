import Foundation

/// A payload store that programs outside the grid read and write directly, such as HTC-Grid's Python
/// connector, which reads `<task_id>-output` from the data plane itself.
///
/// Agents write every output of such a store to it under ``PayloadKey/output(_:)``, never only into
/// the task record, so the outside reader finds it. Conform a store (or a wrapper) to this protocol
/// only when outside readers rely on the data plane; it costs one payload write per output batch.
public protocol SharedPayloadStore: PayloadStore {}

/// HTC-Grid's data-plane encodings over any payload store: values are kept as the base64 text HTC-Grid's
/// Python connector and agent write and read, and the engine sees plain bytes.
///
/// | key | stored value | engine's bytes |
/// |---|---|---|
/// | `<task_id>-input` | `base64(json)` (the connector writes it) | the JSON, i.e. the Lambda event |
/// | `<task_id>-output` | `base64(text)` (the connector reads it) | the output |
/// | `<session_id>-payload` | `urlsafe_b64(json)` (the connector's submission) | the JSON |
/// | any other key | as it is | as it is |
///
/// This is the one place where HTC-Grid's encodings are applied: the server's compatibility routes, the
/// agents (whatever their handler) and ``GridClient`` all see decoded bytes. Chosen with
/// `?layout=htcgrid` on any payload URL (see docs/server.md). A stored value that is not valid base64
/// (written by a program that does not follow HTC-Grid's encoding) is handed over as it is.
public struct HTCGridPayloadStore: SharedPayloadStore {
    /// The store holding the encoded values.
    public let base: any PayloadStore

    /// Wraps a store.
    public init(_ base: any PayloadStore) { self.base = base }

    /// The base store's limit on the encoded value, as a limit on the plain bytes (base64 adds a third).
    public var maxPayloadBytes: Int? { base.maxPayloadBytes.map { $0 / 4 * 3 } }

    /// Stores values in HTC-Grid's encoding.
    ///
    /// - Throws: as the base store's `put`.
    public func put(_ items: [PayloadItem]) async throws {
        try checkSizes(items, backend: "htcgrid layout", setting: "the payload store's max_payload_bytes, less the base64 overhead")
        try await base.put(items.map { PayloadItem(key: $0.key, value: Self.encode($0.value, key: $0.key)) })
    }

    /// Reads and decodes values; missing keys are absent.
    ///
    /// - Throws: as the base store's `get`.
    public func get(_ keys: [String]) async throws -> [String: [UInt8]] {
        var values = try await base.get(keys)
        for (key, value) in values { values[key] = Self.decode(value, key: key) }
        return values
    }

    /// Deletes values.
    ///
    /// - Throws: as the base store's `delete`.
    public func delete(_ keys: [String]) async throws {
        try await base.delete(keys)
    }

    private enum Encoding { case standard, urlSafe, none }

    private static func encoding(of key: String) -> Encoding {
        if key.hasSuffix("-input") || key.hasSuffix("-output") { return .standard }
        if key.hasSuffix("-payload") { return .urlSafe }
        return .none
    }

    /// The stored form of `value` under `key`.
    public static func encode(_ value: [UInt8], key: String) -> [UInt8] {
        switch encoding(of: key) {
        case .none: return value
        case .standard: return Array(Data(value).base64EncodedString().utf8)
        case .urlSafe: return Base64URL.encode(value, padding: true)
        }
    }

    /// The plain bytes of a stored `value` under `key`; the value itself when it is not base64.
    public static func decode(_ value: [UInt8], key: String) -> [UInt8] {
        switch encoding(of: key) {
        case .none: return value
        case .standard: return Data(base64Encoded: Data(value)).map(Array.init) ?? value
        case .urlSafe: return Base64URL.decode(value) ?? value
        }
    }
}

/// URL-safe base64 (RFC 4648 §5), as Python's `base64.urlsafe_b64encode`.
public enum Base64URL {
    /// Encodes bytes, with `=` padding when `padding` is true (Python keeps it; JWTs drop it).
    public static func encode(_ bytes: [UInt8], padding: Bool) -> [UInt8] {
        var text = Array(Data(bytes).base64EncodedString().utf8)
        for index in text.indices {
            if text[index] == UInt8(ascii: "+") { text[index] = UInt8(ascii: "-") } else if text[index] == UInt8(ascii: "/") { text[index] = UInt8(ascii: "_") }
        }
        if !padding { while text.last == UInt8(ascii: "=") { text.removeLast() } }
        return text
    }

    /// Decodes URL-safe base64, with or without padding; `nil` when the text is not URL-safe base64.
    public static func decode(_ text: [UInt8]) -> [UInt8]? {
        var standard: [UInt8] = []
        standard.reserveCapacity(text.count + 3)
        for byte in text {
            switch byte {
            case UInt8(ascii: "-"): standard.append(UInt8(ascii: "+"))
            case UInt8(ascii: "_"): standard.append(UInt8(ascii: "/"))
            case UInt8(ascii: "+"), UInt8(ascii: "/"): return nil
            default: standard.append(byte)
            }
        }
        while standard.count % 4 != 0 { standard.append(UInt8(ascii: "=")) }
        return Data(base64Encoded: Data(standard)).map(Array.init)
    }

    /// Decodes URL-safe base64 text.
    public static func decode(_ text: String) -> [UInt8]? { decode(Array(text.utf8)) }
}
