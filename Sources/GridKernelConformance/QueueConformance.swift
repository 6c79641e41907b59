import GridKernel

/// The behaviour every ``GridKernel/TaskQueue`` must show.
///
/// Wire it into a backend's tests with one line per case, e.g. with Swift Testing:
///
/// ```swift
/// @Test(arguments: QueueConformance.Case.allCases)
/// func queue(_ c: QueueConformance.Case) async throws {
///     try await QueueConformance { ctx in InMemoryTaskQueue(clock: ctx.clock) }.run(c)
/// }
/// ```
///
/// Each run creates a fresh queue through `make`, with a fresh namespace. A failed expectation is
/// thrown as a ``ConformanceFailure``.
public struct QueueConformance: Sendable {
    /// The cases; each is one behaviour of the protocol.
    public enum Case: String, CaseIterable, Sendable {
        /// Enqueued tasks come back with their id, priority and inline payload (`nil` and empty kept
        /// apart), a delivery count of 1 and distinct handles.
        case roundTrip
        /// A leased message is not leased again before its lease expires.
        case leaseHidesTaskFromOtherConsumers
        /// A message whose lease expired is delivered again with a higher delivery count and a new handle.
        case leaseExpiryRedelivers
        /// An extended lease keeps its message hidden past the original expiry; a stale lease (its
        /// message was delivered again) is not extended.
        case leaseExtensionKeepsTaskHidden
        /// Acknowledged messages never come back.
        case acknowledgeRemoves
        /// Acknowledging a stale lease does not remove the message's newer delivery.
        case staleAcknowledgeIsHarmless
        /// A released message is hidden for the delay, then delivered again.
        case releaseWithDelay
        /// `.highestFirst` serves higher priorities first, FIFO within a priority.
        case priorityOrder
        /// `.lowestFirst` serves lower priorities first, FIFO within a priority.
        case lowestFirstOrder
        /// `depth()` counts waiting and leased messages per priority.
        case depthCountsWaitingAndInFlight
        /// A lease call never returns more than `max` messages.
        case leaseRespectsMax
        /// Eight concurrent consumers over 500 messages: each message is delivered exactly once.
        case concurrentLeasesNeverShareAMessage
    }

    private let time: ConformanceTime
    private let make: @Sendable (ConformanceContext) async throws -> any TaskQueue

    /// Creates the suite.
    ///
    /// - Parameters:
    ///   - time: how the backend measures time; see ``ConformanceTime``.
    ///   - make: creates a fresh, empty queue for the context's namespace, using the context's clock.
    public init(
        time: ConformanceTime = .manual, make: @escaping @Sendable (ConformanceContext) async throws -> any TaskQueue
    ) {
        self.time = time
        self.make = make
    }

    /// Runs one case against a fresh queue.
    ///
    /// - Throws: ``ConformanceFailure`` when the queue does not behave as the case expects, or throws.
    public func run(_ c: Case) async throws {
        try await Harness.withRetries(time) { time in
            let harness = Harness(suite: "QueueConformance", caseName: c.rawValue, time: time)
            try await harness.run {
                let cases = Cases(queue: try await make(harness.context), time: harness.timeline)
                switch c {
                case .roundTrip: try await cases.roundTrip()
                case .leaseHidesTaskFromOtherConsumers: try await cases.leaseHidesTaskFromOtherConsumers()
                case .leaseExpiryRedelivers: try await cases.leaseExpiryRedelivers()
                case .leaseExtensionKeepsTaskHidden: try await cases.leaseExtensionKeepsTaskHidden()
                case .acknowledgeRemoves: try await cases.acknowledgeRemoves()
                case .staleAcknowledgeIsHarmless: try await cases.staleAcknowledgeIsHarmless()
                case .releaseWithDelay: try await cases.releaseWithDelay()
                case .priorityOrder: try await cases.priorityOrder(.highestFirst)
                case .lowestFirstOrder: try await cases.priorityOrder(.lowestFirst)
                case .depthCountsWaitingAndInFlight: try await cases.depthCountsWaitingAndInFlight()
                case .leaseRespectsMax: try await cases.leaseRespectsMax()
                case .concurrentLeasesNeverShareAMessage: try await cases.concurrentLeasesNeverShareAMessage()
                }
            }
        }
    }
}
