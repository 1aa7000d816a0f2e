import CatalyzerImage
import CatalyzerKVM
import CatalyzerKernel
import Dispatch
import Glibc
import Synchronization

/// What installing a page working set cost a restore.
public struct WorkingSetInstall: Sendable, Codable {
    public var pages: Int
    /// Bytes of the blob read through the mount: its header (the pages come from the page cache).
    public var blobBytes: Int
    /// From the memory mapped to the header read (catalyzerfs has put the pages into the page
    /// cache by then), and to every page copied into place, in microseconds.
    public var readMicroseconds: Double
    public var installedMicroseconds: Double
}

/// Puts an image's page working set into a restoring sandbox's guest memory before its first
/// instruction, on another thread while the restore reads and decodes its state:
/// 1. opens `working-set` on the mount; catalyzerfs answers once the pages are in the memory
///    file's page cache (`WorkingSetStore`: decoded from the verified blob, once per mount);
/// 2. reads the blob's header, the list of page runs;
/// 3. faults every run in as if written (MADV_POPULATE_WRITE), two threads at a time: private,
///    writable copies of the cached pages, exactly what the guest's first writes would make.
///
/// Why private writable pages: their host page-table entries are present and writable, which
/// KVM's shadow MMU needs to map up to 8 neighbouring guest pages on a fault instead of one.
/// Measured on hello (`bench startup`, KVM faults per restore): 1,068 without a working set,
/// ~530 with the touched pages installed; read-only host entries (MADV_POPULATE_READ of the
/// page cache) gave no reduction at all.
///
/// What was measured to choose this (hello, ~690 pages in ~340 runs, this nested host): fresh
/// anonymous runs mapped over the image mapping cost ~6 µs per mmap plus ~2 µs per page's first
/// touch, plus the decode, ~4 ms after the blob was read (warm restore 8.6 ms); copying from the
/// page cache costs ~2 ms on one thread, and a warm restore needs no decode at all (5.8 ms).
final class WorkingSetInstaller: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    // Written by the installing thread before `done` is signalled; read after `wait`.
    private var outcome: Result<WorkingSetInstall, RuntimeError>?

    /// Starts installing into `memory` the working set of the image version the mount serves;
    /// the caller must `wait()` before the guest runs.
    init(image: String, mount: CatalyzerMount, memory: GuestMemory, started: UInt64) {
        // Only this thread writes the memory until `wait` returns; the box keeps it mapped.
        let memory = UncheckedSendable(memory)
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
        // Opening it has put its pages into the memory file's page cache (catalyzerfs's
        // WorkingSetStore, once per mount); only the header, the list of runs, is read here.
        var header = try file.read(min(file.size, headerProbe), at: 0)
        guard let headerSize = header.withUnsafeBytes({ PageWorkingSet.headerSize(startingWith: $0) }), headerSize <= file.size else {
            throw unusable(image, path, "it is \(file.size) bytes, too short for the header it starts with")
        }
        if header.count < headerSize { header += try file.read(headerSize - header.count, at: header.count) }
        let pages: PageWorkingSet
        switch header.withUnsafeBytes({ PageWorkingSet.decode(UnsafeRawBufferPointer(rebasing: $0[0..<headerSize]), blobSize: file.size, memorySize: Int64(memory.size)) }) {
        case let .success(set): pages = set
        case let .failure(problem): throw unusable(image, path, problem.description)
        }
        let read = Sandbox.monotonicNanoseconds()

        // Each run faulted in as if written: private, writable copies of the cached pages.
        let failure = Mutex<String?>(nil)
        let workers = min(max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))), pages.runs.count)
        let base = UncheckedSendable(memory.base)
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            let runs = pages.runs
            for run in runs[(runs.count * worker / workers)..<(runs.count * (worker + 1) / workers)] {
                let start = base.value + Int(run.firstPage) * PageWorkingSet.pageSize
                if madvise(start, run.count * PageWorkingSet.pageSize, GuestMemory.populateWrite) != 0 {
                    let code = errno
                    failure.withLock { $0 = $0 ?? "copying \(run.count) pages at page \(run.firstPage) failed: \(String(cString: strerror(code)))" }
                    return
                }
            }
        }
        if let problem = failure.withLock({ $0 }) {
            throw RuntimeError("image '\(image)': its working set cannot be installed: \(problem) (a page catalyzerfs could not serve; check the image with `catalyzer image verify \(image)`)")
        }
        let installed = Sandbox.monotonicNanoseconds()
        return WorkingSetInstall(pages: pages.pageCount, blobBytes: header.count,
                                 readMicroseconds: Double(read &- started) / 1000, installedMicroseconds: Double(installed &- started) / 1000)
    }

    /// Bytes read first: enough for the header of any working set of a few thousand runs.
    private static let headerProbe = 64 << 10

    private static func unusable(_ image: String, _ path: String, _ problem: String) -> RuntimeError {
        RuntimeError("image '\(image)': its working set \(path) is not usable: \(problem); check the image with `catalyzer image verify \(image)`")
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

        /// Exactly `count` bytes from `offset`.
        func read(_ count: Int, at offset: Int) throws(RuntimeError) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: count)
            var done = 0
            while done < count {
                let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
                if got < 0 && errno == EINTR { continue }
                guard got >= 0 else { throw WorkingSetInstaller.failure(errno, reading: "working set", path: path, image: image, mount: mount) }
                guard got > 0 else {
                    throw RuntimeError("image '\(image)': its working set \(path) ended after \(offset + done) of its \(size) bytes; check the image with `catalyzer image verify \(image)`")
                }
                done += got
            }
            return bytes
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
