import Foundation
import Logging

/// Settings of a ``Reaper``.
public struct ReaperConfiguration: Sendable {
    /// How often to look for expired leases and dead letters. Default 5 s.
    public var interval: Duration
    /// How many expired tasks to handle per state-store call. Default 500.
    public var batchSize: Int
    /// The most tasks handled in one pass, so one pass never runs unbounded. Default 50,000.
    public var maxPerPass: Int
    /// How long a submission may go without progress before it counts as interrupted and is repaired.
    /// A live submitter records progress after every batch (``ClientConfiguration/submitBatchSize``), so
    /// this must be well above the time one batch takes. Default 2 minutes.
    public var submissionGrace: Duration

    /// Creates a configuration with the defaults.
    public init(interval: Duration = .seconds(5), batchSize: Int = 500, maxPerPass: Int = 50_000, submissionGrace: Duration = .seconds(120)) {
        self.interval = interval
        self.batchSize = batchSize
        self.maxPerPass = maxPerPass
        self.submissionGrace = submissionGrace
    }
}

/// What one pass of the reaper did.
public struct ReaperReport: Sendable, Hashable {
    /// Tasks whose lease expired and that went back to `pending`.
    public var requeued = 0
    /// Tasks whose lease expired once their retries were used up, now `failed`.
    public var failed = 0
    /// Tasks failed because the queue dead-lettered their message.
    public var deadLettered = 0
    /// Interrupted submissions repaired.
    public var submissionsRepaired = 0
    /// Tasks of interrupted submissions enqueued again (their input was in the payload store).
    public var resent = 0
    /// Tasks of interrupted submissions failed: never written, or pending with an input that travelled
    /// only in a message that may never have been sent.
    public var unsentFailed = 0

    /// Creates an empty report.
    public init() {}
}

/// Brings back tasks whose agent died: a `processing` task whose lease expired goes back to `pending`
/// with `retries + 1`, or to `failed` once its retries are used up. Its message was never acknowledged,
/// so the queue delivers it again once its own lease lapses; nothing is stranded. Tasks whose message
/// the queue dead-lettered are failed with the reason.
///
/// It also repairs interrupted submissions (a client, server or disk that failed half-way): a
/// submission without progress for ``ReaperConfiguration/submissionGrace`` is taken over, and of the
/// tasks its submitter had not recorded as sent, those without a record get a failed one, pending ones
/// whose input is in the payload store get a message again (a duplicate is harmless: claims are
/// conditional), and pending ones whose input travelled only in their message are failed with a message
/// saying to submit them again. Every reserved index thus ends in a terminal task, and every session
/// completes. See docs/architecture.md.
///
/// Every transition is conditional, so any number of reapers may run at once (each agent runs one).
public struct Reaper: Sendable {
    private let backends: GridBackends
    private let configuration: ReaperConfiguration
    private let clock: any GridClock
    private let logger: Logger
    private let counters = GridCounters()

    /// Creates a reaper.
    public init(
        backends: GridBackends,
        configuration: ReaperConfiguration = ReaperConfiguration(),
        clock: any GridClock = SystemClock(),
        logger: Logger = Logger(label: "htc.reaper")
    ) {
        self.backends = backends
        self.configuration = configuration
        self.clock = clock
        self.logger = logger
    }

    /// Runs passes every ``ReaperConfiguration/interval`` until cancelled; errors are logged and the next
    /// pass tries again.
    public func run() async {
        // Submissions are looked at a few times per grace period, not at every pass: a repair can wait
        // that long, and on DynamoDB each look is a query.
        let repairEvery = max(configuration.interval, configuration.submissionGrace / 4)
        var lastRepairLook: Date?
        while !Task.isCancelled {
            do {
                let now = clock.now
                let repairing = lastRepairLook.map { now.timeIntervalSince($0) >= repairEvery.timeInterval } ?? true
                if repairing { lastRepairLook = now }
                let report = try await runOnce(repairingSubmissions: repairing)
                if report != ReaperReport() {
                    logger.info(
                        "reaped tasks",
                        metadata: [
                            "requeued": "\(report.requeued)", "failed": "\(report.failed)", "deadLettered": "\(report.deadLettered)",
                            "submissionsRepaired": "\(report.submissionsRepaired)", "resent": "\(report.resent)", "unsentFailed": "\(report.unsentFailed)",
                        ]
                    )
                }
            } catch {
                logger.warning("reaper pass failed", metadata: ["error": "\(error)"])
            }
            guard (try? await clock.sleep(for: configuration.interval)) != nil else { return }
        }
    }

