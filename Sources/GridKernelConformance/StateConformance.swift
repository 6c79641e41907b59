import GridKernel

/// The behaviour every ``GridKernel/StateStore`` must show.
///
/// Wire it into a backend's tests with one line per case, e.g. with Swift Testing:
///
/// ```swift
/// @Test(arguments: StateConformance.Case.allCases)
/// func state(_ c: StateConformance.Case) async throws {
///     try await StateConformance { ctx in InMemoryStateStore(clock: ctx.clock) }.run(c)
/// }
/// ```
///
/// Each run creates a fresh store through `make`, with a fresh namespace. The cases pass every time
/// explicitly (`now`, `at`, lease expiries), as whole seconds from the context clock's current time.
/// A failed expectation is thrown as a ``ConformanceFailure``.
public struct StateConformance: Sendable {
    /// The cases; each is one behaviour of the protocol.
    public enum Case: String, CaseIterable, Sendable {
        /// Sessions are created, read back field by field and listed in id order across pages; a
        /// duplicate is a conflict, an unknown session not found.
        case sessionRoundTrip
        /// Concurrent submissions get consecutive, disjoint ranges of indices; the same key begun
        /// eight times at once reserves once and returns the same record; a cancelled session refuses
        /// new submissions (conflict) but returns an existing one, an unknown one is not found.
        case beginSubmissionReservesAtomically
        /// Submission updates apply only on the stored version; `stalledSubmissions` lists the open and
        /// repairing ones not updated since a date, oldest first, and none of a deleted session.
        case submissionUpdatesAreConditional
        /// Creating tasks again leaves existing records as they are and adds the missing ones.
        case createTasksIsIdempotent
        /// Only pending, unowned tasks are claimed; unknown tasks are ignored.
        case claimWinsOnlyForPendingUnowned
        /// Sixteen concurrent claimers of one task: exactly one wins, for 50 tasks one by one and for
        /// 50 tasks claimed in batches.
        case exactlyOneWinnerAmongSixteenClaimers
        /// Only the owner of a processing task moves its lease expiry.
        case heartbeatRequiresOwner
        /// A claim starts a numbered attempt; heartbeat, finish, fail and release of an older attempt —
        /// even of the same agent — or of another agent change nothing.
        case attemptFencing
        /// The same claim call sent again (same owner and token) wins the same attempts, unchanged;
        /// another call or another owner wins nothing.
        case repeatedClaimWinsTheSameAttempt
        /// `release` puts the current attempt back to pending without a retry; stale releases do nothing.
        case releaseGivesTasksBackUncharged
        /// A task whose later attempt finished has no `lastError` from the earlier one.
        case finishClearsLastError
        /// `tasks(_:)` reads the existing tasks among many ids in one call.
        case tasksReadInABatch
        /// 300 random transitions (claims with repeated tokens, heartbeats, finishes, failures and
        /// releases of current and stale attempts, expiries, force-fails, cancels): every answer and
        /// every record, field by field, is what the kernel's rules in TaskRules.swift give; after
        /// every step the counts are exact and the terminal tasks are numbered 1…n.
        case transitionsFollowTheKernelRules
        /// Only the owner finishes a task; the inline output is kept (empty and `nil` apart) only when
        /// the finish succeeds; `completedAt` is set and the owner cleared.
        case finishRequiresOwner
        /// Failures retry while retries are below the maximum, then fail for good; the last error is kept.
        case failRetriesThenFails
        /// `expiredLeases` finds only expired processing tasks; `expire` reaps them by the retry rule
        /// and leaves a task heartbeated meanwhile alone.
        case expiredLeasesFoundAndReaped
        /// `cancel` counts pending and processing tasks, leaves terminal ones alone, and the former
        /// owner can no longer heartbeat, finish or fail.
        case cancelPendingAndProcessing
        /// `cancelSession` marks the session and cancels its live tasks, not another session's.
        case cancelSessionCancelsAll
        /// `deleteSession` removes the session and its 12,000 task records in every state; its former
        /// owners can no longer heartbeat, finish or fail; another session is untouched; deleting again
        /// throws ``GridKernel/GridError/Code/notFound``.
        case deleteSessionRemovesEverything
        /// `forceFail` fails every non-terminal task whatever its owner and leaves terminal ones alone.
        case forceFailSkipsTerminal
        /// Unknown tasks and sessions throw ``GridKernel/GridError/Code/notFound``.
        case notFoundErrors
        /// `counts` reports a session's tasks per state.
        case countsByState
        /// 100,000 tasks in five states, paged 1,000 at a time per state: each task seen exactly once,
        /// in index order, and the counts match.
        case pagingHundredThousandTasksByState
        /// A malformed cursor throws ``GridKernel/GridError/Code/invalidArgument``; a returned one works.
        case malformedCursorRejected
        /// Tasks that become terminal out of index order, by finish, failure, expiry, force-fail and
        /// cancel, are read back in the order of the transitions, numbered 1, 2, 3, … once each, page by
        /// page; retries and stale or repeated finishes add nothing; each session numbers from 1; a
        /// deleted session has none.
        case completionOrderFollowsTheTransitions
        /// Eight writers finish and fail 480 tasks while a reader follows the completion order (waiting
        /// with ``GridKernel/StateStore/waitForCompletions(_:after:timeout:)`` when it is ahead): every
        /// task is read once, numbered without a gap, and the counts agree.
        case completionOrderUnderConcurrentWriters
        /// ``GridKernel/StateStore/waitForCompletions(_:after:timeout:)`` returns `true` when another
        /// call finishes or cancels a task, at once when the session is past the number, and `false`
        /// at its timeout.
        case waitForCompletionsWakesAWaiter
    }

