import Foundation

/// The life-cycle state of a task: `pending → processing → finished | failed | cancelled`.
public enum TaskState: String, Sendable, Hashable, CaseIterable, Codable {
    /// Waiting in the queue for an agent.
    case pending
    /// Owned and being run by an agent.
    case processing
    /// Ran to completion; its output is stored.
    case finished
    /// Failed for good: its handler failed or its lease expired once retries reached the maximum.
    case failed
    /// Cancelled before it finished; any output is discarded.
    case cancelled

    /// Whether no transition leaves this state.
    public var isTerminal: Bool {
        switch self {
        case .pending, .processing: false
        case .finished, .failed, .cancelled: true
        }
    }

    /// The three terminal states.
    public static let terminal: [TaskState] = [.finished, .failed, .cancelled]
}

/// Everything the grid knows about one task (one row of HTC-Grid's state table).
public struct TaskRecord: Sendable, Hashable, Codable {
    /// The task.
    public var id: TaskID
    /// Its current state.
    public var state: TaskState
    /// The agent that owns it while `processing`; `nil` otherwise.
    public var owner: AgentID?
    /// When the owner's lease runs out (only while `processing`).
    public var leaseExpiry: Date?
    /// How many times the task went back to `pending` after a failure or an expired lease.
    public var retries: Int
    /// How many retries are allowed before the task is `failed` for good.
    public var maxRetries: Int
    /// Queue priority; higher runs first.
    public var priority: Int
    /// How long one run may take before it is stopped and counted as a failure; `nil` for no limit.
    public var timeout: Duration?
    /// When the task was submitted.
    public var submittedAt: Date
    /// When the current (or last) run started.
    public var startedAt: Date?
    /// When the task reached a terminal state.
    public var completedAt: Date?
    /// The error text of the last failure, if any.
    public var lastError: String?
    /// The output of a `finished` task when it was small enough to keep in the record; `nil` when it
    /// is in the payload store under ``PayloadKey/output(_:attempt:)`` (or the task is not finished).
    public var output: [UInt8]?
    /// How many times the task was claimed: the number of the current (or last) run, 0 before the first
    /// claim. Heartbeats, finishes, failures and releases name the attempt they belong to, and only the
    /// current one is accepted (fencing), so a stale run can never change the task.
    public var attempt: Int
    /// The token of the claim call that started the current attempt: the same call sent again after a
    /// lost reply wins the same attempt instead of losing the task (see ``TaskRecord/claimed(by:token:leaseExpiry:now:)``).
    public var claimToken: ClaimToken?
    /// The task's place in its session's completion order: 1 for the first task of the session that
    /// became terminal, 2 for the next, and so on with no gap and no repeat; `nil` while the task is not
    /// terminal. The state store assigns it in the same atomic step as the transition into a terminal
    /// state (see "Completion order" in TaskRules.swift), and ``StateStore/completions(_:after:limit:)``
    /// reads a session's tasks in this order.
    public var completionSequence: Int?

    /// Creates a pending task record.
    public init(
        id: TaskID,
        state: TaskState = .pending,
        owner: AgentID? = nil,
        leaseExpiry: Date? = nil,
        retries: Int = 0,
        maxRetries: Int = SessionOptions.defaultMaxRetries,
        priority: Int = 0,
        timeout: Duration? = nil,
        submittedAt: Date,
        startedAt: Date? = nil,
        completedAt: Date? = nil,
        lastError: String? = nil,
        output: [UInt8]? = nil,
        attempt: Int = 0,
        claimToken: ClaimToken? = nil,
        completionSequence: Int? = nil
    ) {
        self.id = id
        self.state = state
        self.owner = owner
        self.leaseExpiry = leaseExpiry
        self.retries = retries
        self.maxRetries = maxRetries
        self.priority = priority
        self.timeout = timeout
        self.submittedAt = submittedAt
        self.startedAt = startedAt
        self.completedAt = completedAt
        self.lastError = lastError
        self.output = output
        self.attempt = attempt
        self.claimToken = claimToken
        self.completionSequence = completionSequence
    }
}

