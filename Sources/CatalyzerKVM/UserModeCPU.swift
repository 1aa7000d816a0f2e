import CKVM

/// What stopped the user program and handed control to the monitor.
public enum Trap: Equatable {
    /// A `syscall` instruction: number in RAX, arguments in RDI RSI RDX R10 R8 R9 (see `registers`).
    case syscall
    /// A CPU exception raised in user mode.
    case exception(ExceptionInfo)
    /// `ExitRequester.requestExit()` stopped the vCPU (timeout).
    case interrupted
    /// The guest can no longer run (e.g. a fault in CPL0 code, a triple fault, an emulation failure).
    case fatal(String)
}

public struct ExceptionInfo: Equatable, Sendable {
    public let vector: Int
    public let errorCode: UInt64
    /// The faulting address for a page fault (#PF, vector 14).
    public let faultAddress: UInt64
    public let rip: UInt64

    public init(vector: Int, errorCode: UInt64, faultAddress: UInt64, rip: UInt64) {
        self.vector = vector
        self.errorCode = errorCode
        self.faultAddress = faultAddress
        self.rip = rip
    }

    public static let pageFault = 14
}

/// A vCPU that runs 64-bit user-mode (CPL3) code with the monitor as its kernel. `run()` enters user
/// mode with `registers`; when the program traps, `registers` holds its user-mode state (RIP after
/// the `syscall`, or the faulting instruction's RIP) and the monitor edits it before the next `run()`.
/// Returning to user mode is done by setting registers, since `sysretq` triple-faults under PVM;
/// segment registers are only reloaded when CPL0 code (an exception stub) ran.
public final class UserModeCPU {
    public let vm: VM
    public let pageTables: PageTables
    /// The user program's general-purpose registers.
    public var registers = kvm_regs()
    /// Segment and control state that puts the vCPU at CPL3; restored when a trap left CPL3.
    private var userSpecialRegisters: kvm_sregs
    /// Whether the next entry must reload `userSpecialRegisters` (after CPL0 ran, or FS/GS changed).
    private var needsUserSegments = true
    private let doorbell: UInt64

    /// Continues `parent`'s user context in `vm`, whose memory is a copy of the parent's (fork).
    public convenience init(vm: VM, pageTables: PageTables, continuing parent: UserModeCPU) throws {
        try self.init(vm: vm, pageTables: pageTables)
        registers = parent.registers
        fsBase = parent.fsBase
        gsBase = parent.gsBase
        try vm.vcpu.setXSAVEArea(parent.vm.vcpu.xsaveArea())
    }

    /// A fresh vCPU in 64-bit mode whose guest memory gets the system area written into it now.
    public convenience init(vm: VM, pageTables: PageTables) throws {
        let userSpecialRegisters = try LongMode.configure(vm: vm, pageTables: pageTables)
        self.init(vm: vm, pageTables: pageTables, userSpecialRegisters: userSpecialRegisters)
        registers.rflags = 0x202  // IF and the always-one bit
    }

    /// Resumes a checkpointed program on `vm`, whose memory is the checkpoint's (system area and
    /// page tables included). Refuses state that uses CPU features this host's KVM lacks, since
    /// the program's libraries chose their code paths (AVX-512, say) when it initialized.
    public convenience init(vm: VM, pageTables: PageTables, restoring state: VCPUState) throws {
        guard state.registers.count == VCPUState.registersSize,
              state.specialRegisters.count == VCPUState.specialRegistersSize,
              state.xsaveArea.count == VCPUState.xsaveAreaSize else {
            throw VCPUStateError(description: "vCPU state has registers of \(state.registers.count)/\(state.specialRegisters.count)/\(state.xsaveArea.count) bytes, expected \(VCPUState.registersSize)/\(VCPUState.specialRegistersSize)/\(VCPUState.xsaveAreaSize)")
        }
        let cpuid = try vm.kvm.supportedCPUID()
        let available = CPUID.xcr0(from: cpuid)
        guard state.xcr0 & ~available == 0 else {
            throw VCPUStateError(description: "the checkpoint uses CPU state components (XCR0 0x\(String(state.xcr0, radix: 16))) this host does not offer (XCR0 0x\(String(available, radix: 16))); restore it on a host with the same CPU features, or re-checkpoint here")
        }
        try vm.vcpu.setCPUID(cpuid)
        let special = VCPUState.value(state.specialRegisters, zero: kvm_sregs())
        try vm.vcpu.setSpecialRegisters(special)
        try vm.vcpu.setXCR0(state.xcr0)
        for register in state.modelSpecificRegisters { try vm.vcpu.setMSR(register.index, register.value) }
        try vm.vcpu.setXSAVEArea(state.xsaveArea)
        self.init(vm: vm, pageTables: pageTables, userSpecialRegisters: special)
        registers = VCPUState.value(state.registers, zero: kvm_regs())
    }

