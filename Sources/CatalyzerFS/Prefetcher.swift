import CFuse3
import CatalyzerImage
import Dispatch
import Glibc
import Synchronization

/// The FUSE session pointer, handed to the prefetch thread. libfuse allows notifications from
/// any thread while the session lives; `Prefetcher.stop()` runs before it is destroyed.
struct SessionHandle: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// Working-set prefetch: after an image's memory file is first opened, pushes the chunks its
/// manifest lists as the working set into the kernel's page cache with
/// `fuse_lowlevel_notify_store`, in the background and in touch order, so the restored sandbox
/// finds them there instead of faulting them in one by one.
final class Prefetcher: Sendable {
    private let queue = DispatchQueue(label: "catalyzerfs.prefetch", qos: .utility)
    private let running = DispatchGroup()
    private let stopped = Atomic<Bool>(false)
    private let reader: MemoryReader
    private let log: Log

    /// Largest single notification: bigger chunks are pushed in pieces.
    private static let pieceSize = 1 << 20

    init(reader: MemoryReader, log: Log) {
        self.reader = reader
        self.log = log
    }

    /// Queues the working set of `node`, once per image version. Not for an image with a page
    /// working set: every restore installs those pages from that blob, so pushing whole chunks as
    /// well would only take CPU from the restore (and, for a lazy image, fetch from the registry
    /// chunks no restore asked for).
    func start(_ node: ImageNode, session: SessionHandle) {
        guard node.image.config.pageWorkingSet == nil,
              let workingSet = node.image.config.workingSet, !workingSet.isEmpty,
              !stopped.load(ordering: .relaxed),
              !node.prefetchStarted.exchange(true, ordering: .relaxed) else { return }
        queue.async(group: running) { [self] in push(node, chunks: workingSet, session: session) }
    }

    private func push(_ node: ImageNode, chunks: [Int], session: SessionHandle) {
        var seen = Set<Int>()
        let config = node.image.config
        for index in chunks where seen.insert(index).inserted {
            if stopped.load(ordering: .relaxed) { return }
            let chunk: DecompressedChunk?
            do { chunk = try reader.chunk(node, index) } catch { continue }
            let base = chunk?.bytes.baseAddress ?? reader.zeros.bytes.baseAddress!
            let length = config.chunkLength(index)
            var done = 0
            while done < length {
                let count = min(length - done, chunk == nil ? reader.zeros.bytes.count : Self.pieceSize)
                let offset = Int64(index) * Int64(config.chunkSize) + Int64(done)
                let status = catalyzerfs_notify_store(session.pointer, node.inode(.memory), off_t(offset), base + (chunk == nil ? 0 : done), count)
                if status == -ENOENT { return }  // the kernel forgot the inode: nobody to prefetch for
                if status < 0 {
                    log.write("prefetch: image '\(node.image.name)' chunk \(index): notify_store failed: \(String(cString: strerror(-status)))")
                    return
                }
                done += count
            }
            withExtendedLifetime(chunk) {}
            node.statistics.prefetchedChunks.add(1, ordering: .relaxed)
        }
    }

    /// Stops queued and running prefetches and waits for them; called before the session ends.
    func stop() {
        stopped.store(true, ordering: .relaxed)
        running.wait()
    }
}
