import CKVM
import CatalyzerImage
import CatalyzerKVM
import CatalyzerKernel
import Glibc

/// A sandbox resumed from an image's checkpoint without running any initialization: its guest
/// memory is the image's `memory` file on a catalyzerfs mount, mapped privately so pages arrive
/// on first touch and writes stay in this sandbox; vCPU and kernel state come from `state`.
///
/// The memory file stays open while the sandbox lives: catalyzerfs drops the page cache of an
/// inode nobody holds, and that cache is what concurrent and later restores share. A page that
/// catalyzerfs cannot serve (corrupt or missing chunk) stops the invocation with an error naming
/// the chunk; the program never runs on memory that was not verified.
public final class RestoredSandbox {
    public let image: String
    public let kernel: Sandbox
    public let memory: GuestMemory
    /// The image's chunk size, for reporting and the working set.
    public let chunkSize: Int
    /// CLOCK_MONOTONIC nanoseconds when the memory was mapped and when the state was restored.
    public let memoryMappedAt: UInt64
    public let stateRestoredAt: UInt64
    /// The page working set installed before the guest ran (nil: the image has none).
    public let workingSet: WorkingSetInstall?
    private let guardSlot: Int32
    private let mount: CatalyzerMount

    /// `recordsWorkingSet` restores for recording a working set: no working set is installed,
    /// so every page the guest touches comes through the image mapping, and only touched pages
    /// get host page-table entries (see `touchedPages`).
    public init(image: String, mount: CatalyzerMount, store: ImageStore, options: RestoreOptions, kvm: KVM? = nil,
                recordsWorkingSet: Bool = false) throws {
        self.image = image
        self.mount = mount
        let memoryPath = mount.memoryPath(image)
        let fd = open(memoryPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            throw Self.diagnoseMissing(image: image, path: memoryPath, errno: code, mount: mount, store: store)
        }
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_size > 0, status.st_size % Int(GuestMemory.pageSize) == 0 else {
            close(fd)
            if status.st_size > 0 {
                throw RuntimeError("image '\(image)': its memory is \(status.st_size) bytes, not a whole number of \(GuestMemory.pageSize)-byte pages, so it cannot be guest memory; the image is damaged or was not made by `catalyzer checkpoint`: check it with `catalyzer image verify \(image)`")
            }
            throw RuntimeError("image '\(image)': \(memoryPath) is not a guest memory file (size \(status.st_size)); is \(mount.mountpoint) a catalyzerfs mount?")
        }
        if recordsWorkingSet {
            // Only touched pages may be in the page cache, or the host's fault-around maps their
            // cached neighbours too: drop the file's cache and read nothing ahead on faults.
            _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
        }
        let mapped = try GuestMemory(mappingPrivately: fd, size: Int(status.st_size))
        if recordsWorkingSet { _ = madvise(mapped.base, mapped.size, MADV_RANDOM) }
        memory = mapped
        memoryMappedAt = Sandbox.monotonicNanoseconds()
        let vm = PendingVM(kvm: try kvm ?? KVM(), memory: mapped)
        // The working set goes in while the state is read and decoded, and the VM created. The
        // installer holds `mapped`, so an early throw below cannot unmap memory it writes.
        let installer = !recordsWorkingSet ? WorkingSetInstaller(image: image, mount: mount, memory: mapped, started: memoryMappedAt) : nil

        var state = try CheckpointState(decoding: Self.readState(mount.statePath(image), image: image, mount: mount), image: image)
        state.kernel.rootfs.path = try Self.rootfs(for: image, recorded: state.kernel.rootfs.path, store: store)
        guard state.kernel.memorySize == mapped.size else {
            throw RuntimeError("image '\(image)': its state is for \(state.kernel.memorySize) bytes of memory but its memory file has \(mapped.size); the image is inconsistent: re-create it")
        }
        chunkSize = state.chunkSize
        var options = options
        if options.network == nil { options.network = try state.networkPolicy(image: image) }
        guardSlot = chost_guard_guest_memory(
            mapped.base, UInt64(mapped.size), UInt64(chunkSize),
            "catalyzer: error: image '\(image)': guest memory chunk ",
            " could not be read from \(memoryPath) (catalyzerfs failed to serve it: a corrupt or missing chunk blob, or for an image pulled with --lazy a registry it could not reach; its log names the blob and the registry). The invocation was stopped before running on that memory; check the image with `catalyzer image verify \(image)`.\n",
            mount.statsPath,
            " could not be read from \(memoryPath): \(Self.daemonGone(mount)). The invocation was stopped before running on that memory.\n")
        do {
            workingSet = try installer?.wait()
        } catch {
            chost_unguard_guest_memory(guardSlot)
            throw error
        }
        do {
            kernel = try Sandbox(restoring: state.kernel, vm: vm, options: options)
        } catch {
            chost_unguard_guest_memory(guardSlot)
            throw RuntimeError("image '\(image)' cannot be restored: \(error)")
        }
        kernel.unreadableMemory = { [guardSlot] in
            let offset = chost_guest_memory_failure(guardSlot)
            return offset >= 0 ? Int(offset) : nil
        }
        stateRestoredAt = Sandbox.monotonicNanoseconds()
    }