    private init(vm: VM, pageTables: PageTables, userSpecialRegisters: kvm_sregs) {
        self.vm = vm
        self.pageTables = pageTables
        self.userSpecialRegisters = userSpecialRegisters
        self.doorbell = LongMode.doorbellPhysicalAddress(vm.memory)
        vm.vcpu.enableRegisterSynchronization(kvm: vm.kvm)
    }

    /// The program's CPU state between traps, for a checkpoint.
    public func captureState() throws -> VCPUState {
        let vcpu = vm.vcpu
        return VCPUState(
            registers: VCPUState.bytes(of: registers),
            specialRegisters: VCPUState.bytes(of: userSpecialRegisters),
            xsaveArea: try vcpu.xsaveArea(),
            xcr0: try vcpu.xcr0(),
            modelSpecificRegisters: try VCPUState.savedRegisterIndices.map { .init(index: $0, value: try vcpu.msr($0)) })
    }

    /// The FS segment base (thread pointer), set by `arch_prctl(ARCH_SET_FS)`.
    public var fsBase: UInt64 {
        get { userSpecialRegisters.fs.base }
        set {
            userSpecialRegisters.fs.base = newValue
            needsUserSegments = true
        }
    }

    public var gsBase: UInt64 {
        get { userSpecialRegisters.gs.base }
        set {
            userSpecialRegisters.gs.base = newValue
            needsUserSegments = true
        }
    }

    /// Runs the user program until it traps.
    public func run() throws -> Trap {
        let vcpu = vm.vcpu
        if needsUserSegments {
            try vcpu.stageSpecialRegisters(userSpecialRegisters)
            needsUserSegments = false
        }
        try vcpu.stageRegisters(registers)
        let exit = try vcpu.run()
        switch exit {
        case .mmio(let address, true) where address == doorbell:
            registers = try vcpu.exitRegisters()
            // `syscall` saved the user RIP in RCX and RFLAGS in R11; Linux returns with them unchanged.
            registers.rip = registers.rcx
            registers.rflags = registers.r11
            // Under PVM the gateway ran at CPL3; where `syscall` really entered CPL0, return to CPL3.
            needsUserSegments = try vcpu.exitSpecialRegisters().cs.dpl != 3
            return .syscall
        case .mmio(let address, _):
            return .fatal("access to unbacked guest-physical address 0x\(String(address, radix: 16))")
        case .portWrite(let port)
            where port >= TrapStubs.exceptionPortBase
            && port < TrapStubs.exceptionPortBase + UInt16(TrapStubs.exceptionVectorCount):
            return try exceptionTrap(vector: Int(port - TrapStubs.exceptionPortBase))
        case .portWrite(let port):
            return .fatal("unexpected port write 0x\(String(port, radix: 16))")
        case .interrupted:
            // If KVM_RUN was interrupted mid-way the vCPU is still in user mode; keep its state.
            registers = try vcpu.exitRegisters()
            return .interrupted
        case .halt:
            return .fatal("guest halted in CPL0 at rip 0x\(String(try vcpu.exitRegisters().rip, radix: 16))")
        case .shutdown:
            return .fatal("guest triple fault (shutdown)")
        case .internalError(let suberror):
            return .fatal("KVM internal error \(suberror) (instruction emulation failed?)")
        case .failEntry(let reason):
            return .fatal("VM entry failed, reason 0x\(String(reason, radix: 16))")
        case .other(let reason):
            return .fatal("unexpected KVM exit \(reason)")
        }
    }

    /// Reads the frame the CPU pushed on the RSP0 stack and turns the trap into the user's view.
    private func exceptionTrap(vector: Int) throws -> Trap {
        let memory = vm.memory
        needsUserSegments = true
        registers = try vm.vcpu.exitRegisters()
        let hasErrorCode = TrapStubs.pushesErrorCode(vector: vector)
        var frame = SystemLayout.kernelStackTop - (hasErrorCode ? 48 : 40)
        let errorCode = hasErrorCode ? memory.load(UInt64.self, at: frame) : 0
        if hasErrorCode { frame += 8 }
        let rip = memory.load(UInt64.self, at: frame)
        let cs = memory.load(UInt64.self, at: frame + 8)
        let rflags = memory.load(UInt64.self, at: frame + 16)
        let rsp = memory.load(UInt64.self, at: frame + 24)
        guard cs & 3 == 3 else {
            return .fatal("exception \(vector) in CPL0 at rip 0x\(String(rip, radix: 16))")
        }
        let faultAddress = vector == ExceptionInfo.pageFault ? try vm.vcpu.exitSpecialRegisters().cr2 : 0
        registers.rip = rip
        registers.rsp = rsp
        registers.rflags = rflags
        return .exception(ExceptionInfo(vector: vector, errorCode: errorCode, faultAddress: faultAddress, rip: rip))
    }
}
