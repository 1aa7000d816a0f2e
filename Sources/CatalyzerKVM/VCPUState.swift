import CKVM

/// Everything about a user-mode vCPU a checkpoint must carry to resume the program on a new VM:
/// general-purpose registers, the CPL3 segment and control registers (with the FS/GS bases), the
/// FPU/SSE/AVX state, XCR0 and the MSRs the monitor sets. The KVM structs are kept as their raw
/// bytes: they are the kernel's stable ABI, and the snapshot format stores them as they are.
public struct VCPUState: Sendable, Equatable {
    /// `struct kvm_regs` as the program left it (at a trap: RIP after the `syscall`).
    public var registers: [UInt8]
    /// `struct kvm_sregs` that puts the vCPU in user mode.
    public var specialRegisters: [UInt8]
    /// The XSAVE area (`struct kvm_xsave`).
    public var xsaveArea: [UInt8]
    public var xcr0: UInt64
    public var modelSpecificRegisters: [ModelSpecificRegister]

    public struct ModelSpecificRegister: Sendable, Equatable {
        public var index: UInt32
        public var value: UInt64
        public init(index: UInt32, value: UInt64) {
            self.index = index
            self.value = value
        }
    }

    public init(registers: [UInt8], specialRegisters: [UInt8], xsaveArea: [UInt8], xcr0: UInt64,
                modelSpecificRegisters: [ModelSpecificRegister]) {
        self.registers = registers
        self.specialRegisters = specialRegisters
        self.xsaveArea = xsaveArea
        self.xcr0 = xcr0
        self.modelSpecificRegisters = modelSpecificRegisters
    }

    /// The MSRs `LongMode` programs; a restore sets them from the checkpoint.
    static let savedRegisterIndices = [LongMode.MSR.star, LongMode.MSR.lstar, LongMode.MSR.cstar, LongMode.MSR.syscallMask]

    public static let registersSize = MemoryLayout<kvm_regs>.size
    public static let specialRegistersSize = MemoryLayout<kvm_sregs>.size
    public static let xsaveAreaSize = Int(ckvm_xsave_size)

    public static func bytes<T>(of value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    public static func value<T>(_ bytes: [UInt8], zero: T) -> T {
        var value = zero
        withUnsafeMutableBytes(of: &value) { $0.copyBytes(from: bytes.prefix($0.count)) }
        return value
    }
}

/// A checkpoint that cannot resume on this host's vCPU.
public struct VCPUStateError: Error, CustomStringConvertible {
    public let description: String
}
