import CatalyzerKVM
import Glibc

/// Memory protection of a region, with the values of Linux's `PROT_*`.
public struct Protection: OptionSet, Sendable, Equatable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let read = Protection(rawValue: 1)
    public static let write = Protection(rawValue: 2)
    public static let execute = Protection(rawValue: 4)
    public static let readWrite: Protection = [.read, .write]
}

/// A contiguous range of the guest's virtual address space with one protection (a Linux VMA).
struct MemoryRegion {
    var start: UInt64
    var end: UInt64
    var protection: Protection
    /// What the region is, for diagnostics: "[heap]", "[stack]", a file path, or "anonymous".
    var name: String
    /// For a private file mapping the program has never been able to write: the file bytes its
    /// pages hold, so a later mapping of the same bytes can keep the pages instead of copying.
    var pristineCopy: FileRange?
    /// For a `MAP_SHARED` mapping of a /tmp file: the file's shared pages behind the region.
    var shared: SharedMapping? = nil
}

/// Where a shared file mapping's pages are: the file's memory attached to this VM at `window`
/// (the guest-physical address of file offset 0), and the file offset at the region's start.
struct SharedMapping {
    let memory: SharedFileMemory
    let window: UInt64
    var offset: UInt64
}

/// Bytes of a host file from `offset` on, identified by device and inode.
struct FileRange: Equatable {
    let device: UInt64
    let inode: UInt64
    var offset: UInt64
}

/// The guest process's address space: regions (VMAs), the guest page tables that realize them, and
/// the physical pages behind them. Pages of regions with any access are allocated when mapped
/// (so exhausting guest RAM is ENOMEM from mmap/brk), except the stack, which fills on first touch.
final class AddressSpace {
    /// Highest address below which mmap places mappings without a usable hint.
    static let mmapTop: UInt64 = 0x7FFF_0000_0000
    static let stackTop: UInt64 = 0x7FFF_FFFF_F000
    static let stackLimit: UInt64 = 8 << 20

    let memory: GuestMemory
    let allocator: PhysicalPageAllocator
    let pageTables: PageTables
    /// Sorted by start; never overlapping.
    private(set) var regions: [MemoryRegion] = []
    /// The program break: the heap starts at `breakStart` and currently ends at `breakEnd`.
    var breakStart: UInt64 = 0
    var breakEnd: UInt64 = 0

    init(memory: GuestMemory, allocator: PhysicalPageAllocator, pageTables: PageTables) {
        self.memory = memory
        self.allocator = allocator
        self.pageTables = pageTables
    }

    /// The same layout over a copy of `other`'s memory (fork).
    init(copying other: AddressSpace, memory: GuestMemory, allocator: PhysicalPageAllocator, pageTables: PageTables) {
        self.memory = memory
        self.allocator = allocator
        self.pageTables = pageTables
        regions = other.regions
        breakStart = other.breakStart
        breakEnd = other.breakEnd
    }

    /// Installs a checkpoint's regions; their pages are already mapped in its page tables.
    func restoreRegions(_ restored: [MemoryRegion]) {
        regions = restored
    }

    // MARK: regions