    deinit { chost_unguard_guest_memory(guardSlot) }

    /// The directory to restore against: the rootfs the checkpoint ran against where it still is
    /// (the checkpointing node, development), else the image's rootfs layers, unpacked once per
    /// layer digest under the store (a node that never had the rootfs). Either way the
    /// checkpoint's fingerprint is checked against it by the restore.
    static func rootfs(for image: String, recorded: String, store: ImageStore) throws -> String {
        var status = stat()
        if stat(recorded, &status) == 0 && status.st_mode & S_IFMT == S_IFDIR { return recorded }
        let config = try store.open(image).config
        guard let layers = config.rootfs?.layers else {
            throw RuntimeError("image '\(image)' was checkpointed against the rootfs \(recorded), which is not on this node, and the image carries no rootfs layers (it was made before images carried them, or with --no-rootfs-layer); restore it where that rootfs is, or checkpoint it again")
        }
        do {
            return try store.materializeRootfs(layers, image: image).path
        } catch {
            throw RuntimeError("image '\(image)': its rootfs (checkpointed at \(recorded), not on this node) could not be unpacked from its layers: \(error)")
        }
    }

    /// Runs the restored program (first serving its pending read of stdin) until it exits or
    /// `timeoutSeconds` pass.
    public func run(timeoutSeconds: Double) throws -> SandboxExit {
        try run { try kernel.run(timeoutSeconds: timeoutSeconds) }
    }

    /// Runs the restored program with no time limit (a container: the engine stops it).
    public func run() throws -> SandboxExit {
        try run { try kernel.run() }
    }

    private func run(_ body: () throws -> SandboxExit) throws -> SandboxExit {
        let exit: SandboxExit
        do {
            exit = try body()
        } catch let error as KVMError where error.errno == EFAULT {
            // KVM could not fault in a page of the memory file: find which chunk fails.
            throw RuntimeError(unreadableMemoryMessage())
        } catch let error as Sandbox.GuestMemoryUnreadable {
            throw RuntimeError(unreadableMemoryMessage(failedAt: error.offset))
        }
        // A page that failed in the monitor's last act (the program's exit) still fails the run:
        // what the program did last may have been done on zeros.
        let failed = chost_guest_memory_failure(guardSlot)
        if failed >= 0 { throw RuntimeError(unreadableMemoryMessage(failedAt: Int(failed))) }
        return exit
    }

    /// Why the monitor's access to guest memory at `offset` failed: the mount's daemon is gone,
    /// or it could not serve that chunk.
    private func unreadableMemoryMessage(failedAt offset: Int) -> String {
        var status = stat()
        let daemonGone = stat(mount.statsPath, &status) != 0 && (errno == ENOTCONN || errno == ECONNABORTED)
        return unreadableChunkMessage(offset / chunkSize, daemonGone: daemonGone)
    }

    /// The one message for a chunk of guest memory that could not be read, by the monitor or by
    /// KVM; `detail` says more where the failing read is known (its bytes, its errno).
    private func unreadableChunkMessage(_ chunk: Int, daemonGone: Bool, detail: String = "") -> String {
        let what = "image '\(image)': guest memory chunk \(chunk)\(detail) could not be read from \(mount.memoryPath(image))"
        if daemonGone { return "\(what): \(Self.daemonGone(mount)). The invocation was stopped before running on that memory" }
        return "\(what) (catalyzerfs failed to serve it: a corrupt or missing chunk blob, or for an image pulled with --lazy a registry it could not reach; its log names the blob and the registry). The invocation was stopped before running on that memory; check the image with `catalyzer image verify \(image)`"
    }

