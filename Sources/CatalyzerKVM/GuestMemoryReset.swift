import CKVM
import Glibc

/// Resetting privately mapped guest memory to its file, so one VM can serve sandbox after sandbox
/// forked from the same image while KVM keeps its shadow page tables for the pages nobody wrote.
///
/// What a sandbox may have changed is read from the host, not from the guest: `/proc/self/pagemap`
/// shows every page of the mapping that is no longer the file's page cache page (a private copy
/// made by a write of the guest or of the monitor, or an anonymous page left by `discard`), and
/// `discardedRuns` names the discarded ranges nobody touched since, which pagemap cannot tell from
/// untouched file pages. A private page is reset by copying the file's bytes into it, which keeps
/// it mapped for KVM; a discarded range by mapping the file over it again (the MMU notifier then
/// zaps KVM's translations of it).
extension GuestMemory {
    /// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
    private static let pagemapPresent: UInt64 = 1 << 63
    private static let pagemapSwapped: UInt64 = 1 << 62
    private static let pagemapFileOrSharedAnonymous: UInt64 = 1 << 61

    /// Guest-physical addresses of the RAM pages that are not the file's page cache pages, sorted:
    /// private copies and anonymous pages (present or swapped out). Discarded ranges nobody
    /// touched since are in `discardedRuns` instead.
    /// Only pages below `end` are looked at (all of RAM by default).
    public func privatePages(below end: UInt64? = nil) throws -> [UInt64] {
        precondition(backing == .privateFile, "only a privately mapped image file can be reset")
        return try pagemapScan(below: end) { entry in
            let privatePage = entry & Self.pagemapPresent != 0 && entry & Self.pagemapFileOrSharedAnonymous == 0
            return privatePage || entry & Self.pagemapSwapped != 0
        }
    }

    /// Guest-physical addresses of the pages of RAM with a host page-table entry (file page or
    /// private copy) or swapped out: every page anything has touched since the mapping was made,
    /// and the neighbours the host's fault-around mapped with them.
    public func presentPages() throws -> [UInt64] {
        try pagemapScan(below: nil) { entry in entry & (Self.pagemapPresent | Self.pagemapSwapped) != 0 }
    }

