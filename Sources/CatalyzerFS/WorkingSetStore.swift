import CFuse3
import CatalyzerImage
import Dispatch
import Glibc
import Synchronization

/// Puts an image's page working set into the page cache of its `memory` file, once per image
/// version and mount, when a restore first opens `working-set`: the frames of the (verified)
/// blob are decoded and each run is handed to the kernel with `fuse_lowlevel_notify_store`,
/// before the open is answered. The restore then makes its private copies of those pages from
/// the page cache (MADV_POPULATE_WRITE) with no FUSE read, and every later restore on this
/// mount finds them there already.
///
/// Why the page cache rather than the monitor's own anonymous pages: measured on this host for
/// hello's ~690 pages in ~340 runs, copying runs out of the page cache costs ~2 ms on one
/// thread, against ~2.2 ms of mmaps plus ~1.4 ms of first touches (and the decode) for
/// anonymous runs, and a warm restore skips the decode and the store altogether.
enum WorkingSetStore {
    /// What became of a store.
    enum Outcome {
        case stored
        /// The kernel holds no inode for `memory` (nobody has it open): try again next open.
        case memoryNotOpen
        case failed(String)
    }

    /// Stores the working set in `blob` for `node`. Callers serialize per node
    /// (`ImageNode.workingSetStored`).
    static func store(_ blob: [UInt8], node: ImageNode, session: SessionHandle) -> Outcome {
        let decoded = blob.withUnsafeBytes { PageWorkingSet.decode($0, memorySize: node.image.config.memorySize) }
        let pages: PageWorkingSet
        switch decoded {
        case let .success(set): pages = set
        case let .failure(problem): return .failed("its header is not usable: \(problem)")
        }
        // Two workers (the daemon's other threads keep serving): each decodes and stores a
        // contiguous share of the frames; the kernel takes notifications from any thread.
        let workers = min(2, pages.frames.count)
        let failure = Mutex<String?>(nil)
        let forgotten = Atomic<Bool>(false)
        let shared = UncheckedSendable((blob, pages.segmentsByFrame()))
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            let frames = pages.frames.count
            let share = (frames * worker / workers)..<(frames * (worker + 1) / workers)
            let (blob, segments) = shared.value
            if let problem = store(share, of: pages, segments: segments, blob: blob, node: node, session: session, forgotten: forgotten) {
                failure.withLock { $0 = $0 ?? problem }
            }
        }
        if let problem = failure.withLock({ $0 }) { return .failed(problem) }
        if forgotten.load(ordering: .relaxed) { return .memoryNotOpen }
        node.statistics.workingSetPagesStored.add(UInt64(pages.pageCount), ordering: .relaxed)
        return .stored
    }

    /// Decodes and stores frames `share`; a sentence on failure.
    private static func store(_ share: Range<Int>, of pages: PageWorkingSet, segments: [[PageWorkingSet.Segment]], blob: [UInt8],
                              node: ImageNode, session: SessionHandle, forgotten: borrowing Atomic<Bool>) -> String? {
        let pageSize = PageWorkingSet.pageSize
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: PageWorkingSet.maximumFramePages * pageSize, alignment: pageSize)
        defer { buffer.deallocate() }
        for index in share {
            if forgotten.load(ordering: .relaxed) { return nil }
            let output = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<(pages.frames[index].pages * pageSize)])
            let result = blob.withUnsafeBytes { raw in Result { () throws(CodecError) in try pages.decodeFrame(index, of: raw, into: output) } }
            if case let .failure(error) = result { return "frame \(index) does not decode: \(error)" }
            for segment in segments[index] {
                let status = catalyzerfs_notify_store(session.pointer, node.inode(.memory), off_t(segment.firstPage) * off_t(pageSize),
                                                      output.baseAddress! + segment.pageInFrame * pageSize, segment.count * pageSize)
                // The kernel forgot the memory inode: nobody maps it, nothing to store for.
                if status == -ENOENT {
                    forgotten.store(true, ordering: .relaxed)
                    return nil
                }
                if status < 0 { return "notify_store of page \(segment.firstPage) failed: \(String(cString: strerror(-status)))" }
            }
        }
        return nil
    }
}
