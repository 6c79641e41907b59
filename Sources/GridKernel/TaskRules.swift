import Foundation

/// Identifies one claim call. A claim sent again with the same token after a lost reply (a dropped
/// connection, a retried DynamoDB write) wins the tasks the first one won, with the same attempts,
/// instead of finding them owned and losing them.
public struct ClaimToken: Hashable, Sendable, Codable, CustomStringConvertible {
    /// The token as text: 1 to 64 letters, digits, `-` or `.`.
    public let rawValue: String

    /// Wraps a token.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for an empty, long or oddly formed token.
    public init(_ rawValue: String) throws {
        guard (1...64).contains(rawValue.utf8.count),
            rawValue.utf8.allSatisfy({ $0.isASCIIAlphanumeric || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") })
        else {
            throw GridError.invalidArgument("claim token '\(rawValue)' must be 1 to 64 letters, digits, '-' or '.'")
        }
        self.rawValue = rawValue
    }

    private init(unchecked rawValue: String) { self.rawValue = rawValue }

    /// A new random token: 64 random bits in at most 13 base-36 digits, short enough to stay a small
    /// (inline, unallocated) string in every record that carries it.
    public static func random() -> ClaimToken {
        ClaimToken(unchecked: String(UInt64.random(in: 1...UInt64.max), radix: 36))
    }

    public var description: String { rawValue }

    public init(from decoder: any Decoder) throws {
        try self.init(decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

extension UInt8 {
    fileprivate var isASCIIAlphanumeric: Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(self) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(self)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(self)
    }
}

/// One run of one task: what heartbeats and releases name.
public struct TaskAttempt: Hashable, Sendable {
    /// The task.
    public var id: TaskID
    /// The run, as ``TaskRecord/attempt`` numbers it.
    public var attempt: Int

    /// Names a run.
    public init(id: TaskID, attempt: Int) {
        self.id = id
        self.attempt = attempt
    }
}

// MARK: - The rules

/// The grid's rules for task records, stated once.
///
/// Each function is one transition: it returns the record as it must be after the transition, or
/// `nil` when the transition does not apply (the task is not in the state it requires, or another
/// attempt holds it). ``InMemoryStateStore`` applies them as they are; every other backend translates
/// them into its own language (SQL, Lua, DynamoDB condition expressions), and
/// `StateConformance.Case.transitionsFollowTheKernelRules` drives random sequences of transitions
/// through the backend and through these functions and requires the same records, field by field.
///
/// - **Claim**: a `pending`, unowned task becomes `processing`, owned, with `attempt + 1`, the call's
///   token, `startedAt = now` and the lease expiry. A claim whose owner and token match the current
///   attempt of a `processing` task (the same call, sent again) returns it unchanged. Every transition
///   out of `processing` clears owner, lease and token (a token matters only while its attempt runs).
/// - **Fencing**: heartbeat, finish, fail and release apply only to a `processing` task whose owner
///   *and* attempt match; a stale run (an older attempt, even of the same agent) changes nothing.
/// - **Finish**: `finished`, owner and lease cleared, `completedAt`, the inline output, and no
///   `lastError` (an earlier attempt's error does not stick to a finished task).
/// - **Retry** (a failure or an expired lease): back to `pending` with `retries + 1` while the failure
///   is retryable and `retries < maxRetries`, else `failed` with `completedAt`; the error is kept.
/// - **Release**: back to `pending`, owner and lease cleared, retries unchanged: the agent gave the
///   task back before running it (its input could not be read, it is shutting down).
/// - **Expiry**: a `processing` task whose lease expiry is before `now` is retried with the error
///   "lease expired".
/// - **Force-fail** (a dead-lettered message) and **cancel** apply to any task that is not terminal.
/// - **Completion order**: every transition into a terminal state (finish, a failure or expiry with no
///   retry left, force-fail, cancel) gives the task the next number of its session's completion
///   sequence (``TaskRecord/completionSequence``: 1, 2, 3, … with no gap), in the same atomic step as the
///   transition, so that a reader following the sequence never misses nor repeats a task. The functions
///   below leave the number alone; the store assigns it (``enteredTerminalState(from:)``).
/// - **Counts**: a store keeps each session's number of tasks per state with the transitions, so that
///   ``StateStore/counts(_:)`` costs the same for ten tasks and ten million; the last completion
///   number of a session is its count of terminal tasks.
extension TaskRecord {
    /// Whether this record, the result of a transition from `old`, entered a terminal state: the store
    /// gives it the next completion number of its session.
    public func enteredTerminalState(from old: TaskRecord?) -> Bool {
        state.isTerminal && !(old?.state.isTerminal ?? false)
    }

    /// The error text of a task whose lease expired.
    public static let leaseExpiredMessage = "lease expired"

    /// The record after a claim by `owner` with `token`, or `nil` when the claim loses.
    public func claimed(by owner: AgentID, token: ClaimToken, leaseExpiry: Date, now: Date) -> TaskRecord? {
        if state == .processing && self.owner == owner && claimToken == token { return self }
        guard state == .pending && self.owner == nil else { return nil }
        var next = self
        next.state = .processing
        next.owner = owner
        next.attempt = attempt + 1
        next.claimToken = token
        next.startedAt = now
        next.leaseExpiry = leaseExpiry
        return next
    }

    /// Whether `attempt` of `owner` is the task's current run.
    public func isHeld(by owner: AgentID, attempt: Int) -> Bool {
        state == .processing && self.owner == owner && self.attempt == attempt
    }

    /// The record after a heartbeat of the current attempt, or `nil` for a stale one.
    public func heartbeated(by owner: AgentID, attempt: Int, leaseExpiry: Date) -> TaskRecord? {
        guard isHeld(by: owner, attempt: attempt) else { return nil }
        var next = self
        next.leaseExpiry = leaseExpiry
        return next
    }

    /// The record after the current attempt finished, or `nil` for a stale one.
    public func finished(by owner: AgentID, attempt: Int, output: [UInt8]?, at date: Date) -> TaskRecord? {
        guard isHeld(by: owner, attempt: attempt) else { return nil }
        var next = leavingProcessing(for: .finished)
        next.completedAt = date
        next.lastError = nil
        next.output = output
        return next
    }

    /// The record after the current attempt failed (the retry rule), or `nil` for a stale one.
    public func failed(by owner: AgentID, attempt: Int, message: String, retryable: Bool, at date: Date) -> TaskRecord? {
        guard isHeld(by: owner, attempt: attempt) else { return nil }
        return afterFailure(message: message, retryable: retryable, at: date)
    }

    /// The record after the current attempt was given back unrun, or `nil` for a stale one.
    public func released(by owner: AgentID, attempt: Int) -> TaskRecord? {
        guard isHeld(by: owner, attempt: attempt) else { return nil }
        return leavingProcessing(for: .pending)
    }

    /// The record after the reaper found its lease expired before `now` (the retry rule), or `nil`
    /// when the task is not processing or its lease runs until `now` or later.
    public func expired(now: Date) -> TaskRecord? {
        guard state == .processing, let leaseExpiry, leaseExpiry < now else { return nil }
        return afterFailure(message: Self.leaseExpiredMessage, retryable: true, at: now)
    }

    /// The record after it was failed whatever its owner (a dead-lettered message), or `nil` when it is
    /// terminal.
    public func forceFailed(message: String, at date: Date) -> TaskRecord? {
        guard !state.isTerminal else { return nil }
        var next = leavingProcessing(for: .failed)
        next.lastError = message
        next.completedAt = date
        return next
    }

    /// The record after a cancel, or `nil` when it is terminal.
    public func cancelled(at date: Date) -> TaskRecord? {
        guard !state.isTerminal else { return nil }
        var next = leavingProcessing(for: .cancelled)
        next.completedAt = date
        return next
    }

    /// The record after a failed run or an expired lease, by the grid's one retry rule: back to
    /// `pending` with `retries + 1` while `retries < maxRetries` and the failure is retryable,
    /// otherwise `failed`. Owner, lease and claim token are cleared; the error is kept.
    public func afterFailure(message: String, retryable: Bool, at date: Date) -> TaskRecord {
        let retried = retryable && retries < maxRetries
        var next = leavingProcessing(for: retried ? .pending : .failed)
        next.lastError = message
        if retried { next.retries += 1 } else { next.completedAt = date }
        return next
    }

    /// The record in `state`, with what only a running attempt has — owner, lease, claim token —
    /// cleared: every transition out of `processing` (and a cancel or force-fail of a pending task)
    /// starts here.
    private func leavingProcessing(for state: TaskState) -> TaskRecord {
        var next = self
        next.state = state
        next.owner = nil
        next.leaseExpiry = nil
        next.claimToken = nil
        return next
    }
}
