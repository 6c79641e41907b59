import Foundation
import GridKernel
import Testing

@testable import GridSQLite

@Suite struct LocalDiskPayloadStoreTests {
    static let oddKeys = [
        "a/../b", "a/b", "../../etc/passwd", "x y", "", ".", "..", ".tmp", "%41", "A", "k-A", "tab\tnew\nline",
        "émoji 🚀", "trailing/", "/leading", String(repeating: "k", count: 250), String(repeating: "/", count: 120),
        String(repeating: "é", count: 150), String(repeating: "x", count: 600),
    ]

    @Test func oddKeysRoundTripAndStayInsideTheDirectory() async throws {
        try await withTemporaryDirectory { directory in
            let root = directory.file("payloads")
            let store = LocalDiskPayloadStore(directory: root)
            let items = Self.oddKeys.enumerated().map { PayloadItem(key: $1, value: Array("value \($0)".utf8)) }
            try await store.put(items)
            let values = try await store.get(Self.oddKeys + ["missing"])
            #expect(values.count == Self.oddKeys.count)
            for item in items { #expect(values[item.key] == item.value, "key \(item.key.debugDescription)") }

            // Nothing escaped the directory, and no temporary file was left behind.
            let outside = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            #expect(outside == ["payloads"])
            #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/.tmp").isEmpty)

            try await store.delete(Self.oddKeys)
            #expect(try await store.get(Self.oddKeys).isEmpty)
            // The directory levels of long keys went with them.
            #expect(try FileManager.default.contentsOfDirectory(atPath: root) == [".tmp"])
        }
    }

    @Test func putReplacesAndEmptyValuesSurvive() async throws {
        try await withTemporaryDirectory { directory in
            let store = LocalDiskPayloadStore(directory: directory.file("p"))
            try await store.put("k", [1, 2, 3])
            try await store.put("k", [])
            #expect(try await store.get("k") == [])
            let large = (0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            try await store.put("k", large)
            #expect(try await store.get("k") == large)
            try await store.delete(["k", "never-there"])
            await #expect(throws: GridError.self) { try await store.get("k") }
        }
    }

    @Test func tooLargeStoresNothingOfTheBatch() async throws {
        try await withTemporaryDirectory { directory in
            let store = LocalDiskPayloadStore(directory: directory.file("p"), maxPayloadBytes: 16)
            #expect(store.maxPayloadBytes == 16)
            let error = try await expectGridError(.payloadTooLarge) {
                try await store.put([PayloadItem(key: "small", value: [1]), PayloadItem(key: "big", value: Array(repeating: 0, count: 17))])
            }
            #expect(error.message.contains("big"))
            #expect(try await store.get(["small", "big"]).isEmpty)
            #expect(LocalDiskPayloadStore(directory: directory.path).maxPayloadBytes == 64 << 20)
        }
    }

    @Test func tooLongKeyIsInvalid() async throws {
        try await withTemporaryDirectory { directory in
            let store = LocalDiskPayloadStore(directory: directory.file("p"))
            let key = String(repeating: "ü", count: 1_000)
            try await expectGridError(.invalidArgument) { try await store.put(key, [1]) }
            #expect(try await store.get([key]).isEmpty)
        }
    }

    @Test func unwritableDirectoryIsUnavailable() async throws {
        try await withTemporaryDirectory { directory in
            // A file where the directory should be.
            let blocked = directory.file("blocked")
            #expect(FileManager.default.createFile(atPath: blocked, contents: Data([1])))
            let error = try await expectGridError(.unavailable) {
                try await LocalDiskPayloadStore(directory: blocked).put("k", [1])
            }
            #expect(error.message.contains(blocked))
        }
    }

    @Test func keysEncodeInjectively() {
        let encoded = Self.oddKeys.map(LocalDiskPayloadStore.encode)
        #expect(Set(encoded).count == Self.oddKeys.count)
        #expect(LocalDiskPayloadStore.encode("a/../b") == "a%2F%2E%2E%2Fb")
        #expect(LocalDiskPayloadStore.encode("sess-1_2-input") == "sess-1_2-input")
    }
}

@Suite struct SQLitePayloadStoreTests {
    @Test func emptyLargeAndReplacedValues() async throws {
        try await withTemporaryDirectory { directory in
            let store = SQLitePayloadStore(database: try await openDatabase(directory.file("grid.db")))
            #expect(store.maxPayloadBytes == 64 << 20)
            let large = (0..<5_000_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            try await store.put([PayloadItem(key: "empty", value: []), PayloadItem(key: "large", value: large), PayloadItem(key: "x y/..", value: [1])])
            try await store.put("x y/..", [2])
            let values = try await store.get(["empty", "large", "x y/..", "missing"])
            #expect(values["empty"] == [])
            #expect(values["large"] == large)
            #expect(values["x y/.."] == [2])
            #expect(values["missing"] == nil)
            try await store.delete(["large", "missing"])
            #expect(try await store.get(["large"]).isEmpty)
        }
    }

    @Test func tooLargeStoresNothingOfTheBatch() async throws {
        try await withTemporaryDirectory { directory in
            let store = SQLitePayloadStore(database: try await openDatabase(directory.file("grid.db")), maxPayloadBytes: 8)
            let error = try await expectGridError(.payloadTooLarge) {
                try await store.put([PayloadItem(key: "ok", value: [1]), PayloadItem(key: "big", value: Array(repeating: 1, count: 9))])
            }
            #expect(error.backend == "sqlite")
            #expect(try await store.get(["ok", "big"]).isEmpty)
        }
    }
}
