import CKVM
import CatalyzerKVM
import Glibc

/// The monitor acting as the guest program's kernel: it owns the VM, the address space, the files
/// and the process state, and serves every syscall and fault the program traps with.
public final class Kernel {
    let kvm: KVM
    /// The process image: replaced by execve.
    private(set) var cpu: UserModeCPU
    private(set) var space: AddressSpace
    /// The clock data behind the process's vDSO, refreshed before every return to the guest.
    private(set) var clock: GuestClock
    let memorySize: Int
    /// Shared by all processes of the sandbox (like a mount namespace).
    let filesystem: Filesystem
    let files: FileTable
    /// Shared by all processes of the sandbox (like a pid namespace).
    let processes: ProcessTable
    let pid: Int32
    let parentPID: Int32
    /// The guest path of the running executable (`/proc/self/exe`).
    var executablePath: String
    var workingDirectory = "/"
    var credentials = Credentials()
    /// The task name (`prctl(PR_SET_NAME)`), initially the executable's base name.
    var taskName: String
    /// Recorded `rt_sigaction` dispositions (the 32-byte kernel `struct sigaction`), by signal number.
    var signalActions: [Int32: [UInt8]] = [:]
    var signalMask: UInt64 = 0
    var fileCreationMask: UInt32 = 0o022
    let traceSyscalls: Bool
    /// Where `--strace` lines go: the host fd behind the guest's stderr.
    let traceFD: Int32
    /// Set by exit/exit_group or a fatal signal; ends the run loop.
    var pendingExit: SandboxExit?
    /// Unimplemented syscall numbers the program tried, with counts (each got ENOSYS).
    public internal(set) var unimplementedSyscalls: [Int: Int] = [:]
    public internal(set) var syscallCount = 0
    /// User page faults that reached the monitor (resolved or fatal); KVM's shadow-paging fills
    /// that never leave the guest are not counted.
    public internal(set) var pageFaultCount = 0
    /// Guest RAM in use right now (program pages and page tables), in bytes.
    public var memoryInUse: Int { space.allocator.usedBytes }
    private let table = SyscallTable.definitions()

    /// Lets another thread stop the sandbox (timeouts); shared by all its processes.
    public let exitRequester: ExitRequester

    /// Creates the VM, loads the program and builds its initial stack; the program starts on `run()`.
    public init(configuration: SandboxConfiguration, kvm: KVM? = nil) throws {
        self.kvm = try kvm ?? KVM()
        memorySize = configuration.memorySize
        exitRequester = ExitRequester()
        filesystem = try Filesystem(rootDirectory: configuration.rootDirectory, tmpCapacity: configuration.memorySize)
        files = FileTable()
        processes = ProcessTable()
        pid = processes.allocatePID()
        parentPID = 0
        traceSyscalls = configuration.traceSyscalls
        traceFD = configuration.standardStreams.count > 2 ? configuration.standardStreams[2] : 2
        executablePath = GuestPath.normalize(configuration.programPath)
        taskName = Self.taskName(of: executablePath)
        (cpu, space, clock) = try Self.loadImage(kvm: self.kvm, memorySize: memorySize, exitRequester: exitRequester,
                                                 filesystem: filesystem, path: executablePath,
                                                 arguments: configuration.arguments,
                                                 environment: configuration.environment, credentials: credentials)
        filesystem.executablePath = executablePath
        try installStandardStreams(configuration.standardStreams)
        workingDirectory = GuestPath.normalize(configuration.workingDirectory)
    }

    /// A child process: a copy of `parent`'s memory in a new VM, sharing its open files (fork).
    init(forkOf parent: Kernel) throws {
        kvm = parent.kvm
        memorySize = parent.memorySize
        exitRequester = parent.exitRequester
        let memory = try parent.space.memory.copy()
        let allocator = PhysicalPageAllocator(copying: parent.space.allocator, memory: memory)
        let pageTables = PageTables(memory: memory, allocator: allocator, root: parent.space.pageTables.root)
        let vm = try VM(kvm: kvm, memory: memory, exitRequester: exitRequester)
        cpu = try UserModeCPU(vm: vm, pageTables: pageTables, continuing: parent.cpu)
        space = AddressSpace(copying: parent.space, memory: memory, allocator: allocator, pageTables: pageTables)
        clock = GuestClock(copying: parent.clock)
        filesystem = parent.filesystem
        files = FileTable(copying: parent.files)
        processes = parent.processes
        pid = processes.allocatePID()
        parentPID = parent.pid
        executablePath = parent.executablePath
        workingDirectory = parent.workingDirectory
        credentials = parent.credentials
        taskName = parent.taskName
        signalActions = parent.signalActions
        signalMask = parent.signalMask
        fileCreationMask = parent.fileCreationMask
        traceSyscalls = parent.traceSyscalls
        traceFD = parent.traceFD
    }

    /// A fresh VM with `path` loaded and its initial stack built: a new process image.
    static func loadImage(kvm: KVM, memorySize: Int, exitRequester: ExitRequester, filesystem: Filesystem,
                          path: String, arguments: [String], environment: [String],
                          credentials: Credentials) throws -> (UserModeCPU, AddressSpace, GuestClock) {
        let memory = try GuestMemory(size: memorySize)
        let allocator = PhysicalPageAllocator(memory: memory)
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
        cpu.registers.rsp = try stack.build(in: space, top: AddressSpace.stackTop)
        cpu.registers.rip = program.entry
        return (cpu, space, clock)
    }

