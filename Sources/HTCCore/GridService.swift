import GridKernel

/// What the `htc` client commands need from a grid, whether they reach it directly (``GridClient`` over
/// the backends) or through `htc-server` (``RemoteGridClient``).
public protocol GridService: Sendable {
    /// Creates a session; `id` is honoured only by direct clients.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for bad options; ``GridKernel/GridError/Code/unavailable``.
    func createSession(_ options: SessionOptions, id: SessionID?) async throws -> SessionRecord

    /// Submits tasks; returns their ids in the order of `inputs`. With the same `key` and inputs, a
    /// submission sent again (after a crash, a dropped connection) creates no task twice; steps that
    /// fail for want of a backend or a server are retried for a bounded time.
    ///
    /// - Throws: ``GridKernel/GridError/Code/notFound``; ``GridKernel/GridError/Code/conflict`` for a
    ///   cancelled session, or a key used by another submission; ``GridKernel/GridError/Code/payloadTooLarge``;
    ///   ``GridKernel/GridError/Code/unavailable``.
    func submit(_ session: SessionID, inputs: [[UInt8]], key: SubmissionKey?) async throws -> [TaskID]

    /// Reads a session.
    ///
    /// - Throws: ``GridKernel/GridError/Code/notFound``; ``GridKernel/GridError/Code/unavailable``.
    func session(_ id: SessionID) async throws -> SessionRecord

    /// Lists sessions in id order.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a bad cursor; ``GridKernel/GridError/Code/unavailable``.
    func sessions(after cursor: String?, limit: Int) async throws -> Page<SessionRecord>

    /// Counts a session's tasks by state.
    ///
    /// - Throws: ``GridKernel/GridError/Code/notFound`` (remote); ``GridKernel/GridError/Code/unavailable``.
    func counts(_ session: SessionID) async throws -> StateCounts

    /// Pages through a session's tasks in one state, with outputs of finished tasks; `next` is `nil`
    /// on the last page.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a bad cursor; ``GridKernel/GridError/Code/unavailable``.
    func results(_ session: SessionID, state: TaskState, after cursor: String?, limit: Int) async throws -> Page<TaskResult>

    /// Cancels a session.
    ///
    /// - Throws: ``GridKernel/GridError/Code/notFound``; ``GridKernel/GridError/Code/unavailable``.
    func cancel(_ session: SessionID) async throws -> CancelCounts

    /// Deletes a session: cancels it, removes its records and its payloads; returns how many task
    /// records were removed.
    ///
    /// - Throws: ``GridKernel/GridError/Code/notFound``; ``GridKernel/GridError/Code/unavailable``.
    func deleteSession(_ session: SessionID) async throws -> Int

    /// Reads results in completion order after the number `after`, waiting up to `wait` for the next
    /// completion when there is none yet (see ``GridKernel/GridClient/completions(_:after:limit:outputs:maxOutputBytes:wait:)``).
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument``; ``GridKernel/GridError/Code/notFound``;
    ///   ``GridKernel/GridError/Code/unavailable``.
    func completions(_ session: SessionID, after: Int, limit: Int, outputs: Bool, wait: Duration) async throws -> CompletionPage

    /// Waits until every task of the session is terminal, woken by completions (no polling of counts);
    /// `pollInterval` is how often `progress` is called meanwhile.
    ///
    /// - Throws: ``GridKernel/GridError/Code/timeout``; ``GridKernel/GridError/Code/unavailable``; `CancellationError`.
    func wait(
        for session: SessionID,
        expected: Int?,
        pollInterval: Duration,
        timeout: Duration?,
        progress: @Sendable (StateCounts) -> Void
    ) async throws -> StateCounts
}

extension GridService {
    /// The session's results as they complete, in completion order, until every task is terminal
    /// (``GridKernel/CompletionStream``); each read waits up to 30 s for the next completion.
    public func follow(_ session: SessionID, after: Int = 0, outputs: Bool = true) -> CompletionStream {
        CompletionStream(after: after) { after in
            try await completions(session, after: after, limit: 1_000, outputs: outputs, wait: .seconds(30))
        }
    }
}

extension GridClient: GridService {
    /// Reads results in completion order, outputs up to 64 MiB per page.
    ///
    /// - Throws: see ``GridKernel/GridClient/completions(_:after:limit:outputs:maxOutputBytes:wait:)``.
    public func completions(_ session: SessionID, after: Int, limit: Int, outputs: Bool, wait: Duration) async throws -> CompletionPage {
        try await completions(session, after: after, limit: limit, outputs: outputs, maxOutputBytes: 64 << 20, wait: wait)
    }

    /// Lists sessions straight from the state store.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a bad cursor; ``GridKernel/GridError/Code/unavailable``.
    public func sessions(after cursor: String?, limit: Int) async throws -> Page<SessionRecord> {
        try await backends.state.sessions(after: cursor, limit: limit)
    }
}
