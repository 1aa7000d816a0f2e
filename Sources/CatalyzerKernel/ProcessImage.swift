import CKVM
import CatalyzerKVM
import Glibc

/// A process's memory and the vCPU that runs it (Linux's `mm`): the VM with its guest memory, the
/// address space, the vDSO clock page. Shared by the threads of a process (CLONE_VM); `fork` copies
/// it into a new VM; `execve` replaces it.
///
/// The threads of one image take turns on its single vCPU: `load(_:)` switches the user context
/// (registers, FS/GS base, XSAVE area) in the monitor. Measured here, a switch costs a few µs of
/// ioctls, far below the ~26 µs of the syscall trap that causes it; a vCPU per thread would need a
/// second system area (GDT, TSS, trap stack) per vCPU in guest memory.
final class ProcessImage {
    let cpu: UserModeCPU
    let space: AddressSpace
    /// The clock data behind the vDSO, refreshed before every return to the guest.
    let clock: GuestClock
    /// The guest path of the running executable (`/proc/self/exe`).
    let executablePath: String
    /// argv as execve passed it, for /proc/PID/cmdline (empty after a restore: the executable
    /// path stands in).
    var commandLine: [String] = []
    /// The task whose context is in the vCPU now.
    private(set) weak var loadedTask: Task?

    init(cpu: UserModeCPU, space: AddressSpace, clock: GuestClock, executablePath: String) {
        self.cpu = cpu
        self.space = space
        self.clock = clock
        self.executablePath = executablePath
    }

    var memory: GuestMemory { space.memory }

    /// Puts `task`'s user context on the vCPU, saving the previous task's first.
    func load(_ task: Task) throws {
        guard loadedTask !== task else { return }
        if let previous = loadedTask, previous.state != .exited {
            previous.context = TaskContext(registers: cpu.registers, fsBase: cpu.fsBase, gsBase: cpu.gsBase,
                                           extendedState: try cpu.vm.vcpu.xsaveArea())
        }
        loadedTask = task
        cpu.registers = task.context.registers
        if cpu.fsBase != task.context.fsBase { cpu.fsBase = task.context.fsBase }
        if cpu.gsBase != task.context.gsBase { cpu.gsBase = task.context.gsBase }
        if let state = task.context.extendedState { try cpu.vm.vcpu.setXSAVEArea(state) }
    }

    /// Forgets the loaded task without saving it (it exited).
    func unload(_ task: Task) {
        if loadedTask === task { loadedTask = nil }
    }

    /// A fresh VM with `path` loaded and its initial stack built: a new process image, and the
    /// user context its first task starts with.
    static func load(kvm: KVM, memorySize: Int, account: MemoryAccount, exitRequester: ExitRequester, filesystem: Filesystem,
                     path: String, arguments: [String], environment: [String],
                     credentials: Credentials) throws -> (ProcessImage, TaskContext) {
        // execve: the new image must fit beside the old one until it replaces it.
        guard PhysicalPageAllocator.kernelOverhead(memorySize: memorySize) <= account.available else { throw Errno.ENOMEM }
        let memory = try GuestMemory(size: memorySize)
        let allocator = PhysicalPageAllocator(memory: memory, account: account)
        let pageTables = PageTables(memory: memory, allocator: allocator)
        let vm = try VM(kvm: kvm, memory: memory, exitRequester: exitRequester)
        let cpu = try UserModeCPU(vm: vm, pageTables: pageTables)
        let space = AddressSpace(memory: memory, allocator: allocator, pageTables: pageTables)
        let fd = try filesystem.openExecutable(path)
        defer { close(fd) }
        let program = try ELFLoader.load(fd: fd, path: path, into: space) { (interpreter) throws(Errno) in
            try filesystem.openExecutable(GuestPath.normalize(interpreter))
        }
        space.breakStart = program.end
        space.breakEnd = program.end
        try space.map(AddressSpace.stackTop - AddressSpace.stackLimit, AddressSpace.stackTop,
                      protection: .readWrite, name: "[stack]", lazy: true)
        let vdso = try VirtualDSO.map(into: space)
        let clock = try GuestClock(pageAddress: vdso + VirtualDSO.clockDataOffset, space: space, vcpu: vm.vcpu)
        let stack = InitialStack(arguments: arguments, environment: environment, executablePath: path,
                                 program: program, vdso: vdso, credentials: credentials)
        var context = TaskContext()
        context.registers = cpu.registers
        context.registers.rsp = try stack.build(in: space, top: AddressSpace.stackTop)
        context.registers.rip = program.entry
        let image = ProcessImage(cpu: cpu, space: space, clock: clock, executablePath: path)
        image.commandLine = arguments
        return (image, context)
    }

