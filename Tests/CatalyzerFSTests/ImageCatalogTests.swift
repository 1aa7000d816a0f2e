import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Testing
@testable import CatalyzerFS

/// The catalog without a mount: store changes, and versions kept exactly as long as needed.
@Suite("image catalog")
struct ImageCatalogTests {
    @Test("a replaced or removed version stays while the kernel holds it, and goes when forgotten")
    func versionLifetime() throws {
        let directory = try TemporaryDirectory("fs-catalog")
        defer { directory.remove() }
        let store = ImageStore(root: directory.file("store"))
        func create(_ seed: UInt64) throws {
            let source = directory.file("memory-\(seed)")
            try Data(TestMemory.bytes(size: 100_000, seed: seed)).write(to: URL(fileURLWithPath: source))
            _ = try store.createImage(named: "fn", fromFile: source)
        }
        let catalog = ImageCatalog(store: store, registry: StatisticsRegistry())
        #expect(try catalog.listing().isEmpty)

        try create(1)
        let first = try #require(try catalog.node(named: "fn"))
        catalog.remember(first)
        #expect(try catalog.node(named: "fn") === first)
        #expect(try catalog.listing().map(\.inode) == [first.directoryInode])

        try create(2)
        let second = try #require(try catalog.node(named: "fn"))
        #expect(second !== first && second.directoryInode != first.directoryInode)
        #expect(catalog.node(slot: first.slot) === first, "the kernel still holds the replaced version")
        catalog.forget(slot: first.slot, count: 1)
        #expect(catalog.node(slot: first.slot) == nil, "a forgotten, replaced version is dropped")
        #expect(catalog.node(slot: second.slot) === second, "the current version stays without lookups")

        try store.remove("fn")
        #expect(try catalog.listing().isEmpty)
        #expect(catalog.node(slot: second.slot) == nil)
        #expect(try catalog.node(named: "fn") == nil)
    }
}
