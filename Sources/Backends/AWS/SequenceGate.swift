import GridKernel
import Synchronization

/// Sends this process' transactions that number tasks of one session together, one transaction at a
/// time per session (group commit).
///
/// Such a transaction is conditional on the session's sequence item `n`, so two in flight for one
/// session cancel one another and the numbering of a session is serial: its throughput is one
/// transaction per round trip. Here calls of one process (concurrent finishes of several agents'
/// worth of tasks) queue per session; whoever sends gathers the queued changes into its transaction (up
/// to 99 tasks), starting from the `n` the previous transaction of this process wrote, and hands each
/// caller its part of the outcome. It also remembers the last `n` per session, so that a caller whose
/// read is older than this process' last transaction does not lose a race against it. Only
/// transactions of other processes still race; a lost race costs one more request, since the
/// cancellation returns the current `n`.
final class SequenceGate: Sendable {
    /// One caller's changes of one session.
    struct Job: Sendable {
        var changes: [DynamoDBStateStore.Transition]
        /// The task items the changes were computed from (`nil`: absent).
        var items: [TaskID: DynamoDBItem.Item?]
        /// The session's `n` as the caller read it.
        var sequence: Int
        /// About the bytes of its items.
        var bytes: Int
    }

    /// What a queued caller is told: its outcome, or that it now sends for the queue.
    private enum Turn: Sendable {
        case done(Result<DynamoDBStateStore.Outcome, any Error>)
        case lead
    }

    private struct Waiting {
        var job: Job
        var continuation: CheckedContinuation<Turn, Never>
    }

    private struct Line {
        var queue: [Waiting] = []
    }

    private struct State {
        /// The sessions with a transaction in flight.
        var lines: [SessionID: Line] = [:]
        /// The last `n` a transaction of this process wrote or saw, per session (forgotten all at
        /// once past ``rememberedSessions``): a caller that read an older one starts from this.
        var last: [SessionID: Int] = [:]
    }

    private static let rememberedSessions = 10_000

    private let lines = Mutex(State())

    init() {}

    /// Sends `job` (in a transaction of its own or with others queued for the same session) through
    /// `send`, which writes changes from a given `n`.
    func submit(
        _ session: SessionID, _ job: Job, send: @Sendable ([DynamoDBStateStore.Transition], [TaskID: DynamoDBItem.Item?], Int) async throws -> DynamoDBStateStore.Outcome
    ) async throws -> DynamoDBStateStore.Outcome {
        let turn = await withCheckedContinuation { (continuation: CheckedContinuation<Turn, Never>) in
            let leading = lines.withLock { state -> Bool in
                guard state.lines[session] != nil else {
                    state.lines[session] = Line()
                    return true
                }
                state.lines[session]?.queue.append(Waiting(job: job, continuation: continuation))
                return false
            }
            if leading { continuation.resume(returning: .lead) }
        }
        if case .done(let result) = turn { return try result.get() }
        return try await lead(session, own: job, send: send)
    }

    /// Sends the caller's job with as many queued ones as fit, gives the others their outcomes, and
    /// passes the line to the next in the queue (or frees it).
    private func lead(
        _ session: SessionID, own: Job, send: @Sendable ([DynamoDBStateStore.Transition], [TaskID: DynamoDBItem.Item?], Int) async throws -> DynamoDBStateStore.Outcome
    ) async throws -> DynamoDBStateStore.Outcome {
        let (others, last) = lines.withLock { state -> ([Waiting], Int?) in
            var line = state.lines[session] ?? Line()
            var tasks = own.changes.count
            var bytes = own.bytes
            var taken: [Waiting] = []
            while let next = line.queue.first, tasks + next.job.changes.count <= 99, bytes + next.job.bytes <= 3 << 20 {
                taken.append(line.queue.removeFirst())
                tasks += next.job.changes.count
                bytes += next.job.bytes
            }
            state.lines[session] = line
            return (taken, state.last[session])
        }
        let jobs = [own] + others.map(\.job)
        let start = ([last].compactMap { $0 } + jobs.map(\.sequence)).max() ?? own.sequence
        let result: Result<DynamoDBStateStore.Outcome, any Error>
        do {
            let items = jobs.reduce(into: [TaskID: DynamoDBItem.Item?]()) { items, job in items.merge(job.items) { $1 } }
            result = .success(try await send(jobs.flatMap(\.changes), items, start))
        } catch {
            result = .failure(error)
        }
        let next = lines.withLock { state -> Waiting? in
            if case .success(let outcome) = result, let number = outcome.sequences[session] ?? nil {
                if state.last.count >= Self.rememberedSessions && state.last[session] == nil { state.last = [:] }
                state.last[session] = Swift.max(number, state.last[session] ?? number)
            }
            guard var line = state.lines[session] else { return nil }
            guard !line.queue.isEmpty else {
                state.lines[session] = nil
                return nil
            }
            let first = line.queue.removeFirst()
            state.lines[session] = line
            return first
        }
        for waiting in others {
            let ids = Set(waiting.job.changes.map(\.new.id))
            waiting.continuation.resume(returning: .done(result.map { $0.part(for: ids) }))
        }
        next?.continuation.resume(returning: .lead)
        return try result.map { $0.part(for: Set(own.changes.map(\.new.id))) }.get()
    }
}
