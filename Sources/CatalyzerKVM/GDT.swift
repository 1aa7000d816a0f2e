import CKVM

/// The global descriptor table, laid out like Linux's so user code sees the usual selectors
/// (CS 0x33, SS 0x2b) and `syscall` (STAR) loads kernel CS 0x10 / SS 0x18.
public enum GDT {
    public static let kernelCode: UInt16 = 0x10
    public static let kernelData: UInt16 = 0x18
    public static let userCode32: UInt16 = 0x23
    public static let userData: UInt16 = 0x2B
    public static let userCode: UInt16 = 0x33
    public static let taskState: UInt16 = 0x40
    /// Bytes used: 8 eight-byte descriptors plus the 16-byte TSS descriptor.
    static let size = 0x50

    /// Writes the table at `SystemLayout.gdt`.
    static func write(into memory: GuestMemory) {
        func descriptor(access: UInt64, flags: UInt64) -> UInt64 {
            // base 0, limit 0xFFFFF (4 GiB with G=1): only L/DPL/type matter in long mode.
            0xFFFF | (0xF << 48) | (access << 40) | (flags << 52)
        }
        let table = SystemLayout.gdt
        memory.store(descriptor(access: 0x9B, flags: 0xA), at: table + UInt64(kernelCode))   // P, DPL0, code, L
        memory.store(descriptor(access: 0x93, flags: 0xC), at: table + UInt64(kernelData))   // P, DPL0, data
        memory.store(descriptor(access: 0xFB, flags: 0xC), at: table + UInt64(userCode32 & ~3))  // DPL3 32-bit code
        memory.store(descriptor(access: 0xF3, flags: 0xC), at: table + UInt64(userData & ~3))    // DPL3 data
        memory.store(descriptor(access: 0xFB, flags: 0xA), at: table + UInt64(userCode & ~3))    // DPL3 code, L
        let base = SystemLayout.tss
        let limit = UInt64(TSS.size - 1)
        let low = (limit & 0xFFFF) | ((base & 0xFF_FFFF) << 16) | (0x8B << 40) | (((base >> 24) & 0xFF) << 56)
        memory.store(low, at: table + UInt64(taskState))                 // P, busy 64-bit TSS
        memory.store(base >> 32, at: table + UInt64(taskState) + 8)
    }

    /// The segment registers as KVM wants them in `kvm_sregs`.
    static func segment(selector: UInt16, code: Bool, dpl: UInt8, longMode: Bool) -> kvm_segment {
        var segment = kvm_segment()
        segment.base = 0
        segment.limit = 0xFFFF_FFFF
        segment.selector = selector
        segment.type = code ? 0xB : 0x3  // execute/read or read/write, accessed
        segment.present = 1
        segment.dpl = dpl
        segment.db = (code && longMode) ? 0 : 1
        segment.s = 1
        segment.l = (code && longMode) ? 1 : 0
        segment.g = 1
        return segment
    }

    static func taskRegister() -> kvm_segment {
        var segment = kvm_segment()
        segment.base = SystemLayout.tss
        segment.limit = UInt32(TSS.size - 1)
        segment.selector = taskState
        segment.type = 0xB  // busy 64-bit TSS
        segment.present = 1
        return segment
    }

    static func unusableLDT() -> kvm_segment {
        var segment = kvm_segment()
        segment.type = 0x2
        segment.unusable = 1
        return segment
    }
}
