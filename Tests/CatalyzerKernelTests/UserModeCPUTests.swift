import CKVM
import CatalyzerKVM
import Glibc
import Testing

/// A bare user-mode machine with one code page at 0x400000 and one stack page below 0x800000.
struct HandAssembledGuest {
    static let codeAddress: UInt64 = 0x40_0000
    static let stackTop: UInt64 = 0x80_0000
    let memory: GuestMemory
    let allocator: PhysicalPageAllocator
    let cpu: UserModeCPU

    init(code: [UInt8]) throws {
        let kvm = try requireKVM()
        memory = try GuestMemory(size: 16 << 20)
        allocator = PhysicalPageAllocator(memory: memory)
        let vm = try VM(kvm: kvm, memory: memory)
        let pageTables = PageTables(memory: memory, allocator: allocator)
        cpu = try UserModeCPU(vm: vm, pageTables: pageTables)
        let codePage = try #require(allocator.allocate())
        memory.write(code, at: codePage)
        try pageTables.map(virtual: Self.codeAddress, physical: codePage, flags: [.user])
        let stackPage = try #require(allocator.allocate())
        try pageTables.map(virtual: Self.stackTop - 4096, physical: stackPage, flags: [.user, .writable, .noExecute])
        cpu.registers.rip = Self.codeAddress
        cpu.registers.rsp = Self.stackTop
    }
}

/// x86-64 encodings used by the hand-assembled guests.
enum Asm {
    static func movEAX(_ value: UInt32) -> [UInt8] { [0xB8] + le(value) }
    static func movEDI(_ value: UInt32) -> [UInt8] { [0xBF] + le(value) }
    static let syscall: [UInt8] = [0x0F, 0x05]
    static let movRBXfromRAX: [UInt8] = [0x48, 0x89, 0xC3]
    /// mov byte [absolute32], imm8
    static func storeByte(_ value: UInt8, at address: UInt32) -> [UInt8] { [0xC6, 0x04, 0x25] + le(address) + [value] }
    /// mov rax, [absolute32]
    static func loadRAX(from address: UInt32) -> [UInt8] { [0x48, 0x8B, 0x04, 0x25] + le(address) }
    /// jmp rel8 back to `offset` bytes before the end of this instruction
    static func jumpBack(_ offset: UInt8) -> [UInt8] { [0xEB, UInt8(truncatingIfNeeded: -Int(offset))] }
    static func le(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) } }
}

@Suite("KVM user mode core", .serialized)
struct UserModeCPUTests {
    @Test("a CPL3 syscall reaches the monitor and gets its return value")
    func syscallRoundTrip() throws {
        let guest = try HandAssembledGuest(code: Asm.movEAX(39) + Asm.movEDI(0x1234) + Asm.syscall
            + Asm.movRBXfromRAX + Asm.movEAX(60) + Asm.syscall)
        #expect(try guest.cpu.run() == .syscall)
        #expect(guest.cpu.registers.rax == 39)
        #expect(guest.cpu.registers.rdi == 0x1234)
        #expect(guest.cpu.registers.rip == HandAssembledGuest.codeAddress + 12)
        guest.cpu.registers.rax = 77
        #expect(try guest.cpu.run() == .syscall)
        #expect(guest.cpu.registers.rax == 60)
        #expect(guest.cpu.registers.rbx == 77)
    }

    @Test("a user write to an unmapped page arrives as #PF with CR2, error code and RIP")
    func pageFault() throws {
        let guest = try HandAssembledGuest(code: Asm.storeByte(1, at: 0x900_0000))
        let trap = try guest.cpu.run()
        #expect(trap == .exception(ExceptionInfo(vector: 14, errorCode: 6, faultAddress: 0x900_0000,
                                                 rip: HandAssembledGuest.codeAddress)))
        #expect(guest.cpu.registers.rsp == HandAssembledGuest.stackTop)
    }

    @Test("unmapping a page the guest already touched makes the next access fault")
    func unmapIsSeenByGuest() throws {
        let data: UInt64 = 0x60_0000
        let guest = try HandAssembledGuest(code: Asm.loadRAX(from: UInt32(data)) + Asm.syscall
            + Asm.loadRAX(from: UInt32(data)) + Asm.syscall)
        let page = try #require(guest.allocator.allocate())
        guest.memory.store(UInt64(0xABCD), at: page)
        try guest.cpu.pageTables.map(virtual: data, physical: page, flags: [.user, .writable])
        #expect(try guest.cpu.run() == .syscall)
        #expect(guest.cpu.registers.rax == 0xABCD)
        let unmapped = guest.cpu.pageTables.unmap(virtual: data)
        #expect(unmapped == page)
        guest.allocator.free(page)
        let trap = try guest.cpu.run()
        #expect(trap == .exception(ExceptionInfo(vector: 14, errorCode: 4, faultAddress: data,
                                                 rip: HandAssembledGuest.codeAddress + 10)))
    }

    @Test("a getpid loop traps on every iteration and resumes where it left off")
    func repeatedSyscalls() throws {
        let guest = try HandAssembledGuest(code: Asm.movEAX(39) + Asm.syscall + Asm.jumpBack(9))
        for _ in 0..<2000 {
            #expect(try guest.cpu.run() == .syscall)
            #expect(guest.cpu.registers.rip == HandAssembledGuest.codeAddress + 7)
            guest.cpu.registers.rax = 1
        }
    }
}
