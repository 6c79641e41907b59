import Foundation
import GRDB
import GridKernel
import Logging

/// One SQLite file shared by ``SQLiteTaskQueue``, ``SQLiteStateStore`` and ``SQLitePayloadStore``.
///
/// The file may be shared by several processes (a server and its agents on one machine): the
/// database runs in WAL mode with `synchronous = NORMAL`, every write is a `BEGIN IMMEDIATE`
/// transaction (so two writers never both hold a read lock they then try to upgrade, which SQLite
/// could only answer with an unrecoverable `SQLITE_BUSY`), and a writer waits up to the busy timeout
/// for the lock before the call fails with ``GridError/Code/unavailable``.
///
/// Isolation: the SQLite handles belong to a GRDB `DatabasePool` (one writer connection, up to four
/// reader connections), which serialises writes on its own dispatch queue. Every access goes through
/// GRDB's `async` methods, so no thread of the cooperative pool ever waits for the file lock.
public final class SQLiteDatabase: Sendable {
    /// The backend name used in ``GridError/backend``.
    public static let backendName = "sqlite"

    /// The path of the database file.
    public let path: String
    /// The clock the queue uses for visibility and lease expiry.
    public let clock: any GridClock
    /// The logger of the database and its stores.
    public let logger: Logger

    let pool: DatabasePool
    /// Wake-ups of waiters in this and other processes (see ``SQLiteWakeUps``).
    let wakeUps: SQLiteWakeUps

    private init(path: String, pool: DatabasePool, clock: any GridClock, logger: Logger) {
        self.path = path
        self.pool = pool
        self.clock = clock
        self.logger = logger
        wakeUps = SQLiteWakeUps(databasePath: path, logger: logger)
    }

    /// Opens or creates the database file at `path` and brings its schema up to date.
    ///
    /// Opening an existing file is safe while other processes use it, and so is opening a new file
    /// from several processes at once: the schema is created only once. The file and its `-wal` and
    /// `-shm` companions must be on a local file system (WAL needs shared memory).
    ///
    /// - Parameters:
    ///   - path: the database file; its directory must exist.
    ///   - clock: the clock for queue visibility; inject a `ManualClock` in tests.
    ///   - busyTimeout: how long a write waits for another connection's lock before it fails.
    ///   - logger: where to log opening and schema changes.
    /// - Throws: ``GridError/Code/unavailable`` when the file cannot be opened or created (missing
    ///   directory, no permission, not a SQLite file) or stays locked past the busy timeout.
    public static func open(
        path: String,
        clock: any GridClock = SystemClock(),
        busyTimeout: Duration = .seconds(10),
        logger: Logger
    ) async throws -> SQLiteDatabase {
        let pool: DatabasePool = try await offPool {
            do {
                var configuration = Configuration()
                configuration.label = "htc-grid"
                configuration.journalMode = .wal  // DatabasePool also sets synchronous = NORMAL.
                configuration.busyMode = .timeout(busyTimeout.timeInterval)
                configuration.maximumReaderCount = 4
                configuration.prepareDatabase { db in
                    // A bigger page cache (16 MiB per connection, allocated on demand) keeps the
                    // task and queue indexes in memory under load.
                    try db.execute(sql: "PRAGMA cache_size = -16000")
                    // The batch lists that statements materialise stay in memory.
                    try db.execute(sql: "PRAGMA temp_store = MEMORY")
                }
                // Switching a new file to WAL needs an exclusive lock, and SQLite answers SQLITE_BUSY at
                // once, without its busy handler, while another process holds it (several agents
                // starting together on a new file): retry for up to the busy timeout.
                let deadline = ContinuousClock.now + busyTimeout
                var pause = Duration.milliseconds(5)
                while true {
                    do {
                        let pool = try DatabasePool(path: path, configuration: configuration)
                        try SQLiteSchema.migrate(pool)
                        return pool
                    } catch let error as DatabaseError where error.resultCode == .SQLITE_BUSY && ContinuousClock.now < deadline {
                        Thread.sleep(forTimeInterval: pause.timeInterval)
                        pause = min(pause * 2, .milliseconds(200))
                    }
                }
            } catch {
                throw mapError(error, path: path, operation: "open")
            }
        }
        logger.debug("opened SQLite database", metadata: ["path": "\(path)"])
        return SQLiteDatabase(path: path, pool: pool, clock: clock, logger: logger)
    }

