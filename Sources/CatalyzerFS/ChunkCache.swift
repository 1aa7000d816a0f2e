import CatalyzerImage
import Dispatch
import Synchronization

/// One chunk of guest memory, decompressed. Immutable once made; a read holds a reference while
/// the kernel copies from it, so eviction never frees bytes in use.
final class DecompressedChunk: @unchecked Sendable {
    let bytes: UnsafeRawBufferPointer

    /// Allocates `length` bytes, lets `fill` write them, and keeps them if it succeeds.
    init(length: Int, fill: (UnsafeMutableRawBufferPointer) throws(ImageError) -> Void) throws(ImageError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 4096)
        do {
            try fill(buffer)
        } catch {
            buffer.deallocate()
            throw error
        }
        bytes = UnsafeRawBufferPointer(buffer)
    }

    deinit { bytes.deallocate() }
}

/// A bounded cache of decompressed chunks, keyed by blob digest and codec: chunks that identical
/// content shares across images are decompressed and held once.
///
/// Loads are single-flight: when several FUSE threads want the same missing chunk, one fetches and
/// decompresses it and the others wait for that result. Failed loads are not kept, so a later read
/// tries again (and fails again, with EIO, if the blob is still corrupt).
///
/// Eviction is least-recently-used by a scan of the entries. A scan of ~1000 entries costs a few
/// microseconds and happens only on a miss, which costs a blob read and a decompression of
/// hundreds of microseconds, so a linked list would buy nothing measurable.
final class ChunkCache: Sendable {
    /// A load in progress that other readers of the same chunk wait for.
    private final class Flight: Sendable {
        let done = DispatchSemaphore(value: 0)
        let waiters = Atomic<Int>(0)
        let result = Mutex<Result<DecompressedChunk, ImageError>?>(nil)
    }

    struct Key: Hashable, Sendable {
        var digest: Digest
        var codec: Codec
    }

    private enum Slot {
        case ready(DecompressedChunk, lastUse: UInt64)
        case loading(Flight)
    }

    private struct State {
        var slots: [Key: Slot] = [:]
        var usedBytes: Int64 = 0
        var clock: UInt64 = 0
    }

    /// Where a chunk came from, for the statistics.
    enum Origin { case cache, load }

    struct Usage: Codable, Sendable {
        var capacityBytes: Int64
        var usedBytes: Int64
        var chunks: Int
    }

    let capacity: Int64
    private let state = Mutex(State())

    init(capacity: Int64) { self.capacity = capacity }

    /// The chunk stored as `key`, from the cache, from a load another thread has in flight, or
    /// made by `load` on this thread.
    func chunk(_ key: Key, load: () throws(ImageError) -> DecompressedChunk) throws(ImageError) -> (DecompressedChunk, Origin) {
        enum Next { case hit(DecompressedChunk), wait(Flight), load(Flight) }
        let next: Next = state.withLock { state in
            state.clock += 1
            switch state.slots[key] {
            case let .ready(chunk, _)?:
                state.slots[key] = .ready(chunk, lastUse: state.clock)
                return .hit(chunk)
            case let .loading(flight)?:
                flight.waiters.add(1, ordering: .relaxed)
                return .wait(flight)
            case nil:
                let flight = Flight()
                state.slots[key] = .loading(flight)
                return .load(flight)
            }
        }
        switch next {
        case let .hit(chunk):
            return (chunk, .cache)
        case let .wait(flight):
            flight.done.wait()
            let result = flight.result.withLock { $0! }
            return (try result.get(), .cache)
        case let .load(flight):
            let result = Result { () throws(ImageError) in try load() }
            state.withLock { state in
                state.slots[key] = nil
                if case let .success(chunk) = result, Int64(chunk.bytes.count) <= capacity {
                    state.slots[key] = .ready(chunk, lastUse: state.clock)
                    state.usedBytes += Int64(chunk.bytes.count)
                    Self.evict(&state, toFit: capacity)
                }
            }
            flight.result.withLock { $0 = result }
            for _ in 0..<flight.waiters.load(ordering: .relaxed) { flight.done.signal() }
            return (try result.get(), .load)
        }
    }

    /// Drops least-recently-used chunks until the ready ones fit in `capacity`.
    private static func evict(_ state: inout State, toFit capacity: Int64) {
        while state.usedBytes > capacity {
            var oldest: (key: Key, lastUse: UInt64, bytes: Int)?
            for (key, slot) in state.slots {
                if case let .ready(chunk, lastUse) = slot, lastUse < oldest?.lastUse ?? .max {
                    oldest = (key, lastUse, chunk.bytes.count)
                }
            }
            guard let oldest else { return }
            state.slots[oldest.key] = nil
            state.usedBytes -= Int64(oldest.bytes)
        }
    }

    var usage: Usage {
        state.withLock { state in
            Usage(capacityBytes: capacity, usedBytes: state.usedBytes,
                  chunks: state.slots.values.filter { if case .ready = $0 { true } else { false } }.count)
        }
    }
}
