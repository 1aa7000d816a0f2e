import CatalyzerKVM
import Glibc

/// fork/vfork/clone, wait4 and execve.
///
/// A forked child gets its own VM holding a copy of the parent's memory, and shares the parent's
/// open files, /tmp and pid namespace. Children run to completion on the monitor's thread before
/// the parent continues (fork returns after the child exited), which is what a shell needs for
/// commands and pipelines (pipes buffer the whole stream, see Pipe.swift); processes never run
/// concurrently, and threads (CLONE_VM without CLONE_VFORK, CLONE_THREAD) are not supported.
extension Kernel {
    private static let cloneVM: UInt64 = 0x100, cloneVfork: UInt64 = 0x4000, cloneThread: UInt64 = 0x10000
    private static let cloneSetTLS: UInt64 = 0x80000, cloneParentSetTID: UInt64 = 0x100000
    private static let cloneChildSetTID: UInt64 = 0x1000000

    func sysFork(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try fork(stack: 0, parentTID: 0, childTID: 0, threadPointer: nil)
    }

    func sysClone(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let flags = a[0]
        guard flags & Self.cloneThread == 0, flags & Self.cloneVM == 0 || flags & Self.cloneVfork != 0 else {
            throw Errno.ENOSYS  // threads
        }
        return try fork(stack: a[1], parentTID: flags & Self.cloneParentSetTID != 0 ? a[2] : 0,
                        childTID: flags & Self.cloneChildSetTID != 0 ? a[3] : 0,
                        threadPointer: flags & Self.cloneSetTLS != 0 ? a[4] : nil)
    }

    private func fork(stack: UInt64, parentTID: UInt64, childTID: UInt64, threadPointer: UInt64?) throws(Errno) -> UInt64 {
        let child: Kernel
        do {
            child = try Kernel(forkOf: self)
        } catch let error as Errno {
            throw error
        } catch {
            throw Errno.ENOMEM
        }
        // The child returns 0 from the same syscall, with Linux's RCX/R11 convention.
        child.cpu.registers.rax = 0
        child.cpu.registers.rcx = child.cpu.registers.rip
        child.cpu.registers.r11 = child.cpu.registers.rflags
        if stack != 0 { child.cpu.registers.rsp = stack }
        if let threadPointer { child.cpu.fsBase = threadPointer }
        if childTID != 0 { try? child.space.store(UInt32(child.pid), at: childTID) }
        if parentTID != 0 { try space.store(UInt32(child.pid), at: parentTID) }

        let exit: SandboxExit
        do {
            exit = try child.run()
        } catch {
            exit = .killed(signal: SIGKILL, reason: "sandbox failure in pid \(child.pid): \(error)")
        }
        filesystem.executablePath = executablePath
        syscallCount += child.syscallCount
        pageFaultCount += child.pageFaultCount
        unimplementedSyscalls.merge(child.unimplementedSyscalls, uniquingKeysWith: +)
        if exit == .timedOut { pendingExit = .timedOut }
        processes.recordExit(pid: child.pid, parent: pid, exit: exit)
        return UInt64(child.pid)
    }

    func sysWait4(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        // Every child has already exited by the time fork returned, so waiting never blocks.
        guard let (child, status) = processes.reap(parent: pid, pid: a.int32(0)) else { throw Errno.ECHILD }
        if a[1] != 0 { try space.store(status, at: a[1]) }
        if a[3] != 0 { try space.write([UInt8](repeating: 0, count: 144), to: a[3]) }  // struct rusage
        return UInt64(child)
    }

    func sysExecve(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let path = try absolutePath(try space.readCString(a[0]), relativeTo: AT_FDCWD)
        let arguments = try readStringArray(a[1])
        let environment = try readStringArray(a[2])
        try execute(path: GuestPath.normalize(path), arguments: arguments, environment: environment, depth: 0)
        files.closeOnExecFiles()
        let ignored: [UInt8] = [1, 0, 0, 0, 0, 0, 0, 0]
        signalActions = signalActions.filter { $0.value.prefix(8).elementsEqual(ignored) }  // handlers reset
        return 0
    }

    /// Builds the new image (following `#!` interpreters), then replaces the current one.
    private func execute(path: String, arguments: [String], environment: [String], depth: Int) throws(Errno) {
        let image: (UserModeCPU, AddressSpace, GuestClock)
        do {
            image = try Kernel.loadImage(kvm: kvm, memorySize: memorySize, exitRequester: exitRequester,
                                         filesystem: filesystem, path: path, arguments: arguments,
                                         environment: environment, credentials: credentials)
        } catch let error as Errno where error == Errno.ENOEXEC {
            guard depth < 4, let (interpreter, argument) = try scriptInterpreter(path) else { throw error }
            let scriptArguments = [interpreter] + (argument.map { [$0] } ?? []) + [path] + arguments.dropFirst()
            try execute(path: interpreter, arguments: scriptArguments, environment: environment, depth: depth + 1)
            return
        } catch let error as Errno {
            throw error
        } catch {
            throw Errno.ENOMEM
        }
        replaceImage(cpu: image.0, space: image.1, clock: image.2, path: path)
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
