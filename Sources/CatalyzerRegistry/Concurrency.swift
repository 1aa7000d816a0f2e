/// Runs `body` for every item, at most `limit` at a time. The first error cancels the rest and
/// is thrown once they have stopped.
func forEachConcurrently<Item: Sendable>(_ items: [Item], limit: Int, _ body: @escaping @Sendable (Item) async throws -> Void) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        var iterator = items.makeIterator()
        for _ in 0..<max(limit, 1) {
            guard let item = iterator.next() else { break }
            group.addTask { try await body(item) }
        }
        while try await group.next() != nil {
            if let item = iterator.next() { group.addTask { try await body(item) } }
        }
    }
}
