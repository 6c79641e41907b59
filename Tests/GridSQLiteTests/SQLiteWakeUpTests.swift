import Foundation
import GridKernel
import Testing

@testable import GridSQLite

#if canImport(Glibc)
import Glibc
#endif

/// Wake-ups across processes. Two `SQLiteDatabase` instances on one file are two peers: each has its
/// own signals and its own socket, so a write through one reaches a waiter of the other only through
/// the socket, as it would from another process. The waiters' fallback polls are 30 s, so only the
/// socket can wake them within the deadlines below.
@Suite struct SQLiteWakeUpTests {
    let now = Date(timeIntervalSince1970: 1_700_000_000)

    @Test func aFinishThroughAnotherDatabaseWakesAWaiterForCompletions() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("grid.db")
            let waiting = SQLiteStateStore(database: try await openDatabase(path), completionPollInterval: .seconds(30))
            let writing = SQLiteStateStore(database: try await openDatabase(path))
            let session = SessionID.random()
            let records = pendingTasks(session, count: 2)
            try await writing.createTasks(records)
            let owner = AgentID("agent")
            _ = try await writing.claim(records.map(\.id), owner: owner, token: .random(), leaseExpiry: now + 60, now: now)

            // The signal, first: a wake-up after `generation` can only come through the socket.
            #expect(waiting.database.wakeUps.listen())
            let generation = waiting.database.wakeUps.completions.generation
            let started = ContinuousClock.now
            async let woken = waiting.waitForCompletions(session, after: 0, timeout: .seconds(20))
            _ = try await writing.finish([TaskCompletion(id: records[0].id, attempt: 1, output: nil)], owner: owner, at: now + 1)
            await waiting.database.wakeUps.completions.wait(after: generation, timeout: .seconds(20))
            #expect(waiting.database.wakeUps.completions.generation != generation, "the datagram reached the other database")
            // Then the store's wait, end to end.
            #expect(try await woken)
            #expect(ContinuousClock.now - started < .seconds(10), "woken long before the 30 s fallback poll")
        }
    }

    @Test func anEnqueueThroughAnotherDatabaseWakesAWaitingLease() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("grid.db")
            let consumer = SQLiteTaskQueue(database: try await openDatabase(path), pollInterval: .seconds(30))
            let producer = SQLiteTaskQueue(database: try await openDatabase(path))
            let id = TaskID(session: .random(), index: 0)
            #expect(consumer.database.wakeUps.listen())
            let generation = consumer.database.wakeUps.arrivals.generation
            let started = ContinuousClock.now
            async let leased = consumer.lease(max: 10, duration: .seconds(10), order: .highestFirst, wait: .seconds(20))
            try await producer.enqueue([QueuedTask(id: id, priority: 0)])
            await consumer.database.wakeUps.arrivals.wait(after: generation, timeout: .seconds(20))
            #expect(consumer.database.wakeUps.arrivals.generation != generation, "the datagram reached the other database")
            #expect(try await leased.map(\.id) == [id])
            #expect(ContinuousClock.now - started < .seconds(10), "woken long before the 30 s fallback poll")
        }
    }

    @Test func waitsReturnAtOnceWhenCancelled() async throws {
        try await withTemporaryDirectory { directory in
            let database = try await openDatabase(directory.file("grid.db"))
            let queue = SQLiteTaskQueue(database: database, pollInterval: .seconds(30))
            let store = SQLiteStateStore(database: database, completionPollInterval: .seconds(30))
            let started = ContinuousClock.now
            let lease = Task { try await queue.lease(max: 1, duration: .seconds(10), order: .highestFirst, wait: .seconds(60)) }
            let wait = Task { try await store.waitForCompletions(.random(), after: 0, timeout: .seconds(60)) }
            lease.cancel()
            wait.cancel()
            await #expect(throws: CancellationError.self) { try await lease.value }
            await #expect(throws: CancellationError.self) { try await wait.value }
            #expect(ContinuousClock.now - started < .seconds(10))
        }
    }

    @Test func theSocketLivesNextToTheFileAndGoesWithTheDatabase() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("grid.db")
            let database = try await openDatabase(path)
            let wakeDirectory = try #require(database.wakeUps.directory)
            #expect(wakeDirectory.hasSuffix("/grid.db-wake"))
            #expect(database.wakeUps.listen())
            let sockets = try FileManager.default.contentsOfDirectory(atPath: wakeDirectory)
            #expect(sockets.count == 1 && sockets[0].hasPrefix("\(getpid())-"), "\(sockets)")
            let mode = try FileManager.default.attributesOfItem(atPath: wakeDirectory)[.posixPermissions] as? Int
            #expect(mode == 0o700)
            try await database.close()
            #expect(!FileManager.default.fileExists(atPath: wakeDirectory), "the last socket's directory is removed")
        }
    }

    @Test func aSocketLeftByAKilledProcessIsRemovedBySenders() async throws {
        try await withTemporaryDirectory { directory in
            let path = directory.file("grid.db")
            let listening = try await openDatabase(path)
            #expect(listening.wakeUps.listen())
            let wakeDirectory = try #require(listening.wakeUps.directory)
            // What SIGKILL leaves: a bound socket's file, with nobody reading it any more.
            let stale = wakeDirectory + "/999999-dead.sock"
            try bindAndAbandon(stale)
            #expect(FileManager.default.fileExists(atPath: stale))
            let writer = try await openDatabase(path)
            let generation = listening.wakeUps.arrivals.generation
            writer.wakeUps.notify(.arrivals)
            #expect(!FileManager.default.fileExists(atPath: stale), "the stale socket is removed")
            await listening.wakeUps.arrivals.wait(after: generation, timeout: .seconds(20))
            #expect(listening.wakeUps.arrivals.generation != generation, "the live socket still got its wake-up")
        }
    }

    @Test func aPathTooLongForASocketAddressUsesADirectoryUnderTmp() async throws {
        try await withTemporaryDirectory { directory in
            let deep = directory.file(String(repeating: "d", count: 60))
            try FileManager.default.createDirectory(atPath: deep, withIntermediateDirectories: true)
            let path = deep + "/grid.db"
            let waiting = SQLiteStateStore(database: try await openDatabase(path), completionPollInterval: .seconds(30))
            let writing = SQLiteStateStore(database: try await openDatabase(path))
            let wakeDirectory = try #require(waiting.database.wakeUps.directory)
            #expect(wakeDirectory.hasPrefix("/tmp/htc-wake-"), "\(wakeDirectory)")
            #expect(writing.database.wakeUps.directory == wakeDirectory, "every database of the file finds the same directory")
            #expect(waiting.database.wakeUps.listen())
            let session = SessionID.random()
            try await writing.createTasks(pendingTasks(session, count: 1))
            let generation = waiting.database.wakeUps.completions.generation
            _ = try await writing.cancel([TaskID(session: session, index: 0)], at: now)
            await waiting.database.wakeUps.completions.wait(after: generation, timeout: .seconds(20))
            #expect(try await waiting.waitForCompletions(session, after: 0, timeout: .zero))
            #expect(waiting.database.wakeUps.completions.generation != generation, "the datagram reached the other database")
            try await waiting.database.close()
            try await writing.database.close()
            #expect(!FileManager.default.fileExists(atPath: wakeDirectory))
        }
    }
}

/// Binds a datagram socket at `path` and closes it without removing the file.
private func bindAndAbandon(_ path: String) throws {
    #if canImport(Glibc)
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: Array(path.utf8) + [0])
    }
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard bound == 0 else { throw UnexpectedOutcome("bind \(path) failed: \(errno)") }
    #endif
}
