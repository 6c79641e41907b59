import GridKernel

/// The behaviour every ``GridKernel/PayloadStore`` must show.
///
/// Wire it into a backend's tests with one line per case, e.g. with Swift Testing:
///
/// ```swift
/// @Test(arguments: PayloadConformance.Case.allCases)
/// func payloads(_ c: PayloadConformance.Case) async throws {
///     try await PayloadConformance { ctx in InMemoryPayloadStore(clock: ctx.clock) }.run(c)
/// }
/// ```
///
/// Each run creates a fresh store through `make`, with a fresh namespace. A failed expectation is
/// thrown as a ``ConformanceFailure``.
public struct PayloadConformance: Sendable {
    /// The cases; each is one behaviour of the protocol.
    public enum Case: String, CaseIterable, Sendable {
        /// An empty value, a one-byte value and an 8 MiB value (or the store's limit, if lower) come
        /// back byte for byte; an empty value exists.
        case roundTripEmptyOneByteAndEightMiB
        /// A hundred values stored in one call come back in one call.
        case batchPutGet
        /// Missing keys are absent from a batch read; the single-key read throws
        /// ``GridKernel/GridError/Code/notFound``.
        case missingKeysAbsent
        /// Deleted keys are gone, others stay; deleting missing keys is not an error.
        case deleteRemoves
        /// Storing under an existing key replaces its value.
        case overwriteReplaces
        /// A value above ``GridKernel/PayloadStore/maxPayloadBytes`` throws
        /// ``GridKernel/GridError/Code/payloadTooLarge`` and nothing of its batch is stored; a value
        /// at the limit is stored. Passes trivially when the store sets no limit, or a limit above
        /// 64 MiB (too large to allocate in a test).
        case sizeLimitEnforced
    }

    private let time: ConformanceTime
    private let make: @Sendable (ConformanceContext) async throws -> any PayloadStore

    /// Creates the suite.
    ///
    /// - Parameters:
    ///   - time: how the backend measures time; see ``ConformanceTime``. No case depends on time.
    ///   - make: creates a fresh, empty store for the context's namespace, using the context's clock.
    public init(
        time: ConformanceTime = .manual, make: @escaping @Sendable (ConformanceContext) async throws -> any PayloadStore
    ) {
        self.time = time
        self.make = make
    }

    /// Runs one case against a fresh store.
    ///
    /// - Throws: ``ConformanceFailure`` when the store does not behave as the case expects, or throws.
    public func run(_ c: Case) async throws {
        try await Harness.withRetries(time) { time in
            let harness = Harness(suite: "PayloadConformance", caseName: c.rawValue, time: time)
            try await harness.run {
                let session = try SessionID("payload.case:\(SessionID.random())")
                let cases = Cases(store: try await make(harness.context), session: session)
                switch c {
                case .roundTripEmptyOneByteAndEightMiB: try await cases.roundTripEmptyOneByteAndEightMiB()
                case .batchPutGet: try await cases.batchPutGet()
                case .missingKeysAbsent: try await cases.missingKeysAbsent()
                case .deleteRemoves: try await cases.deleteRemoves()
                case .overwriteReplaces: try await cases.overwriteReplaces()
                case .sizeLimitEnforced: try await cases.sizeLimitEnforced()
                }
            }
        }
    }
}
