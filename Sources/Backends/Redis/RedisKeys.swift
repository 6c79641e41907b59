import Foundation

/// The key layout (documented in docs/backends.md) and the encodings of values in arguments.
enum RedisKeys {
    /// `{prefix:queue}`: the base of every queue key; one hash tag, one Cluster slot.
    static func queue(prefix: String) -> String { "{\(prefix):queue}" }

    /// `prefix:{session}`: the base of a session's keys; the session id is the hash tag.
    static func session(prefix: String, _ session: String) -> String { "\(prefix):{\(session)}" }

    /// `prefix:sessions`: every session id, for listing in id order.
    static func sessions(prefix: String) -> String { "\(prefix):sessions" }

    /// `prefix:payload:key`, or the bare key when the prefix is empty (HTC-Grid's data-plane layout).
    static func payload(prefix: String, _ key: String) -> String { prefix.isEmpty ? key : "\(prefix):payload:\(key)" }

    /// An integer as decimal text.
    static func bytes(_ value: Int) -> [UInt8] { Array(String(value).utf8) }

    /// A date as seconds since 1970, printed so that it reads back to the same `Double`.
    static func bytes(_ date: Date) -> [UInt8] { Array(text(date).utf8) }

    /// A date as seconds since 1970, printed so that it reads back to the same `Double`.
    static func text(_ date: Date) -> String { String(date.timeIntervalSince1970) }

    /// A date from its text.
    static func date(_ text: String?) -> Date? { text.flatMap(Double.init).map { Date(timeIntervalSince1970: $0) } }
}
