import CatalyzerKVM
import Glibc

/// clone, clone3, fork, vfork; exit and exit_group; wait4 and waitid; execve.
///
/// A thread (CLONE_VM) shares its creator's process image and takes turns with it on the image's
/// vCPU. A new process (no CLONE_VM, or vfork) gets its own VM holding a copy of the parent's
/// memory. Either way the new task joins the run queue and the caller returns at once; a vfork
/// parent waits until the child execs or exits.
extension Task {
    private static let cloneVM: UInt64 = 0x100, cloneFS: UInt64 = 0x200, cloneFiles: UInt64 = 0x400
    private static let cloneSighand: UInt64 = 0x800, clonePidfd: UInt64 = 0x1000, clonePtrace: UInt64 = 0x2000
    private static let cloneVfork: UInt64 = 0x4000, cloneParent: UInt64 = 0x8000, cloneThread: UInt64 = 0x10000
    private static let cloneNewNS: UInt64 = 0x20000, cloneSysvsem: UInt64 = 0x40000, cloneSetTLS: UInt64 = 0x80000
    private static let cloneParentSetTID: UInt64 = 0x100000, cloneChildClearTID: UInt64 = 0x200000
    private static let cloneDetached: UInt64 = 0x400000, cloneUntraced: UInt64 = 0x800000
    private static let cloneChildSetTID: UInt64 = 0x1000000, cloneIO: UInt64 = 0x8000_0000
    private static let supportedFlags: UInt64 = cloneVM | cloneFS | cloneFiles | cloneSighand | clonePtrace | cloneVfork
        | cloneParent | cloneThread | cloneSysvsem | cloneSetTLS | cloneParentSetTID | cloneChildClearTID
        | cloneDetached | cloneUntraced | cloneChildSetTID | cloneIO | 0xFF

    struct CloneRequest {
        var flags: UInt64
        var exitSignal: Int32
        var stack: UInt64 = 0
        var parentTID: UInt64 = 0
        var childTID: UInt64 = 0
        var threadPointer: UInt64 = 0
    }

    func sysFork(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try clone(CloneRequest(flags: 0, exitSignal: SIGCHLD))
    }

    func sysVfork(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try clone(CloneRequest(flags: Self.cloneVM | Self.cloneVfork, exitSignal: SIGCHLD))
    }

    /// clone(flags, stack, parent_tid, child_tid, tls) — x86-64's argument order.
    func sysClone(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try clone(CloneRequest(flags: a[0] & ~0xFF, exitSignal: Int32(a[0] & 0xFF), stack: a[1],
                               parentTID: a[2], childTID: a[3], threadPointer: a[4]))
    }

