import Foundation

/// The idempotency key of a submission: a submission sent again with the same key (after a dropped
/// connection, a crashed client, a restarted server) reuses the indices of the first one and creates
/// no task twice.
public struct SubmissionKey: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    /// The key as text.
    public let rawValue: String

    /// Validates and wraps a key.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` if the key is empty, longer than 128 characters or
    ///   contains anything but letters, digits, `-`, `_`, `.` and `:`.
    public init(_ rawValue: String) throws {
        guard (1...128).contains(rawValue.utf8.count) else {
            throw GridError.invalidArgument("idempotency key must be 1 to 128 characters, got \(rawValue.utf8.count)")
        }
        guard rawValue.utf8.allSatisfy(Self.isAllowed) else {
            throw GridError.invalidArgument("idempotency key '\(rawValue)' may contain only letters, digits, '-', '_', '.' and ':'")
        }
        self.rawValue = rawValue
    }

    private init(unchecked rawValue: String) { self.rawValue = rawValue }

    /// A new random key (a lower-case UUID), for submissions whose caller brought none.
    public static func random() -> SubmissionKey {
        SubmissionKey(unchecked: UUID().uuidString.lowercased())
    }

    private static func isAllowed(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: ":"):
            return true
        default:
            return false
        }
    }

    public var description: String { rawValue }
    public static func < (lhs: SubmissionKey, rhs: SubmissionKey) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws {
        try self.init(decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// Where a submission stands.
public enum SubmissionState: String, Sendable, Hashable, CaseIterable, Codable {
    /// Its submitter is writing records and messages.
    case open
    /// Its submitter went silent; a reaper is repairing what it left.
    case repairing
    /// Every task of its range has its record and its message.
    case complete
    /// It was interrupted and repaired: its remaining tasks were enqueued again or failed.
    case repaired

    /// Whether the submission is still being written (by its submitter or a repairer).
    public var isActive: Bool { self == .open || self == .repairing }
}

/// A submission as the state store keeps it: the indices it reserved and how far its submitter got.
///
/// The submitter writes its tasks batch by batch (inputs, records, messages) and records its progress
/// after each batch; a submission that stays ``SubmissionState/open`` without progress for a grace
/// period was interrupted, and the reaper repairs it (``Reaper``): tasks whose message may never
/// have been sent are enqueued again or failed, and indices that never got a record get a failed one,
/// so every reserved index ends in a terminal task and every session completes.
public struct SubmissionRecord: Sendable, Hashable, Codable {
    /// The session.
    public var session: SessionID
    /// The idempotency key.
    public var key: SubmissionKey
    /// The first reserved task index.
    public var first: Int
    /// How many task indices were reserved.
    public var count: Int
    /// How many tasks, from the first, have their records and their messages written.
    public var sent: Int
    /// Where it stands.
    public var state: SubmissionState
    /// Bumped by every update; updates are conditional on it (``StateStore/updateSubmission(_:expectedVersion:)``).
    public var version: Int
    /// When it was begun.
    public var createdAt: Date
    /// When it last made progress (or its repair began).
    public var updatedAt: Date

    /// Creates a record.
    public init(
        session: SessionID, key: SubmissionKey, first: Int = 0, count: Int, sent: Int = 0, state: SubmissionState = .open,
        version: Int = 1, createdAt: Date, updatedAt: Date? = nil
    ) {
        self.session = session
        self.key = key
        self.first = first
        self.count = count
        self.sent = sent
        self.state = state
        self.version = version
        self.createdAt = createdAt
        self.updatedAt = updatedAt ?? createdAt
    }

    /// The reserved indices.
    public var range: Range<Int> { first..<(first + count) }

    /// The task ids of the reserved indices.
    public var taskIDs: [TaskID] { range.map { TaskID(session: session, index: $0) } }
}

// MARK: - The rules

/// The rules of submissions, stated once (as ``TaskRecord``'s transitions are): the state store keeps
/// the records and applies updates conditionally on ``SubmissionRecord/version``; what an update
/// writes comes from these functions.
extension SubmissionRecord {
    /// A new submission of `count` tasks, as ``StateStore/beginSubmission(_:)`` receives it (the store
    /// sets ``first``): open, nothing sent, or complete at once when it has no task.
    public static func begin(session: SessionID, key: SubmissionKey, count: Int, at date: Date) -> SubmissionRecord {
        SubmissionRecord(session: session, key: key, count: count, state: count == 0 ? .complete : .open, createdAt: date)
    }

    /// The record after its submitter wrote the first `sent` tasks, or `nil` when it is no longer open
    /// (a repairer took it over: the submitter must stop). Progress never goes back.
    public func progressed(to sent: Int, at date: Date) -> SubmissionRecord? {
        guard state == .open else { return nil }
        var next = self
        next.sent = Swift.min(count, Swift.max(self.sent, sent))
        next.state = next.sent == count ? .complete : .open
        next.version += 1
        next.updatedAt = date
        return next
    }

    /// Whether its writer (submitter or repairer) has been silent since before `date`.
    public func isStalled(before date: Date) -> Bool {
        state.isActive && updatedAt < date
    }

    /// The record once a repairer took it over, or `nil` when it is not active.
    public func takenOverForRepair(at date: Date) -> SubmissionRecord? {
        guard state.isActive else { return nil }
        var next = self
        next.state = .repairing
        next.version += 1
        next.updatedAt = date
        return next
    }

    /// The record once its repair is done.
    public func repaired(at date: Date) -> SubmissionRecord {
        var next = self
        next.state = .repaired
        next.version += 1
        next.updatedAt = date
        return next
    }
}
