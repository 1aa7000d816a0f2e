import CatalyzerImage
import Foundation
import Synchronization

/// Counters for one image name, served in `/.stats`. Updated by concurrent FUSE threads with
/// relaxed atomics: each counter is exact, a snapshot of several is not a single instant.
final class ImageStatistics: Sendable {
    /// FUSE reads of the image's memory file answered (successfully or not).
    let readsServed = Atomic<UInt64>(0)
    /// Bytes of memory returned to the kernel by those reads.
    let bytesReturned = Atomic<UInt64>(0)
    /// Chunk blobs read from the store (reads and prefetch).
    let blobsFetched = Atomic<UInt64>(0)
    /// Compressed bytes of those blobs (state and working-set blobs included).
    let bytesFetched = Atomic<UInt64>(0)
    /// Time spent decompressing chunks.
    let decompressionNanoseconds = Atomic<UInt64>(0)
    /// Chunks found already decompressed (in the cache, or being decompressed by another read).
    let cacheHits = Atomic<UInt64>(0)
    /// Chunks that were all zero and so cost no I/O.
    let zeroChunks = Atomic<UInt64>(0)
    /// Chunks pushed into the page cache by working-set prefetch.
    let prefetchedChunks = Atomic<UInt64>(0)
    /// Working-set pages put into the memory file's page cache (`WorkingSetStore`).
    let workingSetPagesStored = Atomic<UInt64>(0)
    /// Reads and prefetches that failed (corrupt or missing blobs).
    let errors = Atomic<UInt64>(0)

    struct Snapshot: Codable, Sendable, Equatable {
        var readsServed: UInt64
        var bytesReturned: UInt64
        var blobsFetched: UInt64
        var bytesFetched: UInt64
        var decompressionSeconds: Double
        var cacheHits: UInt64
        var zeroChunks: UInt64
        var prefetchedChunks: UInt64
        var workingSetPagesStored: UInt64
        var errors: UInt64
    }

    var snapshot: Snapshot {
        Snapshot(readsServed: readsServed.load(ordering: .relaxed),
                 bytesReturned: bytesReturned.load(ordering: .relaxed),
                 blobsFetched: blobsFetched.load(ordering: .relaxed),
                 bytesFetched: bytesFetched.load(ordering: .relaxed),
                 decompressionSeconds: Double(decompressionNanoseconds.load(ordering: .relaxed)) / 1e9,
                 cacheHits: cacheHits.load(ordering: .relaxed),
                 zeroChunks: zeroChunks.load(ordering: .relaxed),
                 prefetchedChunks: prefetchedChunks.load(ordering: .relaxed),
                 workingSetPagesStored: workingSetPagesStored.load(ordering: .relaxed),
                 errors: errors.load(ordering: .relaxed))
    }
}

/// Statistics per image name for the life of the mount. A name keeps its counters when the image
/// is replaced or removed, so `/.stats` never loses what was served.
final class StatisticsRegistry: Sendable {
    private let byName = Mutex<[String: ImageStatistics]>([:])

    func statistics(for name: String) -> ImageStatistics {
        byName.withLock { table in
            if let existing = table[name] { return existing }
            let created = ImageStatistics()
            table[name] = created
            return created
        }
    }

    /// The content of `/.stats`.
    struct Document: Codable, Sendable {
        var images: [String: ImageStatistics.Snapshot]
        var cache: ChunkCache.Usage
        /// Manifest digests of the image versions whose memory files are open (see `ImageLeases`).
        var inUse: [Digest]
    }

    func render(cache: ChunkCache.Usage, inUse: [Digest]) -> [UInt8] {
        let images = byName.withLock { $0 }.mapValues(\.snapshot)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        // Encoding plain numbers and strings cannot fail.
        return Array(try! encoder.encode(Document(images: images, cache: cache, inUse: inUse))) + [10]
    }
}
