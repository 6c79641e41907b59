/// One read of a session's results in completion order (``GridClient/completions(_:after:limit:outputs:maxOutputBytes:wait:)``).
public struct CompletionPage: Sendable {
    /// The results, in completion order; each record's ``TaskRecord/completionSequence`` is one more
    /// than the one before.
    public var items: [TaskResult]
    /// The completion number of the last result, or the `after` that was asked for when there is none:
    /// pass it as `after` to continue.
    public var next: Int
    /// The session's number of tasks (reserved indices) when the page caught up with the session
    /// (it is shorter than its limit); `nil` when more results are known to follow.
    public var taskCount: Int?

    /// Creates a page.
    public init(items: [TaskResult], next: Int, taskCount: Int?) {
        self.items = items
        self.next = next
        self.taskCount = taskCount
    }

    /// Whether every task of the session is terminal and has been read: there were `taskCount` tasks
    /// and the last one read is numbered `taskCount`.
    public var complete: Bool { taskCount.map { next >= $0 } ?? false }
}

/// A session's results as they complete: an `AsyncSequence` of ``TaskResult`` in completion order that
/// ends once every task of the session is terminal and has been returned.
///
/// It pulls pages (``CompletionPage``) through the function it was made with — the backends directly
/// (``GridClient/follow(_:after:outputs:)``) or htc-server's long-poll — and waits in between for the
/// next completion, so nothing is buffered beyond one page and nothing polls. A reader that stops can
/// resume with a new stream from ``CompletionStream/Iterator/cursor``: no task is skipped or repeated.
/// Tasks submitted after the stream ended are not in it.
public struct CompletionStream: AsyncSequence, Sendable {
    public typealias Element = TaskResult

    private let after: Int
    private let read: @Sendable (Int) async throws -> CompletionPage

    /// Creates a stream that reads pages with `read(after)`, starting after the number `after`.
    public init(after: Int, read: @escaping @Sendable (Int) async throws -> CompletionPage) {
        self.after = after
        self.read = read
    }

    public func makeAsyncIterator() -> Iterator { Iterator(cursor: after, read: read) }

    /// Reads pages on demand.
    public struct Iterator: AsyncIteratorProtocol {
        /// The completion number of the last result returned: where a new stream resumes.
        public private(set) var cursor: Int
        private let read: @Sendable (Int) async throws -> CompletionPage
        private var buffer: [TaskResult] = []
        private var position = 0
        private var done = false

        init(cursor: Int, read: @escaping @Sendable (Int) async throws -> CompletionPage) {
            self.cursor = cursor
            self.read = read
        }

        /// The next result, or `nil` once the session is complete and every result was returned.
        ///
        /// - Throws: what the reads throw; `CancellationError`.
        public mutating func next() async throws -> TaskResult? {
            while position == buffer.count {
                if done { return nil }
                try Task.checkCancellation()
                let page = try await read(cursor)
                buffer = page.items
                position = 0
                done = page.complete
            }
            let result = buffer[position]
            position += 1
            cursor = result.record.completionSequence ?? cursor
            return result
        }
    }
}
