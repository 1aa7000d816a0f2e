/// The 64-bit task-state segment: only RSP0 matters, the stack the CPU switches to when an exception
/// or interrupt arrives from user mode.
enum TSS {
    static let size = 0x68
    private static let rsp0Offset: UInt64 = 4
    private static let ioMapBaseOffset: UInt64 = 0x66

    static func write(into memory: GuestMemory) {
        memory.store(SystemLayout.kernelStackTop, at: SystemLayout.tss + rsp0Offset)
        memory.store(UInt16(size), at: SystemLayout.tss + ioMapBaseOffset)  // no I/O permission bitmap
    }
}
