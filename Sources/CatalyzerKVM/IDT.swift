/// The interrupt descriptor table: vector N's gate points at trap stub N, running at CPL0 on the TSS
/// RSP0 stack. Only the 32 exception vectors are used; no interrupts are ever injected.
enum IDT {
    static func write(into memory: GuestMemory) {
        for vector in 0..<TrapStubs.exceptionVectorCount {
            let handler = TrapStubs.exceptionStubAddress(vector: vector)
            // int3/into from user mode must raise #BP/#OF, not #GP, so those gates are DPL3.
            let dpl: UInt64 = (vector == 3 || vector == 4) ? 3 : 0
            let typeAttributes: UInt64 = 0x80 | (dpl << 5) | 0xE  // present, 64-bit interrupt gate
            let low = (handler & 0xFFFF) | (UInt64(GDT.kernelCode) << 16) | (typeAttributes << 40)
                | (((handler >> 16) & 0xFFFF) << 48)
            let entry = SystemLayout.idt + UInt64(vector * 16)
            memory.store(low, at: entry)
            memory.store(handler >> 32, at: entry + 8)
        }
    }

    static let limit: UInt16 = UInt16(TrapStubs.exceptionVectorCount * 16 - 1)
}
