import Foundation
import GridKernel
import Logging
import NIOSSL
import PostgresNIO
import Synchronization

/// A pool of connections to one PostgreSQL server: postgres-nio's `PostgresClient`, running for as
/// long as this object lives.
///
/// Every statement the backends send is a single SQL statement (data-modifying CTEs where a change
/// touches several tables), so each is its own transaction and any pooled connection can run it;
/// only the rare creation of tasks that are terminal already holds a connection for a transaction of
/// two statements. Notifications come through a connection of their own (``PostgresNotifications``).
public final class PostgresConnectionPool: Sendable {
    /// The client; usable as long as the pool lives.
    let client: PostgresClient
    /// Where it connects, for messages.
    let endpoint: String
    /// The notifications of the server, for the waiters of this process (a connection of their own).
    let notifications: PostgresNotifications
    private let runner: Task<Void, Never>
    private let listener: Task<Void, Never>

    /// Creates a pool; connections are opened on demand, up to `configuration.poolSize`.
    public init(_ configuration: PostgresConfiguration, logger: Logger) {
        let tls: PostgresClient.Configuration.TLS
        switch configuration.tls {
        case .disable: tls = .disable
        case .prefer: tls = .prefer(.makeClientConfiguration())
        case .require: tls = .require(.makeClientConfiguration())
        }
        var clientConfiguration = PostgresClient.Configuration(
            host: configuration.host, port: configuration.port, username: configuration.user,
            password: configuration.password, database: configuration.database, tls: tls
        )
        clientConfiguration.options.maximumConnections = configuration.poolSize
        // The client warns when a request arrives before `run()` started, which the first request of
        // a process may well do (the runner task below starts concurrently): the request just waits.
        // Connection failures reach every caller as `unavailable`; the background log keeps errors only.
        var backgroundLogger = logger
        backgroundLogger.logLevel = max(logger.logLevel, .error)
        let client = PostgresClient(configuration: clientConfiguration, backgroundLogger: backgroundLogger)
        self.client = client
        self.endpoint = "\(configuration.host):\(configuration.port)"
        // The client serves requests only while `run()` runs. The pool owns that task and cancels it
        // when it goes away. Detached on purpose: inside an agent's service group, an inherited
        // graceful-shutdown signal would close the connections while the agent still drains its tasks.
        self.runner = Task.detached { await client.run() }
        let notifications = PostgresNotifications(configuration, logger: backgroundLogger)
        self.notifications = notifications
        self.listener = Task.detached { await notifications.run() }
    }

    deinit {
        runner.cancel()
        listener.cancel()
    }
}

/// The grid's tables in one schema of a PostgreSQL database, reached through a pool; what the queue,
/// the state store and the payload store of one URL share.
public struct PostgresDatabase: Sendable {
    /// The name backends report in errors.
    public static let backendName = "postgres"

    /// The connections.
    public let pool: PostgresConnectionPool
    /// The schema holding the tables.
    public let schema: String
    /// The clock for lease times and timestamps.
    public let clock: any GridClock
    /// How often a waiter (a waiting lease, ``PostgresStateStore/waitForCompletions(_:after:timeout:)``)
    /// looks again while notifications cannot reach it (the listening connection is down). While they
    /// can, it looks again when notified, when a delayed message comes due, and every
    /// `max(pollInterval, 5 s)` in case a notification was lost with its connection.
    public let pollInterval: Duration
    let logger: Logger
    /// When this process last refreshed the planner's statistics of the task table (see ``refreshStatistics()``).
    private let lastAnalyze = Arc(Mutex<ContinuousClock.Instant?>(nil))

    /// A reference to a value that copies of a struct share.
    private final class Arc<Value: ~Copyable & Sendable>: Sendable {
        let value: Value
        init(_ value: consuming Value) { self.value = value }
    }

    /// Opens the grid in `schema`, creating the schema and its tables on first use.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a schema name that is not a plain
    ///   lower-case identifier; ``GridKernel/GridError/Code/unavailable`` when the server cannot be reached.
    public static func open(
        pool: PostgresConnectionPool, schema: String, clock: any GridClock = SystemClock(),
        pollInterval: Duration = .milliseconds(250), logger: Logger = Logger(label: "htc.postgres")
    ) async throws -> PostgresDatabase {
        guard PostgresConfiguration.isIdentifier(schema) else {
            throw GridError.invalidArgument(
                "schema '\(schema)' must be a lower-case identifier (letters, digits, _)", backend: backendName)
        }
        let database = PostgresDatabase(pool: pool, schema: schema, clock: clock, pollInterval: pollInterval, logger: logger)
        try await database.execute("create schema", PostgresQuery(unsafeSQL: PostgresSchema.ddl(schema: schema)))
        return database
    }

    /// Refreshes the planner's statistics of the task table after a large submission, at most once
    /// every 5 seconds per process.
    ///
    /// A grid's tables grow in bursts: 20,000 records arrive in a second, long before autovacuum's
    /// next analyze. Without statistics the planner takes the new rows for a handful and answers a
    /// claim of 256 tasks with a scan of every pending task (measured: 455 ms per claim at 20,000
    /// tasks, instead of about 2 ms through the primary key).
    func refreshStatistics() async throws {
        let now = ContinuousClock.now
        let due = lastAnalyze.value.withLock { last in
            guard last.map({ $0.duration(to: now) >= .seconds(5) }) ?? true else { return false }
            last = now
            return true
        }
        guard due else { return }
        try await execute("analyze", "ANALYZE \(unescaped: table("task"))")
    }

    /// `"schema".name`: a table of this grid.
    func table(_ name: String) -> String { "\"\(schema)\".\(name)" }

