import CKVM
import CatalyzerKVM
import Dispatch
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
    /// How the guest's clocks relate to the host's (shared by the sandbox's processes).
    private(set) var time = GuestTime.host
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
    /// Whether the first read of an empty stdin ends the run at the ready point (checkpoint).
    let stopsAtReadyPoint: Bool
    /// A restored program trapped in its ready-point read; `run()` serves it before anything else.
    private var hasPendingSyscall = false
    /// When the sandbox first did what `invoke --timings` reports.
    public internal(set) var milestones = Milestones()

    /// CLOCK_MONOTONIC nanoseconds of first events, nil until they happen.
    public struct Milestones: Sendable {
        /// Just before the vCPU first entered the guest.
        public var firstGuestEntry: UInt64?
        /// Just after the program's first write to stdout returned.
        public var firstStandardOutput: UInt64?
    }

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
        stopsAtReadyPoint = configuration.stopsAtReadyPoint
        if stopsAtReadyPoint { filesystem.dependencies = RootfsDependencies() }
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
        let memory = try parent.space.memory.copy(inUse: Int(parent.space.allocator.state.nextUnused))
        let allocator = PhysicalPageAllocator(copying: parent.space.allocator, memory: memory)
        let pageTables = PageTables(memory: memory, allocator: allocator, root: parent.space.pageTables.root)
        let vm = try VM(kvm: kvm, memory: memory, exitRequester: exitRequester)
        cpu = try UserModeCPU(vm: vm, pageTables: pageTables, continuing: parent.cpu)
        space = AddressSpace(copying: parent.space, memory: memory, allocator: allocator, pageTables: pageTables)
        clock = GuestClock(copying: parent.clock)
        time = parent.time
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
        stopsAtReadyPoint = false  // only the sandbox's first process is checkpointed
    }

    /// Resumes a checkpointed program in the VM `pendingVM` is creating, whose memory is the
    /// checkpoint's guest memory (typically its image's `memory` file mapped privately). The
    /// rootfs is checked while the VM is still being created. Files reopen on first use; stdio is
    /// the invocation's. Throws `RestoreError` when the snapshot does not fit this host.
    public init(restoring snapshot: KernelSnapshot, vm pendingVM: PendingVM, options: RestoreOptions) throws {
        let memory = pendingVM.memory
        guard memory.size == snapshot.memorySize else {
            throw RestoreError("guest memory is \(memory.size) bytes but the checkpoint's is \(snapshot.memorySize)")
        }
        let (restoredFilesystem, tmpNodes) = try Self.restoreFilesystem(snapshot)
        let vm = try pendingVM.wait()
        kvm = vm.kvm
        memorySize = snapshot.memorySize
        exitRequester = vm.vcpu.exitRequester
        filesystem = restoredFilesystem
        processes = ProcessTable()
        processes.nextPID = snapshot.process.nextPID
        for zombie in snapshot.process.zombies { processes.zombies[zombie.pid] = (zombie.parent, zombie.status) }
        pid = snapshot.process.pid
        parentPID = 0
        traceSyscalls = options.traceSyscalls
        traceFD = options.standardStreams.count > 2 ? options.standardStreams[2] : 2
        stopsAtReadyPoint = false
        let allocator = PhysicalPageAllocator(memory: memory, start: snapshot.allocator.start,
                                              nextUnused: snapshot.allocator.nextUnused, freed: snapshot.allocator.freed)
        let pageTables = PageTables(memory: memory, allocator: allocator, root: snapshot.pageTableRoot)
        cpu = try UserModeCPU(vm: vm, pageTables: pageTables, restoring: snapshot.vcpu)
        space = AddressSpace(memory: memory, allocator: allocator, pageTables: pageTables)
        space.restoreRegions(snapshot.regions.map {
            MemoryRegion(start: $0.start, end: $0.end, protection: Protection(rawValue: $0.protection), name: $0.name, pristineCopy: nil)
        })
        space.breakStart = snapshot.breakStart
        space.breakEnd = snapshot.breakEnd
        clock = GuestClock(pageAddress: snapshot.clockPage, physicalPage: snapshot.clockFrame, vcpu: vm.vcpu)
        time = GuestTime(continuingFrom: snapshot.checkpointMonotonic)
        files = try Self.restoreFiles(snapshot, filesystem: filesystem, tmpNodes: tmpNodes, standardStreams: options.standardStreams)
        executablePath = snapshot.process.executablePath
        filesystem.executablePath = executablePath
        workingDirectory = snapshot.process.workingDirectory
        credentials = Credentials(uid: snapshot.process.uid, gid: snapshot.process.gid)
        taskName = snapshot.process.taskName
        signalActions = Dictionary(snapshot.process.signalActions.map { ($0.signal, $0.action) }, uniquingKeysWith: { $1 })
        signalMask = snapshot.process.signalMask
        fileCreationMask = snapshot.process.fileCreationMask
        hasPendingSyscall = snapshot.pendingSyscall
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
            let file = OpenFile(backing: .host(fd: hostFD, owned: false), guestPath: "/dev/stdio", statusFlags: flags,
                                standardStream: Int32(guestFD))
            try files.install(file, at: Int32(guestFD), closeOnExec: false)
        }
    }

    /// Runs the program as `run()` does, stopping it after `timeoutSeconds` (`.timedOut`). The
    /// timer has a queue of its own: it must fire even when every pool thread is busy.
    public func run(timeoutSeconds: Double) throws -> SandboxExit {
        let exitRequester = exitRequester
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "catalyzer-sandbox-timeout"))
        timer.schedule(deadline: .now() + timeoutSeconds)
        timer.setEventHandler { exitRequester.requestExit() }
        timer.resume()
        defer { timer.cancel() }
        return try run()
    }

    /// Runs the program until it exits, is killed, or `exitRequester` stops it.
    public func run() throws -> SandboxExit {
        // Children run nested on this same thread (see SysFork.swift); only the first process binds it.
        let isSandboxRoot = parentPID == 0
        if isSandboxRoot { exitRequester.bindCurrentThread() }
        defer { if isSandboxRoot { exitRequester.unbindThread() } }
        if hasPendingSyscall {
            hasPendingSyscall = false
            serveSyscall()
        }
        while pendingExit == nil {
            clock.refresh(space: space, time: time)
            if milestones.firstGuestEntry == nil { milestones.firstGuestEntry = Self.monotonicNanoseconds() }
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
        if stopsAtReadyPoint && isReadyPointRead(arguments) {
            pendingExit = .readyPoint  // left unserved: the registers still hold the read
            return
        }
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

    /// The program has initialized and now waits for its first request: its first process reads
    /// the sandbox's stdin (read(2), readv(2)), or waits for it alone without a timeout (poll(2),
    /// ppoll(2), as busybox's `read` does), and stdin has no data.
    private func isReadyPointRead(_ arguments: SyscallArguments) -> Bool {
        let read = 0, poll = 7, readv = 19, ppoll = 271
        guard parentPID == 0 else { return false }
        switch arguments.number {
        case read, readv:
            guard arguments[0] == 0 else { return false }
        case poll, ppoll:
            let waitsForever = arguments.number == poll ? arguments.int32(2) < 0 : arguments[2] == 0
            guard waitsForever, arguments[1] == 1, let entry = try? space.read(arguments[0], count: 8) else { return false }
            let fd = entry.withUnsafeBytes { $0.load(as: Int32.self) }
            let events = entry.withUnsafeBytes { $0.load(fromByteOffset: 4, as: Int16.self) }
            guard fd == 0, events & Int16(POLLIN) != 0 else { return false }
        default:
            return false
        }
        guard let file = try? files.file(Int32(0)), file.standardStream == 0, case .host(let fd, _) = file.backing else { return false }
        var request = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return Glibc.poll(&request, 1, 0) == 0
    }

    /// CLOCK_MONOTONIC in nanoseconds, the clock of `Milestones`.
    public static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
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