    /// Replaces the process image (execve); called once the new image is fully built.
    func replaceImage(cpu: UserModeCPU, space: AddressSpace, clock: GuestClock, path: String) {
        self.cpu = cpu
        self.space = space
        self.clock = clock
        executablePath = path
        filesystem.executablePath = path
        taskName = Self.taskName(of: path)
    }

    private static func taskName(of path: String) -> String {
        String(GuestPath.components(path).last?.prefix(15) ?? "")
    }

    private func installStandardStreams(_ hostFDs: [Int32]) throws(Errno) {
        for (guestFD, hostFD) in hostFDs.prefix(3).enumerated() {
            let flags = fcntl(hostFD, F_GETFL)
            guard flags >= 0 else { continue }  // a closed host stream stays closed in the guest
            let file = OpenFile(backing: .host(fd: hostFD, owned: false), guestPath: "/dev/stdio", statusFlags: flags)
            try files.install(file, at: Int32(guestFD), closeOnExec: false)
        }
    }

    /// Runs the program until it exits, is killed, or `exitRequester` stops it.
    public func run() throws -> SandboxExit {
        // Children run nested on this same thread (see SysFork.swift); only the first process binds it.
        let isSandboxRoot = parentPID == 0
        if isSandboxRoot { exitRequester.bindCurrentThread() }
        defer { if isSandboxRoot { exitRequester.unbindThread() } }
        while pendingExit == nil {
            clock.refresh(space: space)
            switch try cpu.run() {
            case .syscall:
                serveSyscall()
            case .exception(let exception):
                handleException(exception)
            case .interrupted:
                if exitRequester.isExitRequested { return .timedOut }
            case .fatal(let reason):
                return .killed(signal: SIGKILL, reason: "sandbox failure: \(reason)")
            }
            if exitRequester.isExitRequested && pendingExit == nil { return .timedOut }
        }
        return pendingExit!
    }

    private func serveSyscall() {
        let registers = cpu.registers
        let arguments = SyscallArguments(number: Int(truncatingIfNeeded: registers.rax),
                                         values: [registers.rdi, registers.rsi, registers.rdx,
                                                  registers.r10, registers.r8, registers.r9])
        syscallCount += 1
        let definition = table[arguments.number]
        let trace = traceSyscalls ? Strace.callText(arguments, definition: definition, kernel: self) : nil
        let result: Int64
        if let definition {
            do throws(Errno) {
                result = Int64(bitPattern: try definition.handler(self, arguments))
            } catch {
                result = -Int64(error.code)
            }
        } else {
            unimplementedSyscalls[arguments.number, default: 0] += 1
            result = -Int64(Errno.ENOSYS.code)
        }
        if let trace { Strace.emit(trace, result: result, arguments: arguments, definition: definition, kernel: self) }
        cpu.registers.rax = UInt64(bitPattern: result)
        // Linux's syscall return leaves RCX = RIP and R11 = RFLAGS.
        cpu.registers.rcx = cpu.registers.rip
        cpu.registers.r11 = cpu.registers.rflags
    }

    private func handleException(_ exception: ExceptionInfo) {
        if exception.vector == ExceptionInfo.pageFault {
            pageFaultCount += 1
            let write = exception.errorCode & 2 != 0, fetch = exception.errorCode & 16 != 0
            if exception.errorCode & 1 == 0,
               space.handleFault(address: exception.faultAddress, write: write, execute: fetch) {
                return
            }
            let access = fetch ? "execute" : write ? "write" : "read"
            kill(signal: SIGSEGV, reason: "invalid \(access) at address 0x\(hex(exception.faultAddress)) "
                 + "(rip 0x\(hex(exception.rip)))")
            return
        }
        let (signal, name): (Int32, String) = switch exception.vector {
        case 0: (SIGFPE, "divide error")
        case 1, 3: (SIGTRAP, "breakpoint")
        case 6: (SIGILL, "invalid opcode")
        case 16, 19: (SIGFPE, "floating-point exception")
        case 17: (SIGBUS, "alignment check")
        default: (SIGSEGV, "general protection fault (vector \(exception.vector))")
        }
        kill(signal: signal, reason: "\(name) at rip 0x\(hex(exception.rip))")
    }

    /// Ends the program as a fatal signal would.
    func kill(signal: Int32, reason: String) {
        pendingExit = .killed(signal: signal, reason: reason)
    }

    /// Resolves a guest path relative to `dirfd` (or the cwd for AT_FDCWD) into an absolute guest path.
    func absolutePath(_ path: String, relativeTo dirfd: Int32) throws(Errno) -> String {
        if path.hasPrefix("/") { return path }
        if dirfd == AT_FDCWD { return GuestPath.join(workingDirectory, path) }
        let directory = try files.file(dirfd)
        if !path.isEmpty && !directory.isDirectory { throw Errno.ENOTDIR }
        return GuestPath.join(directory.guestPath, path)
    }
}

func hex(_ value: UInt64) -> String { String(value, radix: 16) }