/// The options a session is created with; every task of the session inherits them.
public struct SessionOptions: Sendable, Hashable, Codable {
    /// Retries allowed when no value is given, as in HTC-Grid.
    public static let defaultMaxRetries = 5

    /// Queue priority of the session's tasks; higher runs first.
    public var priority: Int
    /// Retries before a task is `failed` for good.
    public var maxRetries: Int
    /// Per-task time limit; `nil` for none.
    public var taskTimeout: Duration?
    /// Free-form labels for people and dashboards.
    public var labels: [String: String]

    /// Creates session options; the defaults are priority 0, 5 retries, no timeout.
    public init(
        priority: Int = 0,
        maxRetries: Int = SessionOptions.defaultMaxRetries,
        taskTimeout: Duration? = nil,
        labels: [String: String] = [:]
    ) {
        self.priority = priority
        self.maxRetries = maxRetries
        self.taskTimeout = taskTimeout
        self.labels = labels
    }

    /// Checks the options.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` naming the field that is out of range.
    public func validate() throws {
        guard (0...1_000).contains(maxRetries) else {
            throw GridError.invalidArgument("maxRetries is \(maxRetries); it must be between 0 and 1000")
        }
        guard (-1_000_000...1_000_000).contains(priority) else {
            throw GridError.invalidArgument("priority is \(priority); it must be between -1000000 and 1000000")
        }
        if let taskTimeout, taskTimeout <= .zero {
            throw GridError.invalidArgument("taskTimeout must be positive")
        }
    }
}

/// A session as stored: its options, when it was created and how many tasks it has.
public struct SessionRecord: Sendable, Hashable, Codable {
    /// The session.
    public var id: SessionID
    /// Its options.
    public var options: SessionOptions
    /// When it was created.
    public var createdAt: Date
    /// How many task indices have been reserved (the next task gets this index).
    public var taskCount: Int
    /// Whether the session was cancelled; later submissions are refused.
    public var cancelled: Bool

    /// Creates a session record.
    public init(id: SessionID, options: SessionOptions, createdAt: Date, taskCount: Int = 0, cancelled: Bool = false) {
        self.id = id
        self.options = options
        self.createdAt = createdAt
        self.taskCount = taskCount
        self.cancelled = cancelled
    }
}

/// Counts of a session's tasks per state.
public struct StateCounts: Sendable, Hashable, Codable {
    /// The count for each state; states without tasks may be absent.
    public var byState: [TaskState: Int]

    /// Creates counts.
    public init(_ byState: [TaskState: Int] = [:]) { self.byState = byState }

    /// The count for one state (0 when absent).
    public subscript(state: TaskState) -> Int {
        get { byState[state] ?? 0 }
        set { byState[state] = newValue }
    }

    /// All tasks.
    public var total: Int { byState.values.reduce(0, +) }
    /// Tasks in a terminal state.
    public var terminal: Int { TaskState.terminal.reduce(0) { $0 + self[$1] } }
}

/// How many tasks a cancel moved to `cancelled`, by the state they were in (HTC-Grid's counters).
public struct CancelCounts: Sendable, Hashable, Codable {
    /// Tasks that were waiting.
    public var pending: Int
    /// Tasks that were running.
    public var processing: Int

    /// Creates counts.
    public init(pending: Int = 0, processing: Int = 0) {
        self.pending = pending
        self.processing = processing
    }

    /// All cancelled tasks.
    public var total: Int { pending + processing }
}

/// One page of a listing, with the cursor for the next page.
public struct Page<Element: Sendable>: Sendable {
    /// The items of this page.
    public var items: [Element]
    /// Pass this to get the next page; `nil` when this was the last one.
    public var next: String?

    /// Creates a page.
    public init(items: [Element], next: String?) {
        self.items = items
        self.next = next
    }
}
