import GridKernel
extension Sequence where Element: Sendable {
    /// Maps with at most `width` calls in flight; results in input order.
    ///
    /// Per-item AWS calls (conditional writes, object reads) run this way: a batch of a thousand
    /// tasks takes the time of a thousand / `width` round trips without opening a thousand connections.
    func concurrentMap<Result: Sendable>(
        width: Int, _ transform: @escaping @Sendable (Element) async throws -> Result
    ) async throws -> [Result] {
        let items = Array(self)
        guard !items.isEmpty else { return [] }
        return try await withThrowingTaskGroup(of: (Int, Result).self) { group in
            var results = [Result?](repeating: nil, count: items.count)
            var next = 0
            for _ in 0..<Swift.min(width, items.count) {
                let index = next
                group.addTask { (index, try await transform(items[index])) }
                next += 1
            }
            while let (index, result) = try await group.next() {
                results[index] = result
                if next < items.count {
                    let index = next
                    group.addTask { (index, try await transform(items[index])) }
                    next += 1
                }
            }
            return results.map { $0! }
        }
    }
}
