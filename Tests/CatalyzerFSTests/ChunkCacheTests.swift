import CatalyzerImage
import Dispatch
import Glibc
import Synchronization
import Testing
@testable import CatalyzerFS

/// The decompressed-chunk cache on its own: single-flight loads, eviction, failures.
@Suite("chunk cache")
struct ChunkCacheTests {
    static func key(_ byte: UInt8) -> ChunkCache.Key {
        ChunkCache.Key(digest: Digest(of: [byte]), codec: .zstd)
    }

    static func chunk(_ byte: UInt8, length: Int = 4096) throws(ImageError) -> DecompressedChunk {
        try DecompressedChunk(length: length) { $0.initializeMemory(as: UInt8.self, repeating: byte) }
    }

    @Test("concurrent readers of one missing chunk load it once")
    func singleFlight() throws {
        let cache = ChunkCache(capacity: 1 << 20)
        let loads = Atomic<Int>(0)
        let hits = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 16) { _ in
            let (chunk, origin) = try! cache.chunk(Self.key(1)) { () throws(ImageError) in
                loads.add(1, ordering: .relaxed)
                usleep(50_000)  // long enough for every other reader to arrive and wait
                return try Self.chunk(1)
            }
            #expect(chunk.bytes.allSatisfy { $0 == 1 })
            if origin == .cache { hits.add(1, ordering: .relaxed) }
        }
        #expect(loads.load(ordering: .relaxed) == 1)
        #expect(hits.load(ordering: .relaxed) == 15)
    }

    @Test("the least recently used chunks are evicted to stay within capacity")
    func eviction() throws {
        let cache = ChunkCache(capacity: 3 * 4096)
        var loads = 0
        func get(_ byte: UInt8) throws -> ChunkCache.Origin {
            try cache.chunk(Self.key(byte)) { () throws(ImageError) in
                loads += 1
                return try Self.chunk(byte)
            }.1
        }
        for byte: UInt8 in [1, 2, 3] { #expect(try get(byte) == .load) }
        #expect(try get(1) == .cache)  // 1 is now the most recent; 2 the least
        #expect(try get(4) == .load)   // evicts 2
        #expect(cache.usage.usedBytes == 3 * 4096 && cache.usage.chunks == 3)
        #expect(try get(1) == .cache && get(3) == .cache && get(4) == .cache)
        #expect(try get(2) == .load)
        #expect(loads == 5)
    }

    @Test("failed loads are reported to every waiter and not kept; a zero-size cache keeps nothing")
    func failuresAndZeroCapacity() throws {
        let cache = ChunkCache(capacity: 0)
        let failure = ImageError.invalidInput("corrupt")
        #expect(throws: ImageError.self) {
            try cache.chunk(Self.key(9)) { () throws(ImageError) in throw failure }
        }
        let (_, first) = try cache.chunk(Self.key(9)) { () throws(ImageError) in try Self.chunk(9) }
        let (_, second) = try cache.chunk(Self.key(9)) { () throws(ImageError) in try Self.chunk(9) }
        #expect(first == .load && second == .load)
        #expect(cache.usage.usedBytes == 0)
    }
}
