/// The guest code through which the user program leaves for the monitor.
///
/// Exceptions: one CPL0 stub per vector, `out imm8, al; hlt`. The port write exits to the monitor
/// without touching any register; the CPU-pushed frame is on the RSP0 stack.
///
/// `syscall`: LSTAR points at the syscall gateway, `mov [doorbell], al; hlt`, where the doorbell is a
/// page mapped to guest-physical memory outside every slot, so the store is an MMIO exit. Under PVM
/// `syscall` jumps to LSTAR but stays at CPL3 (so the gateway page is user-executable), and the
/// MMIO exit involves no exception delivery: the cheapest way out of the guest measured here. On a
/// VMX host the same gateway runs at CPL0 and exits the same way.
///
/// The monitor resumes user mode by setting registers itself (`sysretq` triple-faults under PVM);
/// a `hlt` is only reached if it does not.
public enum TrapStubs {
    /// Exception vector N exits on port `exceptionPortBase + N`.
    public static let exceptionPortBase: UInt16 = 0x20
    public static let exceptionVectorCount = 32
    static let stubSize: UInt64 = 16

    static func exceptionStubAddress(vector: Int) -> UInt64 {
        SystemLayout.trapStubs + stubSize * UInt64(vector)
    }

    static func write(into memory: GuestMemory) {
        let out: UInt8 = 0xE6, hlt: UInt8 = 0xF4
        let doorbell = UInt32(SystemLayout.syscallDoorbell)
        let storeALToDoorbell: [UInt8] = [0x88, 0x04, 0x25] + (0..<4).map { UInt8(truncatingIfNeeded: doorbell >> ($0 * 8)) }
        memory.write(storeALToDoorbell + [hlt], at: SystemLayout.syscallGateway)
        for vector in 0..<exceptionVectorCount {
            memory.write([out, UInt8(exceptionPortBase) + UInt8(vector), hlt], at: exceptionStubAddress(vector: vector))
        }
    }

    /// Vectors for which the CPU pushes an error code (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX).
    static func pushesErrorCode(vector: Int) -> Bool {
        [8, 10, 11, 12, 13, 14, 17, 21, 29, 30].contains(vector)
    }
}