    /// clone3(struct clone_args *, size).
    func sysClone3(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let size = a[1]
        guard size >= 64, size <= 4096 else { throw Errno.EINVAL }
        let fields = try space.read(a[0], count: Int(size))
        func field(_ index: Int) -> UInt64 { fields.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self) } }
        // Fields past the ones known here must be zero.
        guard fields.dropFirst(88).allSatisfy({ $0 == 0 }) else { throw Errno.E2BIG }
        let exitSignal = field(4), stack = field(5), stackSize = field(6)
        guard exitSignal <= 64, field(0) & 0xFF == 0, (stack == 0) == (stackSize == 0) else { throw Errno.EINVAL }
        if size >= 80 && field(9) != 0 { throw Errno.EINVAL }  // set_tid: only the kernel picks ids here
        return try clone(CloneRequest(flags: field(0), exitSignal: Int32(exitSignal),
                                      stack: stack == 0 ? 0 : stack &+ stackSize,
                                      parentTID: field(3), childTID: field(2), threadPointer: field(7)))
    }

    private func clone(_ request: CloneRequest) throws(Errno) -> UInt64 {
        let flags = request.flags
        guard flags & ~Self.supportedFlags == 0 else { throw Errno.EINVAL }  // namespaces, pidfds, cgroups
        if flags & Self.cloneThread != 0 && flags & Self.cloneSighand == 0 { throw Errno.EINVAL }
        if flags & Self.cloneSighand != 0 && flags & Self.cloneVM == 0 { throw Errno.EINVAL }
        guard sandbox.taskCount < sandbox.limits.maximumTasks else { throw Errno.EAGAIN }

        // A vfork child shares nothing it could corrupt: it gets a copy of the memory like fork,
        // and the parent waits for it to exec or exit, as programs expect.
        let isVfork = flags & Self.cloneVfork != 0
        let sharesMemory = flags & Self.cloneVM != 0 && !isVfork
        var context = TaskContext(registers: registers, fsBase: fsBase, gsBase: gsBase, extendedState: nil)
        // The child returns 0 from the same syscall, with Linux's RCX/R11 convention.
        context.registers.rax = 0
        context.registers.rcx = context.registers.rip
        context.registers.r11 = context.registers.rflags
        if request.stack != 0 { context.registers.rsp = request.stack }
        if flags & Self.cloneSetTLS != 0 {
            guard request.threadPointer < SystemLayout.userLimit else { throw Errno.EPERM }
            context.fsBase = request.threadPointer
        }
        let childImage: ProcessImage
        if sharesMemory {
            childImage = image
            do { context.extendedState = try extendedState() } catch { throw Errno.ENOMEM }
        } else {
            do {
                childImage = try image.fork(kvm: sandbox.kvm, exitRequester: sandbox.exitRequester)
            } catch let error as Errno {
                throw error
            } catch {
                throw Errno.ENOMEM
            }
        }
        let childGroup: ThreadGroup
        if flags & Self.cloneThread != 0 {
            childGroup = group
        } else {
            let parentPID = flags & Self.cloneParent != 0 ? group.parentPID : pid
            childGroup = ThreadGroup(pid: sandbox.allocateID(), parentPID: parentPID, credentials: credentials)
            childGroup.exitSignal = request.exitSignal
            childGroup.niceValue = group.niceValue
        }
        let tid = flags & Self.cloneThread != 0 ? sandbox.allocateID() : childGroup.pid
        let child = Task(sandbox: sandbox, tid: tid, group: childGroup, image: childImage,
                         files: flags & Self.cloneFiles != 0 ? files : FileTable(copying: files),
                         fsContext: flags & Self.cloneFS != 0 ? fsContext : fsContext.copy(),
                         signalHandlers: flags & Self.cloneSighand != 0 ? signalHandlers : signalHandlers.copy(),
                         context: context, name: name)
        child.signalMask = signalMask
        child.alternateStack = sharesMemory ? AlternateStack() : alternateStack
        if flags & Self.cloneChildClearTID != 0 { child.clearChildTID = request.childTID }
        if flags & Self.cloneChildSetTID != 0 { try? childImage.space.store(UInt32(bitPattern: tid), at: request.childTID) }
        if flags & Self.cloneParentSetTID != 0 { try space.store(UInt32(bitPattern: tid), at: request.parentTID) }
        sandbox.register(child, in: childGroup)
        if isVfork {
            // The parent waits until the child execs or exits; the wake-up returns the child's pid.
            childGroup.vforkPending = true
            completion = Int64(tid)
            try block(Wait(queues: [childGroup.vforkDone], reason: "vfork child \(tid)", interruptible: false))
        }
        return UInt64(tid)
    }

    func sysExit(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        if group.tasks.count == 1 { group.exitStatus = .exited(status: a.int32(0) & 0xFF) }
        sandbox.exitTask(self)
        return 0
    }

    func sysExitGroup(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        sandbox.exitGroup(group, status: .exited(status: a.int32(0) & 0xFF))
        return 0
    }

    private static let waitNoHang: Int32 = 1, waitUntraced: Int32 = 2, waitExited: Int32 = 4
    private static let waitContinued: Int32 = 8, waitNoWait: Int32 = 0x0100_0000
    private static let waitAll: Int32 = 0x4000_0000, waitClone: Int32 = Int32(bitPattern: 0x8000_0000)

    func sysWait4(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let target = a.int32(0), options = a.int32(2)
        guard options & ~(Self.waitNoHang | Self.waitUntraced | Self.waitContinued | Self.waitAll | Self.waitClone
                          | 0x2000_0000) == 0 else { throw Errno.EINVAL }
        // Process groups are not modelled: 0 and -pgid wait for any child.
        let pid = target > 0 ? target : -1
        guard sandbox.hasChildren(group, pid: pid) else { throw Errno.ECHILD }
        guard let child = sandbox.reapChild(of: group, pid: pid) else {
            if options & Self.waitNoHang != 0 { return 0 }
            try block(Wait(queues: [group.childEvents], reason: "wait4 for \(target > 0 ? "pid \(target)" : "a child")"))
        }
        if a[1] != 0 { try space.store(child.zombieStatus ?? 0, at: a[1]) }
        if a[3] != 0 { try space.write([UInt8](repeating: 0, count: 144), to: a[3]) }  // struct rusage
        return UInt64(child.pid)
    }

    /// waitid(idtype, id, infop, options, rusage).
    func sysWaitid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let idType = a.int32(0), options = a.int32(3)
        let typeAll: Int32 = 0, typePID: Int32 = 1, typeProcessGroup: Int32 = 2
        guard [typeAll, typePID, typeProcessGroup].contains(idType), options & Self.waitExited != 0 else { throw Errno.EINVAL }
        let pid = idType == typePID ? a.int32(1) : -1
        guard sandbox.hasChildren(group, pid: pid) else { throw Errno.ECHILD }
        let keep = options & Self.waitNoWait != 0
        guard let child = sandbox.reapChild(of: group, pid: pid, remove: !keep) else {
            if options & Self.waitNoHang != 0 {
                if a[2] != 0 { try space.write([UInt8](repeating: 0, count: 128), to: a[2]) }
                return 0
            }
            try block(Wait(queues: [group.childEvents], reason: "waitid"))
        }
        if a[2] != 0 {
            let status = child.exitStatus ?? .exited(status: 0)
            var bytes = [UInt8](repeating: 0, count: 128)
            func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
                withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<offset + $0.count, with: $0) }
            }
            put(SIGCHLD, 0)
            put(status.isSignal ? SignalInformation.childKilled : SignalInformation.childExited, 8)
            put(child.pid, 16)
            put(child.credentials.uid, 20)
            put(status.isSignal ? status.signalNumber : status.exitCode, 24)
            try space.write(bytes, to: a[2])
        }
        return 0
    }

    func sysExecve(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try execve(pathAddress: a[0], argv: a[1], envp: a[2], dirfd: AT_FDCWD, flags: 0)
    }

    func sysExecveat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try execve(pathAddress: a[1], argv: a[2], envp: a[3], dirfd: a.int32(0), flags: a.int32(4))
    }

    private func execve(pathAddress: UInt64, argv: UInt64, envp: UInt64, dirfd: Int32, flags: Int32) throws(Errno) -> UInt64 {
        let given = try space.readCString(pathAddress)
        let path: String
        if given.isEmpty && flags & AT_EMPTY_PATH != 0 {
            path = try files.file(dirfd).guestPath
        } else {
            guard !given.isEmpty else { throw Errno.ENOENT }
            path = try absolutePath(given, relativeTo: dirfd)
        }
        let arguments = try readStringArray(argv)
        let environment = try readStringArray(envp)
        let (newImage, context) = try loadImage(path: GuestPath.normalize(path), arguments: arguments,
                                                environment: environment, depth: 0)
        // Past the point of no return: the other threads die and this one takes the leader's TID.
        for other in group.tasks where other !== self { sandbox.exitTask(other) }
        if !isLeader {
            sandbox.tasks[tid] = nil
            becomeLeader()
            sandbox.tasks[tid] = self
        }
        image.unload(self)
        image = newImage
        self.context = context
        name = Task.name(ofExecutable: newImage.executablePath)
        sandbox.filesystem.executablePath = newImage.executablePath
        files.closeOnExecFiles()
        signalHandlers = signalHandlers.copy()
        signalHandlers.resetForExec()
        alternateStack = AlternateStack()
        clearChildTID = 0
        robustList = 0
        if group.vforkPending {
            group.vforkPending = false
            group.vforkDone.wakeAll()
        }
        registersReplaced = true
        return 0
    }

    /// Builds the new image (following `#!` interpreters) without touching the current one.
    private func loadImage(path: String, arguments: [String], environment: [String],
                           depth: Int) throws(Errno) -> (ProcessImage, TaskContext) {
        // /proc/self/exe names the caller's own executable: load that path, not the link.
        var path = path
        if case .executableLink = filesystem.locate(path) { path = executablePath }
        do {
            return try ProcessImage.load(kvm: sandbox.kvm, memorySize: memorySize, account: sandbox.memoryAccount,
                                         exitRequester: exitRequester,
                                         filesystem: filesystem, path: path, arguments: arguments,
                                         environment: environment, credentials: credentials)
        } catch let error as Errno where error == Errno.ENOEXEC {
            guard depth < 4, let (interpreter, argument) = try scriptInterpreter(path) else { throw error }
            let scriptArguments = [interpreter] + (argument.map { [$0] } ?? []) + [path] + arguments.dropFirst()
            return try loadImage(path: interpreter, arguments: scriptArguments, environment: environment, depth: depth + 1)
        } catch let error as Errno {
            throw error
        } catch {
            throw Errno.ENOMEM
        }
    }

    /// The interpreter and optional argument of a `#!` script, or nil if `path` is not one.
    private func scriptInterpreter(_ path: String) throws(Errno) -> (String, String?)? {
        let fd = try filesystem.openExecutable(path)
        defer { close(fd) }
        var header = [UInt8](repeating: 0, count: 256)
        let count = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 256, 0) }
        guard count > 2, header[0] == 0x23, header[1] == 0x21 else { return nil }  // "#!"
        let line = String(decoding: header[2..<count].prefix { $0 != 0x0A }, as: UTF8.self)
        let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let interpreter = words.first else { return nil }
        return (interpreter, words.count > 1 ? words[1...].joined(separator: " ") : nil)
    }

    /// A NULL-terminated array of guest string pointers (argv, envp).
    private func readStringArray(_ address: UInt64) throws(Errno) -> [String] {
        guard address != 0 else { return [] }
        var strings: [String] = []
        var totalBytes = 0
        for index in 0..<4096 {
            let pointer = try space.load(UInt64.self, at: address &+ UInt64(index * 8))
            if pointer == 0 { return strings }
            let string = try space.readCString(pointer, limit: 128 << 10)
            totalBytes += string.utf8.count + 1
            guard totalBytes <= 2 << 20 else { throw Errno.E2BIG }
            strings.append(string)
        }
        throw Errno.E2BIG
    }
}
