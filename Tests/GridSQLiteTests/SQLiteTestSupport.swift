import Foundation
import GridKernel
import Logging

@testable import GridSQLite

/// A directory under the system's temporary directory, removed by ``remove()``.
struct TemporaryDirectory: Sendable {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "grid-sqlite-tests-" + UUID().uuidString.lowercased()
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// A path inside the directory.
    func file(_ name: String) -> String { "\(path)/\(name)" }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Runs `body` with a fresh temporary directory and removes it afterwards, whatever happens.
func withTemporaryDirectory<T: Sendable>(_ body: (TemporaryDirectory) async throws -> T) async throws -> T {
    let directory = try TemporaryDirectory()
    do {
        let result = try await body(directory)
        directory.remove()
        return result
    } catch {
        directory.remove()
        throw error
    }
}

/// A logger that drops everything.
let quietLogger = Logger(label: "grid-sqlite-tests") { _ in SwiftLogNoOpLogHandler() }

/// Opens a database file with the test logger.
func openDatabase(_ path: String, clock: any GridClock = ManualClock(), busyTimeout: Duration = .seconds(10)) async throws
    -> SQLiteDatabase
{
    try await SQLiteDatabase.open(path: path, clock: clock, busyTimeout: busyTimeout, logger: quietLogger)
}

/// `count` pending task records of `session`, indices from 0.
func pendingTasks(_ session: SessionID, count: Int, at date: Date = Date(timeIntervalSince1970: 1_700_000_000)) -> [TaskRecord] {
    (0..<count).map { TaskRecord(id: TaskID(session: session, index: $0), submittedAt: date) }
}

/// Expects `body` to throw a ``GridError`` with `code`, and returns it.
@discardableResult
func expectGridError(_ code: GridError.Code, _ body: () async throws -> Void) async throws -> GridError {
    do {
        try await body()
    } catch let error as GridError {
        guard error.code == code else { throw UnexpectedOutcome("expected GridError \(code), got \(error.code): \(error)") }
        return error
    }
    throw UnexpectedOutcome("expected GridError \(code), but nothing was thrown")
}

struct UnexpectedOutcome: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
