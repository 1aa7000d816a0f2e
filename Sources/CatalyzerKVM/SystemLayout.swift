/// Where the monitor puts the CPL0 structures in guest-physical memory. They live below 64 KiB, which
/// Linux never lets user space map (`vm.mmap_min_addr`), and are identity-mapped supervisor-only, so
/// the user program cannot read or write them; the exceptions are the syscall gateway (user
/// execute-only code) and the doorbell, which are what `syscall` must reach while PVM keeps it at
/// CPL3. Page 0 stays unmapped so null pointers fault.
public enum SystemLayout {
    public static let gdt: UInt64 = 0x1000
    public static let idt: UInt64 = 0x2000
    public static let tss: UInt64 = 0x3000
    public static let trapStubs: UInt64 = 0x4000
    /// The CPL0 stack used on exceptions (TSS.RSP0); frames are read back by the monitor.
    public static let kernelStackBottom: UInt64 = 0x5000
    public static let kernelStackTop: UInt64 = 0x8000
    public static let pageTableRoot: UInt64 = 0x8000
    /// The `syscall` entry (LSTAR): user-executable code that rings the doorbell (see `TrapStubs`).
    public static let syscallGateway: UInt64 = 0x9000
    /// Virtual page of the syscall doorbell; it maps a guest-physical page with no memory behind it.
    public static let syscallDoorbell: UInt64 = 0xA000
    /// First byte the physical page allocator may hand out.
    public static let firstFreePhysical: UInt64 = 0x10000
    /// Lowest user virtual address (Linux's default `mmap_min_addr`).
    public static let userMinimum: UInt64 = 0x10000
    /// One past the highest user virtual address (47-bit canonical lower half).
    public static let userLimit: UInt64 = 0x7FFF_FFFF_F000
}
