/// Permission bits of a 4 KiB x86-64 page-table entry.
public struct PageFlags: OptionSet, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let present = PageFlags(rawValue: 1 << 0)
    public static let writable = PageFlags(rawValue: 1 << 1)
    public static let user = PageFlags(rawValue: 1 << 2)
    public static let accessed = PageFlags(rawValue: 1 << 5)
    public static let dirty = PageFlags(rawValue: 1 << 6)
    public static let noExecute = PageFlags(rawValue: 1 << 63)
}

/// Four-level guest page tables owned and written by the monitor (the guest never edits them).
/// Intermediate tables are never freed, so only leaf entries change; after removing or narrowing a
/// leaf the caller must drop KVM's translations of the old page (`GuestMemory.dropTranslations`),
/// because KVM's shadow MMU does not see the monitor's writes.
public final class PageTables {
    public static let entryAddressMask: UInt64 = 0x000F_FFFF_FFFF_F000
    private static let tableFlags: PageFlags = [.present, .writable, .user, .accessed]

    private let memory: GuestMemory
    private let allocator: PhysicalPageAllocator
    /// Guest-physical address of the PML4 (CR3).
    public let root: UInt64

    public init(memory: GuestMemory, allocator: PhysicalPageAllocator, root: UInt64 = SystemLayout.pageTableRoot) {
        self.memory = memory
        self.allocator = allocator
        self.root = root
    }

    public enum MapError: Error { case outOfMemory }

    /// Maps the 4 KiB page at `virtual` to `physical`, allocating intermediate tables as needed.
    public func map(virtual: UInt64, physical: UInt64, flags: PageFlags) throws {
        guard let slot = try leafSlot(virtual, create: true) else { throw MapError.outOfMemory }
        memory.store(physical & Self.entryAddressMask | flags.union(.present).rawValue, at: slot)
    }

    /// Clears the leaf entry for `virtual` and returns the physical page it mapped, if any.
    @discardableResult
    public func unmap(virtual: UInt64) -> UInt64? {
        guard let slot = try? leafSlot(virtual, create: false) else { return nil }
        let entry = memory.load(UInt64.self, at: slot)
        guard entry & PageFlags.present.rawValue != 0 else { return nil }
        memory.store(UInt64(0), at: slot)
        return entry & Self.entryAddressMask
    }

    /// The physical page and flags mapped at `virtual`, if present.
    public func translate(virtual: UInt64) -> (physical: UInt64, flags: PageFlags)? {
        guard let slot = try? leafSlot(virtual, create: false) else { return nil }
        let entry = memory.load(UInt64.self, at: slot)
        guard entry & PageFlags.present.rawValue != 0 else { return nil }
        return (entry & Self.entryAddressMask, PageFlags(rawValue: entry & ~Self.entryAddressMask))
    }

    /// Replaces the flags of a present leaf entry; returns false when `virtual` is not mapped.
    @discardableResult
    public func protect(virtual: UInt64, flags: PageFlags) -> Bool {
        guard let slot = try? leafSlot(virtual, create: false) else { return false }
        let entry = memory.load(UInt64.self, at: slot)
        guard entry & PageFlags.present.rawValue != 0 else { return false }
        memory.store(entry & Self.entryAddressMask | flags.union(.present).rawValue, at: slot)
        return true
    }

    /// The present 4 KiB pages in `[start, end)` with their physical pages and flags, in address
    /// order. Missing tables are skipped whole, so sparse ranges of any size cost little.
    public func mappedPages(from start: UInt64, to end: UInt64) -> [(virtual: UInt64, physical: UInt64, flags: PageFlags)] {
        var pages: [(virtual: UInt64, physical: UInt64, flags: PageFlags)] = []
        func walk(table: UInt64, level: Int, base: UInt64) {
            let span = UInt64(1) << (12 + 9 * UInt64(level))
            for index in 0..<UInt64(512) {
                let low = base + index * span
                if low >= end { return }
                guard low + span > start else { continue }
                let entry = memory.load(UInt64.self, at: table + index * 8)
                guard entry & PageFlags.present.rawValue != 0 else { continue }
                if level == 0 {
                    pages.append((low, entry & Self.entryAddressMask, PageFlags(rawValue: entry & ~Self.entryAddressMask)))
                } else {
                    walk(table: entry & Self.entryAddressMask, level: level - 1, base: low)
                }
            }
        }
        if start < end { walk(table: root, level: 3, base: 0) }
        return pages
    }

    /// Guest-physical address of the leaf entry for `virtual`, or nil if a table on the way is missing
    /// (and `create` is false) or no page is left for a new table.
    private func leafSlot(_ virtual: UInt64, create: Bool) throws -> UInt64? {
        var table = root
        for level in stride(from: 3, through: 1, by: -1) {
            let index = (virtual >> (12 + 9 * UInt64(level))) & 0x1FF
            let slot = table + index * 8
            let entry = memory.load(UInt64.self, at: slot)
            if entry & PageFlags.present.rawValue != 0 {
                table = entry & Self.entryAddressMask
                continue
            }
            guard create else { return nil }
            guard let page = allocator.allocate() else { throw MapError.outOfMemory }
            memory.store(page | Self.tableFlags.rawValue, at: slot)
            table = page
        }
        return table + ((virtual >> 12) & 0x1FF) * 8
    }
}