    /// The pages of RAM below `end` whose `/proc/self/pagemap` entry satisfies `selected`.
    private func pagemapScan(below end: UInt64?, _ selected: (UInt64) -> Bool) throws -> [UInt64] {
        let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw KVMError("open /proc/self/pagemap") }
        defer { close(fd) }
        var pages: [UInt64] = []
        let totalPages = Int(min(UInt64(size), end ?? UInt64(size))) / GuestMemory.pageSize
        let piece = 1 << 16
        if pagemapBuffer == nil { pagemapBuffer = .allocate(capacity: piece) }
        let entries = pagemapBuffer!
        let firstEntry = UInt(bitPattern: base) / UInt(GuestMemory.pageSize)
        var page = 0
        while page < totalPages {
            let count = min(piece, totalPages - page)
            let offset = off_t((firstEntry + UInt(page)) * 8)
            let read = pread(fd, entries.baseAddress, count * 8, offset)
            guard read == count * 8 else { throw KVMError("read /proc/self/pagemap") }
            for index in 0..<count {
                if selected(entries[index]) {
                    pages.append(UInt64(page + index) * UInt64(GuestMemory.pageSize))
                }
            }
            page += count
        }
        return pages
    }

    /// Makes all of RAM read as the file `template` maps (read-only) again, and returns how many
    /// pages that took. Up to `keepingAtMost` private pages are overwritten with the file's bytes
    /// in place: their host PTEs stay, and so do KVM's (writable) translations, so the next
    /// sandbox writes them without a fault. The others are given back (dropped, so the file shows again),
    /// as are discarded ranges.
    /// `pages` are `privatePages()` as read since the sandbox ended.
    public func reset(to template: UnsafeRawPointer, privatePages pages: [UInt64], keepingAtMost keepLimit: Int) throws -> (copied: Int, givenBack: Int) {
        // Keep the first `keepLimit` (by address); beyond that, give the pages back.
        let kept = pages.prefix(max(0, keepLimit))
        for page in kept {
            memcpy(pointer(page), template + Int(page), GuestMemory.pageSize)
        }
        // Private copies are dropped in place (MADV_DONTNEED on a private file mapping: the next
        // touch maps the page cache page again), which leaves the mapping whole; only discarded
        // ranges, anonymous mappings now, need the file mapped over them again.
        let discarded = Set(discardedPages)
        let givenBack = pages.dropFirst(kept.count).filter { !discarded.contains($0) }
        try giveBack(givenBack)
        let remapped = discarded.sorted()
        try revertToFile(remapped)
        return (kept.count, givenBack.count + remapped.count)
    }

    /// Gives back `pages` (guest-physical, sorted), private copies of memory that otherwise
    /// reads as its file (a reset VM's): dropped in place, so the file's page cache page shows
    /// again and KVM's translations of them go with the host's.
    public func giveBack(_ pages: [UInt64]) throws {
        for run in Self.contiguousRuns(pages) where run.start < UInt64(size) {
            let length = min(run.count * GuestMemory.pageSize, size - Int(run.start))
            guard madvise(pointer(run.start), length, MADV_DONTNEED) == 0 else {
                throw KVMError("madvise(MADV_DONTNEED) guest memory to give back private pages")
            }
        }
    }

    /// Faults `pages` (guest-physical, sorted) in as if written (MADV_POPULATE_WRITE, Linux
    /// 5.14): private, writable copies of the file's pages with host page-table entries, which
    /// KVM maps on a fault together with up to 7 present neighbours. Best effort: a page that
    /// cannot be populated is left to fault as usual.
    public func populateForWriting(_ pages: [UInt64]) {
        for run in Self.contiguousRuns(pages) where run.start < UInt64(size) {
            let length = min(run.count * GuestMemory.pageSize, size - Int(run.start))
            _ = madvise(pointer(run.start), length, Self.populateWrite)
        }
    }

    /// MADV_POPULATE_WRITE (Linux 5.14), which Glibc's headers here do not name: faults pages in
    /// as if written, without writing.
    public static let populateWrite: Int32 = 23

    /// Maps the file back over `pages` (guest-physical, sorted), dropping private copies and
    /// anonymous pages there; KVM forgets its translations of them.
    func revertToFile(_ pages: [UInt64]) throws {
        precondition(backing == .privateFile, "only a privately mapped image file can be reset")
        for run in Self.contiguousRuns(pages) {
            let start = pointer(run.start)
            let length = run.count * GuestMemory.pageSize
            let mapped = mmap(start, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, off_t(run.start))
            guard mapped == start else { throw KVMError("mmap guest memory image over changed pages") }
        }
        discardedRuns.removeAll()
    }
}

extension PageTables {
    /// The physical pages that the page tables under `root` in `memory` map at a virtual address
    /// where the template's tables (the same guest-physical tables in `template`, a view of the
    /// image file) map something else or nothing. A reset must drop KVM's translations of these:
    /// reverting a changed table page restores its entries, but KVM's shadow entries derived
    /// from the changed ones stay until the pages they point at are zapped. Only table pages in
    /// `changedPages` can differ from the template; subtrees below a differing entry differ whole.
    public static func pagesMappedDifferently(root: UInt64, memory: GuestMemory, template: UnsafeRawPointer,
                                              changedPages: Set<UInt64>) -> [UInt64] {
        var pages: [UInt64] = []
        let limit = UInt64(memory.size)
        func walk(table: UInt64, level: Int, differs: Bool) {
            guard table < limit, table % UInt64(GuestMemory.pageSize) == 0 else { return }
            let tableChanged = differs || changedPages.contains(table)
            for index in 0..<UInt64(512) {
                let slot = table + index * 8
                let entry = memory.load(UInt64.self, at: slot)
                guard entry & PageFlags.present.rawValue != 0 else { continue }
                let entryDiffers = differs || (tableChanged && template.load(fromByteOffset: Int(slot), as: UInt64.self) != entry)
                let target = entry & entryAddressMask
                if level == 0 {
                    if entryDiffers && target < limit { pages.append(target) }
                } else {
                    walk(table: target, level: level - 1, differs: entryDiffers)
                }
            }
        }
        walk(table: root, level: 3, differs: false)
        return pages
    }
}