    private let time: ConformanceTime
    private let make: @Sendable (ConformanceContext) async throws -> any StateStore

    /// Creates the suite.
    ///
    /// - Parameters:
    ///   - time: how the backend measures time; see ``ConformanceTime``. The cases only read the
    ///     clock's current time.
    ///   - make: creates a fresh, empty store for the context's namespace, using the context's clock.
    public init(
        time: ConformanceTime = .manual, make: @escaping @Sendable (ConformanceContext) async throws -> any StateStore
    ) {
        self.time = time
        self.make = make
    }

    /// Runs one case against a fresh store.
    ///
    /// - Throws: ``ConformanceFailure`` when the store does not behave as the case expects, or throws.
    public func run(_ c: Case) async throws {
        try await Harness.withRetries(time) { time in
            let harness = Harness(suite: "StateConformance", caseName: c.rawValue, time: time)
            try await harness.run {
                let cases = Cases(store: try await make(harness.context), base: harness.timeline.wholeSecondNow)
                switch c {
                case .sessionRoundTrip: try await cases.sessionRoundTrip()
                case .beginSubmissionReservesAtomically: try await cases.beginSubmissionReservesAtomically()
                case .submissionUpdatesAreConditional: try await cases.submissionUpdatesAreConditional()
                case .createTasksIsIdempotent: try await cases.createTasksIsIdempotent()
                case .claimWinsOnlyForPendingUnowned: try await cases.claimWinsOnlyForPendingUnowned()
                case .exactlyOneWinnerAmongSixteenClaimers: try await cases.exactlyOneWinnerAmongSixteenClaimers()
                case .heartbeatRequiresOwner: try await cases.heartbeatRequiresOwner()
                case .attemptFencing: try await cases.attemptFencing()
                case .repeatedClaimWinsTheSameAttempt: try await cases.repeatedClaimWinsTheSameAttempt()
                case .releaseGivesTasksBackUncharged: try await cases.releaseGivesTasksBackUncharged()
                case .finishClearsLastError: try await cases.finishClearsLastError()
                case .tasksReadInABatch: try await cases.tasksReadInABatch()
                case .transitionsFollowTheKernelRules: try await cases.transitionsFollowTheKernelRules()
                case .finishRequiresOwner: try await cases.finishRequiresOwner()
                case .failRetriesThenFails: try await cases.failRetriesThenFails()
                case .expiredLeasesFoundAndReaped: try await cases.expiredLeasesFoundAndReaped()
                case .cancelPendingAndProcessing: try await cases.cancelPendingAndProcessing()
                case .cancelSessionCancelsAll: try await cases.cancelSessionCancelsAll()
                case .deleteSessionRemovesEverything: try await cases.deleteSessionRemovesEverything()
                case .forceFailSkipsTerminal: try await cases.forceFailSkipsTerminal()
                case .notFoundErrors: try await cases.notFoundErrors()
                case .countsByState: try await cases.countsByState()
                case .pagingHundredThousandTasksByState: try await cases.pagingHundredThousandTasksByState()
                case .malformedCursorRejected: try await cases.malformedCursorRejected()
                case .completionOrderFollowsTheTransitions: try await cases.completionOrderFollowsTheTransitions()
                case .completionOrderUnderConcurrentWriters: try await cases.completionOrderUnderConcurrentWriters()
                case .waitForCompletionsWakesAWaiter: try await cases.waitForCompletionsWakesAWaiter()
                }
            }
        }
    }
}
