import CKVM
import Glibc

/// Guest RAM, registered as a single KVM memory slot at guest-physical address 0. Either a memfd
/// mapped shared into the monitor (a cold start; a checkpoint stores the memfd's contents), or a
/// checkpoint's memory file mapped privately (a restore): its pages arrive on first touch, and
/// every write, the guest's or the monitor's, lands in a private copy the file never sees.
public final class GuestMemory {
    public static let pageSize = 4096
    /// The most one host call of `copy` moves: a few milliseconds of copying.
    static let copyPiece = 8 << 20

    public enum Backing: Sendable {
        /// A memfd the guest owns, mapped `MAP_SHARED`.
        case memfd
        /// A read-only image file (catalyzerfs `memory`), mapped `MAP_PRIVATE`.
        case privateFile
    }

    /// The memfd, or the image file kept open for the mapping's lifetime: catalyzerfs drops an
    /// unreferenced file's page cache, which other sandboxes restored from the image share.
    public let fd: Int32
    public let size: Int
    /// The monitor's view of guest-physical address 0.
    public let base: UnsafeMutableRawPointer
    public let backing: Backing

    /// Host memory shared with other VMs (a /tmp file mapped `MAP_SHARED`), registered as extra
    /// KVM memory slots at guest-physical addresses above RAM. A fork's copy of guest RAM keeps
    /// them (the same host pages, not copies), so parent and child share them as Linux would.
    /// A detached region (no owner) keeps its slot number and guest-physical window for reuse.
    public final class AttachedRegion {
        public let guestPhysical: UInt64
        public let size: Int
        public let host: UnsafeMutableRawPointer?
        /// What owns `host` (kept alive while any VM has the slot); nil for a free slot.
        public let owner: AnyObject?
        init(guestPhysical: UInt64, size: Int, host: UnsafeMutableRawPointer?, owner: AnyObject?) {
            self.guestPhysical = guestPhysical
            self.size = size
            self.host = host
            self.owner = owner
        }
    }

    public private(set) var attachedRegions: [AttachedRegion] = []
    /// RAM ranges `discard` replaced with anonymous memory in a private file mapping: they no
    /// longer show the file even where pagemap shows nothing (see `GuestMemoryReset.swift`).
    /// Kept only when `recordsDiscards` is set (memory that will be reset for another sandbox).
    var discardedRuns: [(start: UInt64, count: Int)] = []
    public var recordsDiscards = false
    /// The pages of `discardedRuns`.
    public var discardedPages: [UInt64] {
        discardedRuns.flatMap { run in (0..<run.count).map { run.start + UInt64($0 * GuestMemory.pageSize) } }
    }
    /// A buffer for `/proc/self/pagemap` entries, kept between scans: allocating it fresh (up to
    /// 512 KiB) cost every reset a zeroing and page faults of its own. Used by the one thread
    /// that resets this memory at a time.
    var pagemapBuffer: UnsafeMutableBufferPointer<UInt64>?
    /// The VM using this memory, so attaching can register its slot; set by `VM`.
    var vmFD: Int32 = -1
    /// KVM guarantees at least 509 user memory slots per VM (slot 0 is RAM).
    public static let attachedRegionLimit = 500