    /// Runs one pass.
    ///
    /// - Parameter repairingSubmissions: whether the pass also looks for stalled submissions;
    ///   ``run()`` does so every quarter of the grace period.
    /// - Throws: ``GridError/Code/unavailable`` when a backend cannot be reached.
    public func runOnce(repairingSubmissions: Bool = true) async throws -> ReaperReport {
        var report = ReaperReport()
        var handled = 0
        while handled < configuration.maxPerPass {
            let now = clock.now
            let expired = try await backends.state.expiredLeases(now: now, limit: configuration.batchSize)
            guard !expired.isEmpty else { break }
            let outcome = try await backends.state.expire(expired.map(\.id), now: now)
            for state in outcome.values {
                if state == .pending { report.requeued += 1 } else { report.failed += 1 }
            }
            handled += expired.count
            if expired.count < configuration.batchSize { break }
        }
        counters.expiredRequeued.increment(by: report.requeued)
        counters.retriesAfterExpiry.increment(by: report.requeued)
        counters.expiredFailed.increment(by: report.failed)
        if let queue = backends.queue as? any DeadLetteringTaskQueue {
            while report.deadLettered < configuration.maxPerPass {
                let letters = try await queue.drainDeadLetters(max: configuration.batchSize)
                guard !letters.isEmpty else { break }
                let failed = try await backends.state.forceFail(
                    letters.map { TaskFailure(id: $0.id, message: $0.reason, retryable: false) },
                    at: clock.now
                )
                report.deadLettered += failed.count
                if letters.count < configuration.batchSize { break }
            }
        }
        counters.deadLettered.increment(by: report.deadLettered)
        if repairingSubmissions { try await repairSubmissions(&report) }
        return report
    }

    /// Takes over and repairs the submissions that stalled for longer than the grace period.
    private func repairSubmissions(_ report: inout ReaperReport) async throws {
        let cutoff = clock.now.addingTimeInterval(-configuration.submissionGrace.timeInterval)
        let stalled = try await backends.state.stalledSubmissions(before: cutoff, limit: configuration.batchSize)
        for submission in stalled {
            guard let taken = submission.takenOverForRepair(at: clock.now),
                try await backends.state.updateSubmission(taken, expectedVersion: submission.version)
            else { continue }
            logger.warning(
                "repairing an interrupted submission",
                metadata: [
                    "session": "\(submission.session)", "key": "\(submission.key)", "sent": "\(submission.sent)",
                    "count": "\(submission.count)",
                ])
            try await repair(taken, &report)
            _ = try await backends.state.updateSubmission(taken.repaired(at: clock.now), expectedVersion: taken.version)
            report.submissionsRepaired += 1
            counters.submissionsRepaired.increment()
        }
    }

    /// Repairs the unsent part of a submission, 1,000 tasks at a time. Every step is idempotent, so a
    /// repair interrupted in turn is done again by the next reaper.
    private func repair(_ submission: SubmissionRecord, _ report: inout ReaperReport) async throws {
        let session: SessionRecord
        do {
            session = try await backends.state.session(submission.session)
        } catch let error as GridError where error.code == .notFound {
            return  // deleted meanwhile: nothing is left to repair
        }
        let cancelled = session.cancelled
        let unsent = (submission.first + submission.sent)..<submission.range.upperBound
        for start in stride(from: unsent.lowerBound, to: unsent.upperBound, by: 1_000) {
            let ids = (start..<min(start + 1_000, unsent.upperBound)).map { TaskID(session: submission.session, index: $0) }
            let now = clock.now
            let existing = try await backends.state.tasks(ids)
            let known = Set(existing.map(\.id))
            let missing = ids.filter { !known.contains($0) }
            if !missing.isEmpty {
                let options = session.options
                try await backends.state.createTasks(
                    missing.map { id in
                        TaskRecord(
                            id: id, state: cancelled ? .cancelled : .failed, maxRetries: options.maxRetries, priority: options.priority,
                            timeout: options.taskTimeout, submittedAt: submission.createdAt, completedAt: now,
                            lastError: cancelled ? nil : Self.neverWritten
                        )
                    })
                report.unsentFailed += missing.count
            }
            // A task claimed at least once had its message; only never-claimed pending tasks are in doubt.
            let doubtful = existing.filter { $0.state == .pending && $0.attempt == 0 }
            guard !doubtful.isEmpty else { continue }
            if cancelled {
                _ = try await backends.state.cancel(doubtful.map(\.id), at: now)
                continue
            }
            let stored = try await backends.payloads.get(doubtful.map { PayloadKey.input($0.id) })
            let resend = doubtful.filter { stored[PayloadKey.input($0.id)] != nil }
            let lost = doubtful.filter { stored[PayloadKey.input($0.id)] == nil }
            if !resend.isEmpty {
                try await backends.queue.enqueue(resend.map { QueuedTask(id: $0.id, priority: $0.priority, payload: nil) })
                report.resent += resend.count
            }
            if !lost.isEmpty {
                report.unsentFailed += try await backends.state.forceFail(
                    lost.map { TaskFailure(id: $0.id, message: Self.inputLost, retryable: false) }, at: now
                ).count
            }
        }
    }

    /// The error of a task an interrupted submission reserved but never wrote.
    public static let neverWritten =
        "the submission was interrupted before this task was written; submit it again (with a new idempotency key)"
    /// The error of a pending task of an interrupted submission whose input travelled only in a message that may never have been sent.
    public static let inputLost =
        "the submission was interrupted before this task's message was sent, and its input travelled only in that message; submit it again (with a new idempotency key)"
}