    /// The notification channel of `kind` in this grid: `<schema>_<kind>`, cut to PostgreSQL's 63 bytes
    /// (two grids whose channels then meet only wake each other's waiters for nothing).
    func channel(_ kind: String) -> String { String(schema.utf8.prefix(63 - kind.utf8.count - 1))! + "_" + kind }

    /// Calls `look` until it gives a value, or until `timeout` (real time) has passed, then gives `nil`.
    /// Between two looks it waits for a notification of `channel` with `key` (see
    /// ``PostgresNotifications``), for the delay `look` returned (when something comes due without a
    /// notification), or for the fallback of ``pollInterval``.
    ///
    /// - Throws: what `look` throws; `CancellationError` as soon as the task is cancelled.
    func waitForNotification<Value>(
        _ channel: String, key: String, timeout: Duration, look: () async throws -> (value: Value?, due: Duration?)
    ) async throws -> Value? {
        guard timeout > .zero else { return try await look().value }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let notifications = pool.notifications
        return try await notifications.withSignal(.init(channel: channel, key: key), until: deadline) { signal in
            while true {
                try Task.checkCancellation()
                let generation = signal.generation
                let (value, due) = try await look()
                if let value { return value }
                let remaining = deadline - ContinuousClock.now
                guard remaining > .zero else { return nil }
                var pause = notifications.isListening(channel) ? max(pollInterval, .seconds(5)) : pollInterval
                if let due { pause = min(pause, max(due, .milliseconds(1))) }
                await signal.wait(after: generation, timeout: min(pause, remaining))
            }
        }
    }

    /// Runs `body` in a transaction on one connection of the pool; a transaction chosen as a deadlock
    /// victim or failing serialisation is run again.
    func transaction<Result: Sendable>(_ operation: String, _ body: (PostgresConnection) async throws -> Result) async throws -> Result {
        var attempt = 0
        while true {
            do {
                return try await pool.client.withTransaction(logger: logger) { connection in try await body(connection) }
            } catch {
                var cause: any Error = error
                if let error = error as? PostgresTransactionError {
                    cause = error.closureError ?? error.beginError ?? error.commitError ?? error
                }
                if let psql = cause as? PSQLError, Self.isTransient(psql), attempt < 8 {
                    attempt += 1
                    continue
                }
                throw mapError(cause, operation: operation)
            }
        }
    }

    /// Runs one statement and hands its rows to `body`, mapping errors to `GridError`. A statement
    /// chosen as a deadlock victim or failing serialisation was rolled back whole and is sent again.
    func query<Result>(
        _ operation: String, _ query: PostgresQuery, _ body: (PostgresRowSequence) async throws -> Result
    ) async throws -> Result {
        var attempt = 0
        while true {
            do {
                let rows = try await pool.client.query(query, logger: logger)
                return try await body(rows)
            } catch let error as PSQLError where Self.isTransient(error) && attempt < 8 {
                attempt += 1
                logger.debug("retrying \(operation) after \(Self.sqlState(error) ?? "?")", metadata: ["attempt": "\(attempt)"])
            } catch {
                throw mapError(error, operation: operation)
            }
        }
    }

    /// Runs one statement that returns no rows of interest.
    func execute(_ operation: String, _ query: PostgresQuery) async throws {
        try await self.query(operation, query) { rows in for try await _ in rows {} }
    }

    /// Runs one statement and collects one value per row.
    func collect<Value>(_ operation: String, _ query: PostgresQuery, _ row: (PostgresRow) throws -> Value) async throws -> [Value] {
        try await self.query(operation, query) { rows in try await Self.collect(rows, row) }
    }

    /// One value per row of `rows`.
    static func collect<Value>(_ rows: PostgresRowSequence, _ row: (PostgresRow) throws -> Value) async throws -> [Value] {
        var values: [Value] = []
        for try await each in rows { values.append(try row(each)) }
        return values
    }

    private static func sqlState(_ error: PSQLError) -> String? { error.serverInfo?[.sqlState] }

    /// Deadlocks (40P01) and serialisation failures (40001): the statement was rolled back and may be repeated.
    private static func isTransient(_ error: PSQLError) -> Bool {
        guard let state = sqlState(error) else { return false }
        return state == "40P01" || state == "40001"
    }

    /// Server errors of the connection, resource and operator classes (08, 53, 57) and every
    /// client-side failure become `unavailable`; other server errors are bugs or a schema changed
    /// under us, and become `internalError` with the server's message.
    func mapError(_ error: any Error, operation: String) -> any Error {
        if error is GridError || error is CancellationError { return error }
        guard let error = error as? PSQLError else {
            // The pool's own errors: no connection could be made (its circuit breaker), or it was shut down.
            return GridError(
                .unavailable, "cannot reach PostgreSQL at \(pool.endpoint) for \(operation): \(error)", backend: Self.backendName,
                underlying: error)
        }
        if error.code == .server, let state = Self.sqlState(error) {
            let message = error.serverInfo?[.message] ?? "no message"
            if ["08", "53", "57", "40"].contains(String(state.prefix(2))) {
                return GridError(
                    .unavailable, "PostgreSQL at \(pool.endpoint) refused \(operation): \(message) (SQLSTATE \(state))",
                    backend: Self.backendName, underlying: error)
            }
            if state == "54000" {
                return GridError(
                    .payloadTooLarge, "PostgreSQL cannot store a value of \(operation): \(message)",
                    backend: Self.backendName, underlying: error)
            }
            return GridError(
                .internalError, "PostgreSQL rejected \(operation): \(message) (SQLSTATE \(state))",
                backend: Self.backendName, underlying: error)
        }
        return GridError(
            .unavailable, "cannot reach PostgreSQL at \(pool.endpoint) for \(operation) (\(error.code))",
            backend: Self.backendName, underlying: error)
    }
}