    func regionIndex(containing address: UInt64) -> Int? {
        var low = 0, high = regions.count
        while low < high {
            let mid = (low + high) / 2
            if regions[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        return low < regions.count && regions[low].start <= address ? low : nil
    }

    func isFree(_ start: UInt64, _ end: UInt64) -> Bool {
        guard start >= SystemLayout.userMinimum, end <= SystemLayout.userLimit, start < end else { return false }
        return !regions.contains { $0.start < end && start < $0.end }
    }

    func isFullyMapped(_ start: UInt64, _ end: UInt64) -> Bool {
        var cursor = start
        while cursor < end {
            guard let index = regionIndex(containing: cursor) else { return false }
            cursor = regions[index].end
        }
        return true
    }

    /// The highest free range of `length` bytes that ends at or below `top`.
    func findFree(length: UInt64, below top: UInt64 = AddressSpace.mmapTop) -> UInt64? {
        var ceiling = top
        for region in regions.reversed() {
            if region.start >= ceiling { continue }
            if region.end <= ceiling, ceiling - region.end >= length { return ceiling - length }
            ceiling = min(ceiling, region.start)
        }
        return ceiling >= SystemLayout.userMinimum + length ? ceiling - length : nil
    }

    /// Adds a region over a free range; populates its pages now unless `lazy` (or it has no access).
    /// `pristineCopy` names the file bytes the caller is about to copy into a read-only mapping.
    func map(_ start: UInt64, _ end: UInt64, protection: Protection, name: String, lazy: Bool = false,
             pristineCopy: FileRange? = nil, shared: SharedMapping? = nil) throws(Errno) {
        guard isFree(start, end) else { throw Errno.ENOMEM }
        let index = regions.firstIndex { $0.start >= end } ?? regions.count
        regions.insert(MemoryRegion(start: start, end: end, protection: protection, name: name,
                                    pristineCopy: protection.contains(.write) ? nil : pristineCopy, shared: shared), at: index)
        guard !lazy, !protection.isEmpty else { return }
        do {
            for page in stride(from: start, to: end, by: Int(Page.size)) { try populate(page, protection: protection) }
        } catch {
            unmap(start, end)
            throw error
        }
    }

    /// Removes every mapping in the range and frees its pages. Unmapped holes are fine (as in Linux).
    func unmap(_ start: UInt64, _ end: UInt64) {
        split(at: start)
        split(at: end)
        var freed: [UInt64] = []
        var sharedPages: [UInt64] = []
        var unmappedShared: [SharedFileMemory] = []
        regions.removeAll { region in
            guard region.start >= start && region.end <= end else { return false }
            if let shared = region.shared { unmappedShared.append(shared.memory) }
            for page in pageTables.mappedPages(from: region.start, to: region.end) {
                pageTables.unmap(virtual: page.virtual)
                if memory.isRAM(page.physical) { freed.append(page.physical) } else { sharedPages.append(page.physical) }
            }
            return true
        }
        allocator.free(freed)
        // Shared file pages stay with the file; only KVM's translations to them must go.
        for run in GuestMemory.contiguousRuns(sharedPages) { memory.dropTranslations(pageAt: run.start, count: run.count) }
        // A shared file no region maps any more gives its memory slot back.
        for shared in unmappedShared where !regions.contains(where: { $0.shared?.memory === shared }) {
            memory.detach(owner: shared)
        }
    }

    /// Frees the frames behind anonymous pages in the range, leaving the regions in place: the next
    /// touch faults in a fresh zero page (see `handleFault`). File-backed pages are left alone.
    func discardAnonymousPages(_ start: UInt64, _ end: UInt64) {
        var freed: [UInt64] = []
        for region in regions where region.start < end && start < region.end && Self.anonymousNames.contains(region.name) {
            for page in pageTables.mappedPages(from: max(start, region.start), to: min(end, region.end)) {
                pageTables.unmap(virtual: page.virtual)
                freed.append(page.physical)
            }
        }
        allocator.free(freed)
    }

    static let anonymousNames: Set<String> = ["anonymous", "[heap]", "[stack]"]

    /// Changes the protection of a fully mapped range (ENOMEM if any part is unmapped, as in Linux).
    func protect(_ start: UInt64, _ end: UInt64, protection: Protection) throws(Errno) {
        guard isFullyMapped(start, end) else { throw Errno.ENOMEM }
        split(at: start)
        split(at: end)
        var narrowed: [UInt64] = []
        for index in regions.indices where regions[index].start >= start && regions[index].end <= end {
            let old = regions[index].protection
            regions[index].protection = protection
            if protection.contains(.write) { regions[index].pristineCopy = nil }  // it may change from now on
            for page in pageTables.mappedPages(from: regions[index].start, to: regions[index].end) {
                pageTables.protect(virtual: page.virtual, flags: Self.pageFlags(protection))
                if !protection.isSuperset(of: old) { narrowed.append(page.physical) }
            }
            // Regions that were inaccessible have no pages yet. The loop ends at the region's end
            // or at ENOMEM, so even a huge reservation costs at most guest RAM's worth of pages.
            if !protection.isEmpty && regions[index].name != "[stack]" {
                for page in stride(from: regions[index].start, to: regions[index].end, by: Int(Page.size)) {
                    try populate(page, protection: protection)
                }
            }
        }
        for run in GuestMemory.contiguousRuns(narrowed) { memory.dropTranslations(pageAt: run.start, count: run.count) }
    }

    /// Whether every page of `[start, end)` already holds an unmodified copy of `file`'s bytes at
    /// the offsets a mapping of `file` at `start` would give it (ld.so maps a library whole, then
    /// maps its segments over the same bytes with `MAP_FIXED`).
    func holdsPristineCopy(of file: FileRange, _ start: UInt64, _ end: UInt64) -> Bool {
        guard isFullyMapped(start, end) else { return false }
        return regions.allSatisfy { region in
            guard region.start < end && start < region.end else { return true }
            guard let copy = region.pristineCopy, copy.device == file.device, copy.inode == file.inode else { return false }
            return copy.offset &- region.start == file.offset &- start
        }
    }

    /// Turns `[start, end)`, which `holdsPristineCopy` approved, into one mapping of `file` with a
    /// new protection and name, keeping its pages.
    func remapPristineCopy(of file: FileRange, _ start: UInt64, _ end: UInt64, protection: Protection,
                           name: String) throws(Errno) {
        try protect(start, end, protection: protection)
        regions.removeAll { $0.start >= start && $0.end <= end }
        let index = regions.firstIndex { $0.start >= end } ?? regions.count
        regions.insert(MemoryRegion(start: start, end: end, protection: protection, name: name,
                                    pristineCopy: protection.contains(.write) ? nil : file), at: index)
    }

    /// Moves the pages of `[oldStart, oldStart+length)` to a new free range at `newStart` without copying.
    func move(_ oldStart: UInt64, length: UInt64, to newStart: UInt64) throws(Errno) {
        guard let index = regionIndex(containing: oldStart), regions[index].end >= oldStart + length,
              isFree(newStart, newStart + length) else { throw Errno.EFAULT }
        let template = regions[index]
        var shared = template.shared
        shared?.offset &+= oldStart - template.start
        try map(newStart, newStart + length, protection: template.protection, name: template.name, lazy: true, shared: shared)
        var moved: [UInt64] = []
        for (virtual, physical, flags) in pageTables.mappedPages(from: oldStart, to: oldStart + length) {
            let offset = virtual - oldStart
            pageTables.unmap(virtual: virtual)
            do {
                try pageTables.map(virtual: newStart + offset, physical: physical, flags: flags)
            } catch {
                if memory.isRAM(physical) { allocator.free(physical) }
                continue
            }
            moved.append(physical)
        }
        for run in GuestMemory.contiguousRuns(moved) { memory.dropTranslations(pageAt: run.start, count: run.count) }
        // The old range no longer owns pages, so removing it frees nothing.
        unmap(oldStart, oldStart + length)
    }

    /// Splits the region containing `address` so that a region boundary falls on it.
    private func split(at address: UInt64) {
        guard let index = regionIndex(containing: address), regions[index].start != address else { return }
        var upper = regions[index]
        upper.start = address
        upper.pristineCopy?.offset &+= address - regions[index].start
        upper.shared?.offset &+= address - regions[index].start
        regions[index].end = address
        regions.insert(upper, at: index + 1)
    }

    // MARK: pages

    static func pageFlags(_ protection: Protection) -> PageFlags {
        // PROT_NONE pages stay present but supervisor-only, so user access faults and the page is kept.
        guard !protection.isEmpty else { return [.noExecute] }
        // Accessed (and, when writable, dirty) from the start: KVM's shadow MMU then prefetches
        // neighbouring entries on a fault instead of faulting on each page (it skips entries
        // whose accessed bit is clear), and never has to set the bits itself.
        var flags: PageFlags = [.user, .accessed]
        if protection.contains(.write) { flags.formUnion([.writable, .dirty]) }
        if !protection.contains(.execute) { flags.insert(.noExecute) }
        return flags
    }

    private func populate(_ page: UInt64, protection: Protection) throws(Errno) {
        guard pageTables.translate(virtual: page) == nil else { return }
        if let index = regionIndex(containing: page), let shared = regions[index].shared {
            let physical = shared.window &+ shared.offset &+ (page - regions[index].start)
            do {
                try pageTables.map(virtual: page, physical: physical, flags: Self.pageFlags(protection))
            } catch {
                throw Errno.ENOMEM
            }
            return
        }
        guard let physical = allocator.allocate() else { throw Errno.ENOMEM }
        do {
            try pageTables.map(virtual: page, physical: physical, flags: Self.pageFlags(protection))
        } catch {
            allocator.free(physical)
            throw Errno.ENOMEM
        }
    }

    /// Resolves a user page fault by allocating the page if its region allows the access (the stack
    /// grows this way). Returns false when the access is invalid: the program gets SIGSEGV.
    func handleFault(address: UInt64, write: Bool, execute: Bool) -> Bool {
        guard let index = regionIndex(containing: address) else { return false }
        let protection = regions[index].protection
        guard !protection.isEmpty, !write || protection.contains(.write), !execute || protection.contains(.execute),
              pageTables.translate(virtual: Page.down(address)) == nil else { return false }
        return (try? populate(Page.down(address), protection: protection)) != nil
    }

    /// `[start, start+length)` page-aligned and inside user space, or `error`.
    static func userRange(_ start: UInt64, length: UInt64, error: Errno = Errno.EINVAL) throws(Errno) -> (UInt64, UInt64) {
        guard Page.isAligned(start), let size = Page.up(length) else { throw Errno.EINVAL }
        let (end, overflow) = start.addingReportingOverflow(size)
        guard !overflow, end <= SystemLayout.userLimit else { throw error }
        return (start, end)
    }

    // MARK: access from the monitor

    /// How the monitor accesses guest memory: on behalf of the program (its protections apply), or
    /// as the loader (ignores protections, e.g. to fill read-only text).
    enum Access { case read, write, loader }

    /// Host buffers covering the guest range, checked and populated; EFAULT if any page is invalid.
    func hostBuffers(_ address: UInt64, length: Int, access: Access) throws(Errno) -> [UnsafeMutableRawBufferPointer] {
        guard length > 0 else { return [] }
        let (end, overflow) = address.addingReportingOverflow(UInt64(length))
        guard !overflow, end <= SystemLayout.userLimit else { throw Errno.EFAULT }
        var buffers: [UnsafeMutableRawBufferPointer] = []
        var cursor = address
        while cursor < end {
            let page = Page.down(cursor)
            guard let index = regionIndex(containing: cursor) else { throw Errno.EFAULT }
            let protection = regions[index].protection
            switch access {
            case .read: guard protection.contains(.read) || protection.contains(.execute) else { throw Errno.EFAULT }
            case .write: guard protection.contains(.write) else { throw Errno.EFAULT }
            case .loader: break
            }
            if pageTables.translate(virtual: page) == nil {
                try populate(page, protection: protection.isEmpty ? .read : protection)
            }
            guard let (physical, _) = pageTables.translate(virtual: page) else { throw Errno.EFAULT }
            let chunk = Int(min(end, page + Page.size) - cursor)
            let pointer = memory.pointer(physical + (cursor - page))
            if let last = buffers.last, last.baseAddress! + last.count == pointer {
                buffers[buffers.count - 1] = UnsafeMutableRawBufferPointer(start: last.baseAddress, count: last.count + chunk)
            } else {
                buffers.append(UnsafeMutableRawBufferPointer(start: pointer, count: chunk))
            }
            cursor += UInt64(chunk)
        }
        return buffers
    }

    func read(_ address: UInt64, count: Int) throws(Errno) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        for buffer in try hostBuffers(address, length: count, access: .read) { bytes.append(contentsOf: buffer) }
        return bytes
    }

    func write(_ bytes: [UInt8], to address: UInt64, access: Access = .write) throws(Errno) {
        var offset = 0
        for buffer in try hostBuffers(address, length: bytes.count, access: access) {
            bytes.withUnsafeBytes { source in
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[offset..<offset + buffer.count]))
            }
            offset += buffer.count
        }
    }

    func load<T: FixedWidthInteger>(_ type: T.Type, at address: UInt64) throws(Errno) -> T {
        let bytes = try read(address, count: MemoryLayout<T>.size)
        return bytes.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(Errno) {
        try write(withUnsafeBytes(of: value.littleEndian) { Array($0) }, to: address)
    }

    /// Copies a plain C struct to the guest.
    func storeStruct<T>(_ value: T, at address: UInt64) throws(Errno) {
        try write(withUnsafeBytes(of: value) { Array($0) }, to: address)
    }

    func loadStruct<T>(_ type: T.Type, at address: UInt64, zero: T) throws(Errno) -> T {
        let bytes = try read(address, count: MemoryLayout<T>.size)
        var value = zero
        withUnsafeMutableBytes(of: &value) { $0.copyBytes(from: bytes) }
        return value
    }

    /// Reads a NUL-terminated string of at most `limit` bytes (ENAMETOOLONG beyond).
    func readCString(_ address: UInt64, limit: Int = 4096) throws(Errno) -> String {
        var bytes: [UInt8] = []
        var cursor = address
        guard address < SystemLayout.userLimit else { throw Errno.EFAULT }
        while bytes.count < limit {
            let pageEnd = Page.down(cursor) + Page.size
            let chunk = try read(cursor, count: Int(pageEnd - cursor))
            if let nul = chunk.firstIndex(of: 0) {
                bytes.append(contentsOf: chunk[..<nul])
                return String(decoding: bytes, as: UTF8.self)
            }
            bytes.append(contentsOf: chunk)
            cursor = pageEnd
        }
        throw Errno.ENAMETOOLONG
    }
}