    /// Closes the database connections and removes this process' wake-up socket. Later calls on this
    /// database or its stores fail.
    ///
    /// Not required: the connections close and the socket is removed when the last reference goes away.
    ///
    /// - Throws: ``GridError/Code/unavailable`` if a connection cannot be closed.
    public func close() async throws {
        wakeUps.close()
        let pool = self.pool
        let path = self.path
        try await Self.offPool {
            do { try pool.close() } catch { throw Self.mapError(error, path: path, operation: "close") }
        }
    }

    // MARK: - Access

    /// Runs `body` in one `BEGIN IMMEDIATE` transaction on the writer connection; errors become
    /// ``GridError``s (a ``GridError`` thrown by `body` passes unchanged and rolls back).
    func write<T: Sendable>(_ operation: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await pool.writeWithoutTransaction { db in
                var result: T?
                try db.inTransaction(.immediate) {
                    result = try body(db)
                    return .commit
                }
                return result!
            }
        } catch {
            throw Self.mapError(error, path: path, operation: operation)
        }
    }

    /// Runs `body` on a reader connection, in a snapshot of the last committed state.
    func read<T: Sendable>(_ operation: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await pool.read(body)
        } catch {
            throw Self.mapError(error, path: path, operation: operation)
        }
    }

    /// Runs blocking work (opening a file, migrating) on a dispatch queue instead of the cooperative pool.
    static func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .userInitiated).async {
                continuation.resume(with: Result { try work() })
            }
        }
    }

    // MARK: - Errors

    /// Turns a GRDB error into a ``GridError`` whose message says what to do.
    static func mapError(_ error: any Error, path: String, operation: String) -> any Error {
        if error is GridError || error is CancellationError { return error }
        guard let error = error as? DatabaseError else {
            return GridError(.internalError, "\(operation) failed on '\(path)'", backend: backendName, underlying: error)
        }
        switch error.resultCode {
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            return GridError.unavailable(
                "\(operation): '\(path)' stayed locked by another connection past the busy timeout; retry later, "
                    + "or put fewer writing processes on this file",
                backend: backendName, underlying: error)
        case .SQLITE_CANTOPEN, .SQLITE_PERM, .SQLITE_READONLY, .SQLITE_AUTH:
            return GridError.unavailable(
                "\(operation): cannot open '\(path)' for writing; check that its directory exists and that this "
                    + "process may write the file and its -wal and -shm companions",
                backend: backendName, underlying: error)
        case .SQLITE_IOERR, .SQLITE_FULL, .SQLITE_PROTOCOL, .SQLITE_NOLFS:
            return GridError.unavailable(
                "\(operation): I/O error on '\(path)'; check free disk space and that the file is on a local file system",
                backend: backendName, underlying: error)
        case .SQLITE_CORRUPT, .SQLITE_NOTADB:
            return GridError.unavailable(
                "\(operation): '\(path)' is not a valid HTC Grid database or is damaged; restore it from a backup "
                    + "or point the grid at a new file",
                backend: backendName, underlying: error)
        case .SQLITE_TOOBIG:
            return GridError(
                .payloadTooLarge, "\(operation): a value is larger than SQLite accepts (1 GB); store it elsewhere",
                backend: backendName, underlying: error)
        default:
            return GridError(.internalError, "\(operation) failed on '\(path)'", backend: backendName, underlying: error)
        }
    }
}
