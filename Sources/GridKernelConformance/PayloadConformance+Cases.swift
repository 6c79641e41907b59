import GridKernel

extension PayloadConformance {
    /// The cases, one function each, against one fresh store.
    struct Cases: Sendable {
        let store: any PayloadStore
        /// Keys are made from this session's task ids; it holds `.`, `:` and `-`, as session ids may.
        let session: SessionID

        func roundTripEmptyOneByteAndEightMiB() async throws {
            let large = min(8 * 1_024 * 1_024, store.maxPayloadBytes ?? .max)
            let values: [(key: String, value: [UInt8])] = [
                (key(0), []),
                (key(1), [42]),
                (key(2), pattern(large)),
            ]
            for (key, value) in values {
                try await store.put(key, value)
            }
            for (key, value) in values {
                let read = try await store.get(key)
                try expect(read == value, "value under \(key) read back: \(read.count) bytes, expected \(value.count)")
            }
            let batch = try await store.get(values.map(\.key))
            try expectEqual(batch[key(0)], [], "an empty value exists and reads back empty")
            try expectEqual(batch[key(1)], [42], "a one-byte value")
            try expect(batch[key(2)] == values[2].value, "a \(ByteCount(large)) value read back in a batch")
        }

        func batchPutGet() async throws {
            let items = (0..<100).map { index in
                PayloadItem(key: index.isMultiple(of: 2) ? key(index) : outputKey(index), value: pattern(index * 37, seed: index))
            }
            try await store.put(items)
            let read = try await store.get(items.map(\.key) + [key(1_000), key(1_001)])
            try expectEqual(read.count, items.count, "values read back in one batch (two keys missing)")
            for item in items {
                try expect(read[item.key] == item.value, "value under \(item.key): \(read[item.key]?.count ?? -1) bytes, expected \(item.value.count)")
            }
            try expectEqual(try await store.get([String]()), [:], "reading no keys")
        }

        func missingKeysAbsent() async throws {
            try await store.put(key(0), [1])
            let read = try await store.get([key(0), key(1), key(2)])
            try expectEqual(read, [key(0): [1]], "a batch read of one present and two missing keys")
            try await expectThrows(code: .notFound, "reading a missing key alone") {
                try await store.get(key(1))
            }
        }

        func deleteRemoves() async throws {
            try await store.put([PayloadItem(key: key(0), value: [0]), PayloadItem(key: key(1), value: [1]), PayloadItem(key: key(2), value: [2])])
            try await store.delete([key(0), key(2), key(99)])
            try expectEqual(
                try await store.get([key(0), key(1), key(2)]), [key(1): [1]], "values left after deleting two of three and a missing key"
            )
            try await store.delete([key(0)])
            try await store.delete([])
            try await expectThrows(code: .notFound, "reading a deleted key") {
                try await store.get(key(0))
            }
        }

        func overwriteReplaces() async throws {
            try await store.put(key(0), [1, 2, 3])
            try await store.put(key(0), [9])
            try expectEqual(try await store.get(key(0)), [9], "a value replaced by a shorter one")
            let longer = pattern(10_000)
            try await store.put([PayloadItem(key: key(0), value: longer), PayloadItem(key: key(1), value: [7])])
            try expect(try await store.get(key(0)) == longer, "a value replaced by a longer one in a batch")
            try await store.put(key(0), [])
            try expectEqual(try await store.get(key(0)), [], "a value replaced by an empty one")
        }

        func sizeLimitEnforced() async throws {
            guard let limit = store.maxPayloadBytes, limit <= 64 * 1_024 * 1_024 else { return }
            try await store.put(key(0), [1])
            let batch = [
                PayloadItem(key: key(0), value: [2]),
                PayloadItem(key: key(1), value: pattern(limit + 1)),
                PayloadItem(key: key(2), value: [3]),
            ]
            try await expectThrows(code: .payloadTooLarge, "storing \(ByteCount(limit + 1)) with a limit of \(ByteCount(limit))") {
                try await store.put(batch)
            }
            try expectEqual(
                try await store.get([key(0), key(1), key(2)]), [key(0): [1]], "values after a refused batch (nothing of it stored)"
            )
            let atLimit = pattern(limit)
            try await store.put(key(3), atLimit)
            try expect(try await store.get(key(3)) == atLimit, "a value of exactly the limit is stored")
        }

        // MARK: Helpers

        private func key(_ index: Int) -> String { PayloadKey.input(TaskID(session: session, index: index)) }
        private func outputKey(_ index: Int) -> String { PayloadKey.output(TaskID(session: session, index: index)) }

        /// `count` bytes that are not all alike, so a truncated or shifted value is noticed. Built by
        /// doubling a 251-byte block (a prime length), which stays fast in debug builds.
        private func pattern(_ count: Int, seed: Int = 0) -> [UInt8] {
            var bytes = (0..<Swift.min(count, 251)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed) }
            bytes.reserveCapacity(count)
            while bytes.count < count {
                bytes.append(contentsOf: bytes[..<Swift.min(bytes.count, count - bytes.count)])
            }
            return bytes
        }
    }
}
