import CKVM

/// Control-register, EFER and MSR values for a 64-bit guest whose only CPL0 code is the trap stubs.
enum LongMode {
    static let cr0: UInt64 = 1 << 0 | 1 << 1 | 1 << 4 | 1 << 5 | 1 << 16 | 1 << 31  // PE MP ET NE WP PG
    /// PAE, OSFXSR and OSXMMEXCPT (SSE), OSXSAVE (AVX via XCR0).
    static let cr4: UInt64 = 1 << 5 | 1 << 9 | 1 << 10 | 1 << 18
    static let efer: UInt64 = 1 << 0 | 1 << 8 | 1 << 10 | 1 << 11  // SCE LME LMA NXE

    enum MSR {
        static let star: UInt32 = 0xC000_0081
        static let lstar: UInt32 = 0xC000_0082
        static let cstar: UInt32 = 0xC000_0083
        static let syscallMask: UInt32 = 0xC000_0084
        static let fsBase: UInt32 = 0xC000_0100
        static let gsBase: UInt32 = 0xC000_0101
        static let kernelGSBase: UInt32 = 0xC000_0102
    }

    /// RFLAGS bits `syscall` clears on entry (TF, IF, DF, AC, NT), as Linux does.
    static let syscallFlagMask: UInt64 = 0x47700

    /// The syscall doorbell's guest-physical page: the first one past guest RAM, which no slot covers.
    static func doorbellPhysicalAddress(_ memory: GuestMemory) -> UInt64 { UInt64(memory.size) }

    /// Writes GDT, IDT, TSS and stubs, maps them supervisor-only, and puts the vCPU in 64-bit mode.
    /// Returns the special registers that put the vCPU back in user mode (CPL3).
    static func configure(vm: VM, pageTables: PageTables) throws -> kvm_sregs {
        try installSystemArea(memory: vm.memory, pageTables: pageTables)
        return try configureVCPU(vm: vm, pageTableRoot: pageTables.root)
    }

    /// The CPL0 structures and their supervisor-only mappings, written into guest memory. A
    /// restored guest already has them in its memory image.
    static func installSystemArea(memory: GuestMemory, pageTables: PageTables) throws {
        GDT.write(into: memory)
        IDT.write(into: memory)
        TSS.write(into: memory)
        TrapStubs.write(into: memory)
        var systemPages: [(UInt64, PageFlags)] = [
            (SystemLayout.gdt, [.writable, .noExecute]),
            (SystemLayout.idt, [.noExecute]),
            (SystemLayout.tss, [.writable, .noExecute]),
            (SystemLayout.trapStubs, []),
            (SystemLayout.syscallGateway, [.user]),
        ]
        for page in stride(from: SystemLayout.kernelStackBottom, to: SystemLayout.kernelStackTop, by: GuestMemory.pageSize) {
            systemPages.append((page, [.writable, .noExecute]))
        }
        for (page, flags) in systemPages {
            try pageTables.map(virtual: page, physical: page, flags: flags)
        }
        try pageTables.map(virtual: SystemLayout.syscallDoorbell, physical: doorbellPhysicalAddress(memory),
                           flags: [.user, .writable, .noExecute])
    }

    /// CPUID, control registers, segments, XCR0 and the syscall MSRs of a fresh vCPU whose guest
    /// memory holds the system area.
    static func configureVCPU(vm: VM, pageTableRoot: UInt64) throws -> kvm_sregs {
        let cpuid = try vm.kvm.supportedCPUID()
        try vm.vcpu.setCPUID(cpuid)

        var sregs = try vm.vcpu.specialRegisters()
        sregs.cr0 = cr0
        sregs.cr3 = pageTableRoot
        sregs.cr4 = cr4
        sregs.efer = efer
        sregs.gdt.base = SystemLayout.gdt
        sregs.gdt.limit = UInt16(GDT.size - 1)
        sregs.idt.base = SystemLayout.idt
        sregs.idt.limit = IDT.limit
        sregs.tr = GDT.taskRegister()
        sregs.ldt = GDT.unusableLDT()
        sregs.cs = GDT.segment(selector: GDT.userCode, code: true, dpl: 3, longMode: true)
        let userData = GDT.segment(selector: GDT.userData, code: false, dpl: 3, longMode: true)
        sregs.ss = userData
        sregs.ds = userData
        sregs.es = userData
        sregs.fs = userData
        sregs.gs = userData
        try vm.vcpu.setSpecialRegisters(sregs)

        try vm.vcpu.setXCR0(CPUID.xcr0(from: cpuid))
        try vm.vcpu.setMSR(MSR.star, UInt64(GDT.kernelCode) << 32 | UInt64(GDT.userCode32) << 48)
        try vm.vcpu.setMSR(MSR.lstar, SystemLayout.syscallGateway)
        try vm.vcpu.setMSR(MSR.cstar, SystemLayout.syscallGateway)
        try vm.vcpu.setMSR(MSR.syscallMask, syscallFlagMask)
        return sregs
    }
}
