import GridKernel
import GridKernelConformance
import Testing

@testable import GridSQLite

// The public conformance suites, wired for the SQLite backend. Each case gets its own database file
// (named by the case's namespace) in a temporary directory that is removed afterwards.

@Test(arguments: QueueConformance.Case.allCases)
func sqliteQueue(_ c: QueueConformance.Case) async throws {
    try await withTemporaryDirectory { dir in try await QueueConformance { ctx in SQLiteTaskQueue(database: try await database(ctx, dir)) }.run(c) }
}

@Test(arguments: StateConformance.Case.allCases)
func sqliteState(_ c: StateConformance.Case) async throws {
    try await withTemporaryDirectory { dir in try await StateConformance { ctx in SQLiteStateStore(database: try await database(ctx, dir)) }.run(c) }
}

@Test(arguments: PayloadConformance.Case.allCases)
func sqlitePayloads(_ c: PayloadConformance.Case) async throws {
    try await withTemporaryDirectory { dir in try await PayloadConformance { ctx in SQLitePayloadStore(database: try await database(ctx, dir)) }.run(c) }
}

@Test(arguments: PayloadConformance.Case.allCases)
func localDiskPayloads(_ c: PayloadConformance.Case) async throws {
    try await withTemporaryDirectory { dir in try await PayloadConformance { ctx in LocalDiskPayloadStore(directory: dir.file(ctx.namespace)) }.run(c) }
}

@Test(arguments: GridConformance.Case.allCases)
func sqliteGrid(_ c: GridConformance.Case) async throws {
    try await withTemporaryDirectory { dir in
        try await GridConformance { ctx in
            let database = try await database(ctx, dir)
            return GridBackends(queue: SQLiteTaskQueue(database: database), state: SQLiteStateStore(database: database), payloads: SQLitePayloadStore(database: database))
        }.run(c)
    }
}

/// A fresh database file for one conformance case, on the case's clock.
private func database(_ context: ConformanceContext, _ directory: TemporaryDirectory) async throws -> SQLiteDatabase {
    try await openDatabase(directory.file("\(context.namespace).db"), clock: context.clock)
}