    // MARK: persistence: save (checkpoint), restore, clone (fork)

    /// The image's part of a checkpoint: the vCPU (with `registers`, the ready thread's), the
    /// address space's bookkeeping (its page tables are in guest memory) and the vDSO clock page.
    struct State {
        var vcpu: VCPUState
        var pageTableRoot: UInt64
        var allocator: KernelSnapshot.AllocatorState
        var regions: [KernelSnapshot.Region]
        var breakStart: UInt64
        var breakEnd: UInt64
        var clockPage: UInt64
        var clockFrame: UInt64
    }

    func save(registers: kvm_regs) throws -> State {
        var vcpu = try cpu.captureState()
        vcpu.registers = VCPUState.bytes(of: registers)
        let allocation = space.allocator.state
        return State(vcpu: vcpu, pageTableRoot: space.pageTables.root,
                     allocator: .init(start: allocation.start, nextUnused: allocation.nextUnused, freed: allocation.freed),
                     regions: space.regions.map { .init(start: $0.start, end: $0.end, protection: $0.protection.rawValue, name: $0.name) },
                     breakStart: space.breakStart, breakEnd: space.breakEnd,
                     clockPage: clock.pageAddress, clockFrame: clock.physicalPage)
    }

    /// The checkpointed image in `vm`, whose memory is the checkpoint's guest memory.
    convenience init(restoring snapshot: KernelSnapshot, vm: VM, account: MemoryAccount) throws {
        let memory = vm.memory
        let allocator = PhysicalPageAllocator(memory: memory, start: snapshot.allocator.start,
                                              nextUnused: snapshot.allocator.nextUnused, freed: snapshot.allocator.freed,
                                              account: account)
        let pageTables = PageTables(memory: memory, allocator: allocator, root: snapshot.pageTableRoot)
        let cpu = try UserModeCPU(vm: vm, pageTables: pageTables, restoring: snapshot.vcpu)
        let space = AddressSpace(memory: memory, allocator: allocator, pageTables: pageTables)
        space.restoreRegions(snapshot.regions.map {
            MemoryRegion(start: $0.start, end: $0.end, protection: Protection(rawValue: $0.protection), name: $0.name, pristineCopy: nil)
        })
        space.breakStart = snapshot.breakStart
        space.breakEnd = snapshot.breakEnd
        let clock = GuestClock(pageAddress: snapshot.clockPage, physicalPage: snapshot.clockFrame, vcpu: vm.vcpu)
        self.init(cpu: cpu, space: space, clock: clock, executablePath: snapshot.process.executablePath)
    }

    /// A copy of this image in a new VM (fork): memory, address space and clock page. The child's
    /// task gets its context from the parent task separately.
    func fork(kvm: KVM, exitRequester: ExitRequester) throws -> ProcessImage {
        let needed = space.allocator.usedBytes + PhysicalPageAllocator.kernelOverhead(memorySize: memory.size)
        guard needed <= space.allocator.account.available else {
            throw Errno.ENOMEM  // the sandbox's processes together would exceed its memory
        }
        let memory = try space.memory.copy(inUse: Int(space.allocator.state.nextUnused)) { exitRequester.isExitRequested }
        guard let allocator = PhysicalPageAllocator(copying: space.allocator, memory: memory) else { throw Errno.ENOMEM }
        let pageTables = PageTables(memory: memory, allocator: allocator, root: space.pageTables.root)
        let vm = try VM(kvm: kvm, memory: memory, exitRequester: exitRequester)
        let childCPU = try UserModeCPU(vm: vm, pageTables: pageTables, continuing: cpu)
        let childSpace = AddressSpace(copying: space, memory: memory, allocator: allocator, pageTables: pageTables)
        let child = ProcessImage(cpu: childCPU, space: childSpace, clock: GuestClock(copying: clock),
                                 executablePath: executablePath)
        child.commandLine = commandLine
        return child
    }
}