    /// The chunks of the memory file that are resident (in the page cache or copied into this
    /// sandbox), in order: after a first invocation, the image's working set.
    public func residentChunks() -> [Int] {
        let pages = memory.size / GuestMemory.pageSize
        var vector = [UInt8](repeating: 0, count: pages)
        guard mincore(memory.base, memory.size, &vector) == 0 else { return [] }
        let pagesPerChunk = max(1, chunkSize / GuestMemory.pageSize)
        var chunks: [Int] = []
        for (page, residency) in vector.enumerated() where residency & 1 != 0 {
            let chunk = page / pagesPerChunk
            if chunks.last != chunk { chunks.append(chunk) }
        }
        return chunks
    }

    /// The pages of the memory mapping with a host page-table entry (`/proc/self/pagemap`):
    /// after a first invocation restored with `recordsWorkingSet`, the pages KVM or the monitor
    /// touched (fault-around finds no other page cached to map with them). Page indices, ascending.
    public func touchedPages() throws -> [Int64] {
        try memory.presentPages().map { Int64($0 / UInt64(GuestMemory.pageSize)) }
    }

    private func unreadableMemoryMessage() -> String {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        var offset = 0
        while offset < memory.size {
            if pread(memory.fd, buffer, min(chunkSize, memory.size - offset), off_t(offset)) < 0 {
                let code = errno
                return unreadableChunkMessage(offset / chunkSize, daemonGone: code == ENOTCONN || code == ECONNABORTED,
                                              detail: " (bytes \(offset)-\(offset + chunkSize - 1), \(String(cString: strerror(code))))")
            }
            offset += chunkSize
        }
        return "image '\(image)': KVM could not map a page of guest memory (EFAULT), though every chunk reads now; the invocation was stopped"
    }

    /// What to say when the mount's daemon is gone: the image is not to blame, the daemon is.
    static func daemonGone(_ mount: CatalyzerMount) -> String {
        let cause = "the catalyzerfs daemon serving \(mount.mountpoint) has died (its mount answers ENOTCONN), so pages not read before cannot be served; the image is not at fault"
        if mount.isManaged {
            return cause + ". Its log \(mount.mountpoint).log may say why; the next invocation mounts the store again"
        }
        return cause + ". Its log may say why; unmount it (`umount -l \(mount.mountpoint)`) and mount the store again"
    }

    /// The state blob through the mount (catalyzerfs verifies its digest).
    static func readState(_ path: String, image: String, mount: CatalyzerMount) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOTCONN || code == ECONNABORTED { throw RuntimeError("image '\(image)': cannot open its state \(path): \(daemonGone(mount))") }
            throw RuntimeError("image '\(image)': cannot open its state \(path): \(String(cString: strerror(code)))"
                               + (code == EIO ? " (catalyzerfs could not serve it; its log says why): check the image with `catalyzer image verify \(image)`" : ""))
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 256 << 10)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else {
                if errno == ENOTCONN || errno == ECONNABORTED { throw RuntimeError("image '\(image)': cannot read its state \(path): \(daemonGone(mount))") }
                throw RuntimeError("image '\(image)': cannot read its state \(path): \(String(cString: strerror(errno))) (a corrupt state blob? check with `catalyzer image verify \(image)`)")
            }
            if count == 0 { return bytes }
            bytes.append(contentsOf: buffer.prefix(count))
        }
    }

    /// Why an image's memory file cannot be opened, asked of the store: the store names unknown
    /// images, unsupported format versions and damaged manifests precisely.
    private static func diagnoseMissing(image: String, path: String, errno code: Int32, mount: CatalyzerMount, store: ImageStore) -> Error {
        do {
            _ = try store.open(image)
        } catch {
            return RuntimeError(String(describing: error))
        }
        return RuntimeError("image '\(image)' is in the store \(store.root) but \(path) cannot be opened: \(String(cString: strerror(code))); is \(mount.mountpoint) serving that store?")
    }
}
