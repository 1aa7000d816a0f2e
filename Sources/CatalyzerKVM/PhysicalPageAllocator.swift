/// Hands out 4 KiB guest-physical pages from guest RAM above the system area. Every page it returns
/// reads as zero: fresh memfd pages are zero and freed pages are discarded (hole-punched) before reuse.
/// The memfd's size is the guest's memory cap, so running out is the guest's ENOMEM, never host OOM.
///
/// Every page handed out is charged to `account`, which the processes of one sandbox share: their
/// guest RAM together stays within the sandbox's memory limit, however many processes it forks.
/// Each allocator (one per process image, so one per VM) also charges `kernelOverhead`, what the
/// host kernel holds for a VM with this much guest RAM, for as long as it exists.
public final class PhysicalPageAllocator {
    private let memory: GuestMemory
    private let start: UInt64
    private var nextUnused: UInt64
    private var freed: [UInt64] = []
    public let account: MemoryAccount

    /// What KVM allocates in the host kernel for one VM whose memory slot is `memorySize` bytes:
    /// reverse maps and large-page records for every page of the slot (measured here under PVM:
    /// about 1/400 of the slot: 5 MiB of vmalloc per VM for 2 GiB, 10 MiB for 4 GiB), the
    /// shadow page tables, the VM and vCPU structures. It is the host memory a process costs
    /// beside its pages, so a sandbox of many small processes is bounded by `--memory` as well.
    public static func kernelOverhead(memorySize: Int) -> Int { memorySize / 256 + (256 << 10) }

    /// The kernel overhead charged (none when the allocator has an account of its own).
    private let overhead: Int

    /// A fresh allocator (a new process image); its VM's kernel overhead is charged to a shared
    /// `account` whether or not it fits (the caller checks `account.available` first).
    public init(memory: GuestMemory, start: UInt64 = SystemLayout.firstFreePhysical, account: MemoryAccount? = nil) {
        self.memory = memory
        self.start = start
        self.nextUnused = start
        self.account = account ?? MemoryAccount(limit: memory.size)
        overhead = account == nil ? 0 : Self.kernelOverhead(memorySize: memory.size)
        self.account.forceCharge(overhead)
    }

    /// The same allocation state over `memory`, a copy of this allocator's memory (fork); nil
    /// when the shared account cannot take the copy's pages.
    public init?(copying other: PhysicalPageAllocator, memory: GuestMemory) {
        self.memory = memory
        self.start = other.start
        self.nextUnused = other.nextUnused
        self.freed = other.freed
        self.account = other.account
        overhead = other.overhead
        guard account.charge(usedBytes + overhead) else {
            nextUnused = start
            freed = []
            account.forceCharge(overhead)  // deinit gives it back
            return nil
        }
    }

    /// The allocation state a checkpoint recorded, over the restored `memory`.
    public init(memory: GuestMemory, start: UInt64, nextUnused: UInt64, freed: [UInt64], account: MemoryAccount? = nil) {
        self.memory = memory
        self.start = start
        self.nextUnused = nextUnused
        self.freed = freed
        self.account = account ?? MemoryAccount(limit: memory.size)
        overhead = account == nil ? 0 : Self.kernelOverhead(memorySize: memory.size)
        self.account.forceCharge(usedBytes + overhead)
    }

    deinit { account.release(usedBytes + overhead) }

    /// What a checkpoint records: where allocation started, the high-water mark, the free list.
    public var state: (start: UInt64, nextUnused: UInt64, freed: [UInt64]) { (start, nextUnused, freed) }

    /// Bytes of guest RAM currently handed out (page tables included).
    public var usedBytes: Int { Int(nextUnused - start) - freed.count * GuestMemory.pageSize }

    /// A zeroed page's guest-physical address, or nil when guest RAM is exhausted.
    public func allocate() -> UInt64? {
        guard account.charge(GuestMemory.pageSize) else { return nil }
        let page: UInt64
        if let reused = freed.popLast() {
            page = reused
        } else if nextUnused + UInt64(GuestMemory.pageSize) <= UInt64(memory.size) {
            page = nextUnused
            nextUnused += UInt64(GuestMemory.pageSize)
        } else {
            account.release(GuestMemory.pageSize)
            return nil
        }
        return page
    }

    /// Returns a page; its contents are discarded, which also drops KVM's translations to it.
    public func free(_ page: UInt64) {
        free([page])
    }

    /// Returns pages, discarding each contiguous run with one host call.
    public func free(_ pages: [UInt64]) {
        for run in GuestMemory.contiguousRuns(pages) { memory.discard(pageAt: run.start, count: run.count) }
        freed.append(contentsOf: pages)
        account.release(pages.count * GuestMemory.pageSize)
    }
}

/// Everything one sandbox makes the host hold for it, charged against one limit: `--memory`.
/// The sandbox's monitor owns one account and every resource it keeps for the guest draws from it:
///
/// - guest RAM: every page a `PhysicalPageAllocator` hands out (program pages and page tables)
///   in every process, so a fork takes the copy of its parent's pages from the same budget and
///   fails with ENOMEM when they do not fit;
/// - each process's VM in the host kernel (`PhysicalPageAllocator.kernelOverhead`: KVM's reverse
///   maps cover the whole memory slot, so every process costs about 1/256 of `--memory` beside
///   its pages): fork and execve get ENOMEM when it does not fit;
/// - `/tmp` and `/dev/shm` file bytes (a tmpfs's pages are RAM): a write or truncate that does
///   not fit is ENOSPC (`MemoryFilesystem`);
/// - pipe buffers, as they grow: a writer waits for the reader, or gets ENOMEM when an empty
///   pipe cannot get a page (`Pipe`);
/// - socket receive queues, bytes plus a per-message overhead: a send that does not fit is
///   ENOMEM (`SandboxSocket`).
///
/// What stays outside: the monitor's own small per-process records and file descriptions
/// (bounded by the task and fd limits), zombies until reaped (bounded by the time forks take),
/// and transient buffers of one syscall (bounded per call).
/// Used only by the sandbox's monitor thread.
public final class MemoryAccount {
    public let limit: Int
    public private(set) var used = 0

    public init(limit: Int) { self.limit = limit }

    /// Bytes still free under the limit.
    public var available: Int { max(0, limit - used) }

    /// Takes `bytes` if they fit under the limit.
    public func charge(_ bytes: Int) -> Bool {
        guard bytes <= limit - used else { return false }
        used += bytes
        return true
    }

    /// Takes `bytes` whether or not they fit: what a checkpoint held is restored as it was.
    public func forceCharge(_ bytes: Int) { used += max(0, bytes) }

    public func release(_ bytes: Int) { used = max(0, used - bytes) }
}