    public init(size: Int, name: String = "catalyzer-guest-ram") throws {
        precondition(size > 0 && size % GuestMemory.pageSize == 0, "guest memory must be whole pages")
        let fd = ckvm_memfd_create(name)
        guard fd >= 0 else { throw KVMError("memfd_create") }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let error = KVMError("ftruncate guest memory")
            close(fd)
            throw error
        }
        guard let mapping = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapping != MAP_FAILED else {
            let error = KVMError("mmap guest memory")
            close(fd)
            throw error
        }
        self.fd = fd
        self.size = size
        self.base = mapping
        self.backing = .memfd
    }

    /// Maps `size` bytes of the file `fd` privately as guest RAM; takes ownership of `fd`.
    public init(mappingPrivately fd: Int32, size: Int) throws {
        precondition(size > 0 && size % GuestMemory.pageSize == 0, "guest memory must be whole pages")
        guard let mapping = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0),
              mapping != MAP_FAILED else {
            let error = KVMError("mmap guest memory image")
            close(fd)
            throw error
        }
        self.fd = fd
        self.size = size
        self.base = mapping
        self.backing = .privateFile
    }

    deinit {
        munmap(base, size)
        close(fd)
        pagemapBuffer?.deallocate()
    }

    /// Where attached regions start: a gap of at least 1 GiB above RAM, so page runs never span both.
    private var firstAttachedAddress: UInt64 { (UInt64(size) + (2 << 30) - 1) & ~((1 << 30) - 1) }

    /// The guest-physical address at which `host[0..<size]` (owned by `owner`) appears, registering
    /// a new memory slot unless one for the same owner and host range, at least as large, exists.
    public func attach(host: UnsafeMutableRawPointer, size length: Int, owner: AnyObject) throws -> UInt64 {
        precondition(length > 0 && length % GuestMemory.pageSize == 0, "attached regions are whole pages")
        if let existing = attachedRegions.first(where: { $0.owner === owner && $0.host == host && $0.size >= length }) {
            return existing.guestPhysical
        }
        // A free slot whose window is large enough is reused, so mapping and unmapping shared
        // memory (a semaphore per multiprocessing lock) never runs out of slots.
        if let index = attachedRegions.firstIndex(where: { $0.owner == nil && $0.size >= length }) {
            let region = AttachedRegion(guestPhysical: attachedRegions[index].guestPhysical, size: length, host: host, owner: owner)
            if vmFD >= 0 { try Self.register(region, slot: UInt32(index + 1), vmFD: vmFD) }
            attachedRegions[index] = region
            return region.guestPhysical
        }
        guard attachedRegions.count < Self.attachedRegionLimit else { throw KVMError("attach shared memory", errno: ENOMEM) }
        let start = attachedRegions.last.map { ($0.guestPhysical + UInt64($0.size) + 0x1F_FFFF) & ~0x1F_FFFF } ?? firstAttachedAddress
        let region = AttachedRegion(guestPhysical: start, size: length, host: host, owner: owner)
        if vmFD >= 0 {
            try Self.register(region, slot: UInt32(attachedRegions.count + 1), vmFD: vmFD)
        }
        attachedRegions.append(region)
        return start
    }

    /// Removes `owner`'s slots from this VM (nothing maps them any more); their windows are reused.
    /// Entries are replaced, not changed: a fork's copy shares the region objects.
    public func detach(owner: AnyObject) {
        for index in attachedRegions.indices where attachedRegions[index].owner === owner {
            let old = attachedRegions[index]
            if vmFD >= 0 { _ = ckvm_set_user_memory_region(vmFD, UInt32(index + 1), 0, old.guestPhysical, 0, 0) }
            attachedRegions[index] = AttachedRegion(guestPhysical: old.guestPhysical, size: old.size, host: nil, owner: nil)
        }
    }

    static func register(_ region: AttachedRegion, slot: UInt32, vmFD: Int32) throws {
        guard let host = region.host else { return }  // a free slot: nothing to register
        guard ckvm_set_user_memory_region(vmFD, slot, 0, region.guestPhysical, UInt64(region.size),
                                          UInt64(UInt(bitPattern: host))) == 0 else {
            throw KVMError("KVM_SET_USER_MEMORY_REGION (shared memory)")
        }
    }

    /// Whether `address` is guest RAM (and not an attached region).
    @inline(__always)
    public func isRAM(_ address: UInt64) -> Bool { address < UInt64(size) }

    private func attachedPointer(_ address: UInt64) -> UnsafeMutableRawPointer {
        guard let region = attachedRegions.first(where: { $0.host != nil && address >= $0.guestPhysical
                                                          && address - $0.guestPhysical < UInt64($0.size) }),
              let host = region.host else {
            preconditionFailure("guest-physical address out of range")
        }
        return host + Int(address - region.guestPhysical)
    }

    /// A new memfd-backed guest RAM with the same contents (fork). Only the memfd's data extents
    /// are copied (`SEEK_DATA`/`SEEK_HOLE` + `copy_file_range`), so untouched memory costs nothing.
    /// A privately mapped image copies its first `inUse` bytes, the part the allocator handed out.
    /// The memfd's file offset is left where it was: the `SEEK_DATA` scan moves it, and a
    /// checkpoint reads the memfd from its offset.
    ///
    /// The copy goes in pieces of at most `copyPiece` bytes and gives up (EINTR) as soon as
    /// `shouldStop` says so, so stopping a sandbox (its timeout) never waits for a large copy.
    public func copy(inUse: Int, shouldStop: () -> Bool = { false }) throws -> GuestMemory {
        let copy = try GuestMemory(size: size)
        copy.attachedRegions = attachedRegions
        let stopped = KVMError("copy guest memory: the sandbox is stopping", errno: EINTR)
        if backing == .privateFile {
            var done = 0
            let limit = min(inUse, size)
            while done < limit {
                if shouldStop() { throw stopped }
                let written = pwrite(copy.fd, base + done, min(limit - done, Self.copyPiece), off_t(done))
                if written < 0 && errno == EINTR { continue }
                guard written > 0 else { throw KVMError("copy restored guest memory") }
                done += written
            }
            return copy
        }
        let savedOffset = lseek(fd, 0, SEEK_CUR)
        defer { lseek(fd, savedOffset, SEEK_SET) }
        var offset: off_t = 0
        while offset < off_t(size) {
            let dataStart = lseek(fd, offset, 3 /* SEEK_DATA */)
            guard dataStart >= 0 else { break }  // ENXIO: no data after offset
            let dataEnd = min(lseek(fd, dataStart, 4 /* SEEK_HOLE */), off_t(size))
            var from = Int64(dataStart), to = Int64(dataStart)
            while from < Int64(dataEnd) {
                if shouldStop() { throw stopped }
                let copied = chost_copy_file_range(fd, &from, copy.fd, &to, min(Int(Int64(dataEnd) - from), Self.copyPiece))
                // The monitor's thread is kicked with a signal (preemption, timeouts): retry.
                if copied < 0 && errno == EINTR { continue }
                guard copied > 0 else { throw KVMError("copy_file_range guest memory") }
            }
            offset = dataEnd
        }
        return copy
    }

    /// The monitor's pointer to guest-physical `address`; the caller keeps `address + length` in range.
    @inline(__always)
    public func pointer(_ address: UInt64) -> UnsafeMutableRawPointer {
        if address < UInt64(size) { return base + Int(address) }
        return attachedPointer(address)
    }

    public func load<T: FixedWidthInteger>(_ type: T.Type, at address: UInt64) -> T {
        precondition(address + UInt64(MemoryLayout<T>.size) <= UInt64(size))
        return pointer(address).loadUnaligned(as: T.self)
    }

    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) {
        precondition(address + UInt64(MemoryLayout<T>.size) <= UInt64(size))
        pointer(address).storeBytes(of: value, as: T.self)
    }

    public func write(_ bytes: [UInt8], at address: UInt64) {
        precondition(address + UInt64(bytes.count) <= UInt64(size))
        bytes.withUnsafeBytes { pointer(address).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// Sorted page addresses grouped into runs of adjacent pages, for batching host calls.
    public static func contiguousRuns(_ pages: [UInt64]) -> [(start: UInt64, count: Int)] {
        var runs: [(start: UInt64, count: Int)] = []
        for page in pages.sorted() {
            if let last = runs.last, last.start + UInt64(last.count * pageSize) == page {
                runs[runs.count - 1].count += 1
            } else {
                runs.append((page, 1))
            }
        }
        return runs
    }

    /// Makes KVM forget every guest translation to these pages while keeping their contents: the shared
    /// mapping's host PTEs are dropped (`MADV_DONTNEED`), the MMU notifier zaps KVM's shadow entries, and
    /// the next guest access re-walks the guest page tables. Needed after the monitor removes or
    /// narrows a guest mapping, because its own writes to guest page tables are invisible to KVM.
    public func dropTranslations(pageAt address: UInt64, count: Int = 1) {
        if !isRAM(address) {
            // Shared file pages: dropping the monitor's PTEs of a MAP_SHARED memfd keeps the data.
            madvise(pointer(address), count * GuestMemory.pageSize, MADV_DONTNEED)
            return
        }
        switch backing {
        case .memfd:
            madvise(pointer(address), count * GuestMemory.pageSize, MADV_DONTNEED)
        case .privateFile:
            // MADV_DONTNEED would throw away the private copies. A protection change also runs the
            // MMU notifier that zaps KVM's entries, and leaves the pages as they are.
            let start = pointer(address), length = count * GuestMemory.pageSize
            mprotect(start, length, PROT_READ)
            mprotect(start, length, PROT_READ | PROT_WRITE)
        }
    }

    /// Zeroes whole pages and gives their host memory back (`FALLOC_FL_PUNCH_HOLE`), so freed guest
    /// pages cost the host nothing and read as zero when reused. Like `dropTranslations`, this also
    /// removes KVM's stale translations to them.
    public func discard(pageAt address: UInt64, count: Int = 1) {
        let length = count * GuestMemory.pageSize
        switch backing {
        case .memfd:
            // shmem's fallocate gives EINTR when a kick signal is pending: retry a few times.
            for _ in 0..<4 {
                if ckvm_punch_hole(fd, off_t(address), off_t(length)) == 0 { return }
                if errno != EINTR { break }
            }
        case .privateFile:
            // Fresh anonymous pages over the range: zero, without reading the image's bytes first.
            let start = pointer(address)
            let replaced = mmap(start, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0)
            if replaced == start {
                if recordsDiscards { discardedRuns.append((address, count)) }
                return
            }
        }
        memset(pointer(address), 0, length)
        dropTranslations(pageAt: address, count: count)
    }
}
