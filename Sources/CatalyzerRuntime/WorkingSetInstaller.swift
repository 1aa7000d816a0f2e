import CatalyzerImage
import CatalyzerKVM
import CatalyzerKernel
import Dispatch
import Glibc
import Synchronization

/// What installing a page working set cost a restore.
public struct WorkingSetInstall: Sendable, Codable {
    public var pages: Int
    /// Compressed bytes read through the mount.
    public var blobBytes: Int
    /// From the start of the restore's install to the pages being in place, in microseconds:
    /// reading the blob, decoding its frames, installing the pages.
    public var readMicroseconds: Double
    public var installedMicroseconds: Double
}

/// Puts an image's page working set into a restoring sandbox's guest memory before its first
/// instruction, on other threads while the restore reads and decodes its state:
/// 1. reads the blob's header through the mount, then the rest in one read (catalyzerfs has
///    verified the blob against its digest and keeps it; so does the page cache);
/// 2. maps each run of pages as private anonymous memory over the image mapping, on one
///    thread, while the frames decode in parallel on the others;
/// 3. copies the decoded pages into place, in parallel.
///
/// Why anonymous pages: they are what a page of a private mapping becomes on its first write
/// anyway, copying them in reads nothing from the image file (a write fault on a private file
/// mapping would first read the file page through FUSE), and their host page-table entries are
/// present and writable, which KVM's shadow MMU needs to map up to 8 neighbouring guest pages on
/// a fault instead of one. Measured on hello (`bench startup`, KVM faults per restore): 1,068
/// without a working set, 531 with the touched pages installed; read-only host entries
/// (MADV_POPULATE_READ of the page cache) gave no reduction at all.
///
/// What it costs, measured on this (nested) host for hello's 690 pages in 344 runs: ~5 µs per
/// mmap, and ~2-3 µs for each fresh anonymous page's first touch, about what the shadow fault
/// it saves costs; pre-faulting the pages on the mapping thread (MAP_POPULATE) made it slower
/// (4.2 ms) than faulting them in the parallel copy. A warm path that copied pages already in
/// the page cache (MADV_POPULATE_WRITE) instead of decoding was tried and dropped: it costs the
/// same page allocations, and pages the guest unmapped and mapped again during the recording are
/// anonymous, never in the file's cache, so it rarely applied.
final class WorkingSetInstaller: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    // Written by the installing thread before `done` is signalled; read after `wait`.
    private var outcome: Result<WorkingSetInstall, RuntimeError>?

    /// Starts installing into `memory` the working set of the image version the mount serves;
    /// the caller must `wait()` before the guest runs.
    init(image: String, mount: CatalyzerMount, memory: GuestMemory, started: UInt64) {
        // Only this thread writes the memory until `wait` returns; the box keeps it mapped.
        let memory = UncheckedBox(memory)
        DispatchQueue.global(qos: .userInitiated).async { [self] in
            outcome = Result { () throws(RuntimeError) in
                try Self.install(image: image, mount: mount, memory: memory.value, started: started)
            }
            done.signal()
        }
    }

    /// Waits for the install; nil when the image has no page working set.
    func wait() throws -> WorkingSetInstall? {
        done.wait()
        done.signal()
        let install = try outcome!.get()
        return install.pages == 0 ? nil : install
    }

    private static func install(image: String, mount: CatalyzerMount, memory: GuestMemory,
                                started: UInt64) throws(RuntimeError) -> WorkingSetInstall {
        // The blob of the version whose memory is mapped: the mount serves both from one
        // directory inode, so a name moved on meanwhile cannot mix two versions.
        let path = mount.workingSetPath(image)
        // No blob holds more than every page of the memory plus its header and a codec's growth.
        let file = try BlobFile(path, limit: 2 * memory.size + (1 << 20), image: image, mount: mount)
        if file.size == 0 { return WorkingSetInstall(pages: 0, blobBytes: 0, readMicroseconds: 0, installedMicroseconds: 0) }
        // The header first (one read), so the runs are mapped while the frames are still on
        // their way; the frames are read in one go after it.
        let blob = UnsafeMutableRawBufferPointer.allocate(byteCount: file.size, alignment: 64)
        defer { blob.deallocate() }
        var have = try file.read(into: blob, from: 0, atLeast: min(file.size, headerProbe))
        guard let headerSize = PageWorkingSet.headerSize(startingWith: UnsafeRawBufferPointer(rebasing: blob[0..<have])), headerSize <= file.size else {
            throw unusable(image, path, "it is \(file.size) bytes, too short for the header it starts with")
        }
        if have < headerSize { have += try file.read(into: blob, from: have, atLeast: headerSize - have) }
        let pages: PageWorkingSet
        switch PageWorkingSet.decode(UnsafeRawBufferPointer(rebasing: blob[0..<headerSize]), blobSize: file.size, memorySize: Int64(memory.size)) {
        case let .success(set): pages = set
        case let .failure(problem): throw unusable(image, path, problem.description)
        }
        let mapping = Mapping(pages, memory: memory)
        defer { mapping.wait() }  // never leave a mapper running on memory the caller may free
        if have < file.size { have += try file.read(into: blob, from: have, atLeast: file.size - have) }
        let read = Sandbox.monotonicNanoseconds()

        let failure = Mutex<String?>(nil)
        let decoded = pages.frames.map { UnsafeMutableRawBufferPointer.allocate(byteCount: $0.pages * PageWorkingSet.pageSize, alignment: PageWorkingSet.pageSize) }
        defer { for buffer in decoded { buffer.deallocate() } }
        let shared = UncheckedBox((UnsafeRawBufferPointer(blob), decoded))
        DispatchQueue.concurrentPerform(iterations: pages.frames.count) { index in
            let (blob, decoded) = shared.value
            if let problem = decodeFrame(index, of: pages, blob: blob, into: decoded[index]) {
                failure.withLock { $0 = $0 ?? problem }
            }
        }
        if let problem = failure.withLock({ $0 }) { throw unusable(image, path, problem) }
        if let problem = mapping.wait() {
            throw RuntimeError("image '\(image)': its working set cannot be installed: \(problem)")
        }
        let target = UncheckedBox(memory)
        DispatchQueue.concurrentPerform(iterations: pages.frames.count) { index in
            let decoded = shared.value.1
            for segment in pages.segments(ofFrame: index) {
                (target.value.base + Int(segment.firstPage) * PageWorkingSet.pageSize)
                    .copyMemory(from: decoded[index].baseAddress! + segment.pageInFrame * PageWorkingSet.pageSize,
                                byteCount: segment.count * PageWorkingSet.pageSize)
            }
        }
        let installed = Sandbox.monotonicNanoseconds()
        return WorkingSetInstall(pages: pages.pageCount, blobBytes: file.size,
                                 readMicroseconds: Double(read &- started) / 1000, installedMicroseconds: Double(installed &- started) / 1000)
    }

    /// Bytes read first: enough for the header of any working set of a few thousand runs.
    private static let headerProbe = 64 << 10

    private static func unusable(_ image: String, _ path: String, _ problem: String) -> RuntimeError {
        RuntimeError("image '\(image)': its working set \(path) is not usable: \(problem); check the image with `catalyzer image verify \(image)`")
    }

    /// The runs mapped as anonymous memory on a thread of their own.
    private final class Mapping: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        // Written by the mapping thread before `done` is signalled.
        private var problem: String?
        private var finished = false

        init(_ pages: PageWorkingSet, memory: GuestMemory) {
            let memory = UncheckedBox(memory)
            DispatchQueue.global(qos: .userInitiated).async { [self] in
                problem = WorkingSetInstaller.mapRuns(of: pages, memory: memory.value)
                done.signal()
            }
        }

        /// Waits for the mapping (once; later calls return the same answer).
        @discardableResult
        func wait() -> String? {
            if !finished {
                done.wait()
                finished = true
            }
            return problem
        }
    }

    /// Maps every run as fresh anonymous memory, in one pass on one thread: each mmap takes the
    /// process's mmap lock for writing, and spread over the decoding threads they queued behind
    /// each other and behind the faults of the state restore (~10x slower, measured).
    fileprivate static func mapRuns(of pages: PageWorkingSet, memory: GuestMemory) -> String? {
        for run in pages.runs {
            let target = memory.base + Int(run.firstPage) * PageWorkingSet.pageSize, length = run.count * PageWorkingSet.pageSize
            let mapped = mmap(target, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0)
            guard mapped == target else { return "mapping \(run.count) pages at page \(run.firstPage) failed: \(String(cString: strerror(errno)))" }
        }
        return nil
    }

    /// Decodes frame `index` into `output`; a sentence on failure.
    private static func decodeFrame(_ index: Int, of pages: PageWorkingSet, blob: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> String? {
        let frame = pages.frames[index], start = pages.headerSize + Int(frame.offset)
        do throws(CodecError) {
            try pages.codec.decompress(UnsafeRawBufferPointer(rebasing: blob[start..<(start + frame.size)]), into: output)
        } catch {
            return "frame \(index) does not decode: \(error)"
        }
        return nil
    }

    /// A file of the mount, open for reading, with its size as the mount states it.
    private struct BlobFile: ~Copyable {
        let fd: Int32
        let size: Int
        let path: String, image: String, mount: CatalyzerMount

        init(_ path: String, limit: Int, image: String, mount: CatalyzerMount) throws(RuntimeError) {
            fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw WorkingSetInstaller.failure(errno, reading: "working set", path: path, image: image, mount: mount) }
            var status = stat()
            guard fstat(fd, &status) == 0 else {
                let code = errno
                close(fd)
                throw WorkingSetInstaller.failure(code, reading: "working set", path: path, image: image, mount: mount)
            }
            // The size sizes a buffer: one past what any working set of this memory can be is
            // refused first.
            guard status.st_size >= 0, status.st_size <= limit else {
                close(fd)
                throw RuntimeError("image '\(image)': its working set \(path) claims \(status.st_size) bytes, more than a working set of its memory can hold; check the image with `catalyzer image verify \(image)`")
            }
            size = Int(status.st_size)
            self.path = path
            self.image = image
            self.mount = mount
        }

        deinit { close(fd) }

        /// Reads at least `count` bytes into `buffer` at `offset` (more if they come in the same
        /// reads, up to the buffer's end); returns how many.
        func read(into buffer: UnsafeMutableRawBufferPointer, from offset: Int, atLeast count: Int) throws(RuntimeError) -> Int {
            var done = 0
            while done < count {
                let got = pread(fd, buffer.baseAddress! + offset + done, buffer.count - offset - done, off_t(offset + done))
                if got < 0 && errno == EINTR { continue }
                guard got >= 0 else { throw WorkingSetInstaller.failure(errno, reading: "working set", path: path, image: image, mount: mount) }
                guard got > 0 else {
                    throw RuntimeError("image '\(image)': its working set \(path) ended after \(offset + done) of its \(size) bytes; check the image with `catalyzer image verify \(image)`")
                }
                done += got
            }
            return done
        }
    }

    fileprivate static func failure(_ code: Int32, reading what: String, path: String, image: String, mount: CatalyzerMount) -> RuntimeError {
        if code == ENOTCONN || code == ECONNABORTED {
            return RuntimeError("image '\(image)': cannot read its \(what) \(path): \(RestoredSandbox.daemonGone(mount))")
        }
        return RuntimeError("image '\(image)': cannot read its \(what) \(path): \(String(cString: strerror(code)))"
                            + (code == EIO ? " (catalyzerfs could not serve it: a corrupt or missing blob; its log names it): check the image with `catalyzer image verify \(image)`" : ""))
    }
}

/// Hands values to `concurrentPerform` workers that only read them or touch disjoint parts.
struct UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
