import CatalyzerKVM
import Glibc

/// Process-identity and lifecycle syscalls. The first process of a sandbox is pid 1 with parent 0;
/// each process is single-threaded (tid = pid) and is its own process group and session.
extension Kernel {
    func sysGetpid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(pid) }
    func sysGetppid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(parentPID) }
    func sysGetuid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(credentials.uid) }
    func sysGetgid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(credentials.gid) }
    func sysSetTidAddress(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(pid) }
    func sysSetRobustList(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[1] == 24 else { throw Errno.EINVAL }  // sizeof(struct robust_list_head)
        return 0
    }
    /// Each process is its own process group; moving it is accepted and changes nothing.
    func sysSetpgid(_ a: SyscallArguments) throws(Errno) -> UInt64 { 0 }
    func sysSchedYield(_ a: SyscallArguments) throws(Errno) -> UInt64 { 0 }
    /// The sandbox is one session whose processes each lead their own group (getsid reports the
    /// pid): setsid succeeds and returns the caller's pid as the new session id.
    func sysSetsid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(pid) }

    func sysExit(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        pendingExit = .exited(status: a.int32(0) & 0xFF)
        return 0
    }

    func sysKill(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let pid = a.signed(0)
        guard pid == Int64(self.pid) || pid == 0 || pid == -1 else { throw Errno.ESRCH }
        try deliverToSelf(signal: a.int32(1))
        return 0
    }

    func sysTkill(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[0] == UInt64(pid) else { throw Errno.ESRCH }
        try deliverToSelf(signal: a.int32(1))
        return 0
    }

    func sysTgkill(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[0] == UInt64(pid), a[1] == UInt64(pid) else { throw Errno.ESRCH }
        try deliverToSelf(signal: a.int32(2))
        return 0
    }

    func sysUname(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let fields = ["Linux", "catalyzer", "6.1.0-catalyzer", "#1 SMP", "x86_64", "(none)"]
        var bytes = [UInt8](repeating: 0, count: 65 * fields.count)
        for (index, field) in fields.enumerated() {
            bytes.replaceSubrange(index * 65..<index * 65 + field.utf8.count, with: field.utf8)
        }
        try space.write(bytes, to: a[0])
        return 0
    }

    func sysPrctl(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let setName: Int32 = 15, getName: Int32 = 16
        switch a.int32(0) {
        case setName:
            taskName = String(try space.readCString(a[1], limit: 4096).utf8.prefix(15)) ?? taskName
            return 0
        case getName:
            var bytes = Array(taskName.utf8.prefix(15))
            bytes += [UInt8](repeating: 0, count: 16 - bytes.count)
            try space.write(bytes, to: a[1])
            return 0
        default:
            throw Errno.EINVAL
        }
    }

    func sysArchPrctl(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let setGS = 0x1001, setFS = 0x1002, getFS = 0x1003, getGS = 0x1004
        switch Int(a.int32(0)) {
        case setFS:
            guard a[1] < SystemLayout.userLimit else { throw Errno.EPERM }
            cpu.fsBase = a[1]
        case setGS:
            guard a[1] < SystemLayout.userLimit else { throw Errno.EPERM }
            cpu.gsBase = a[1]
        case getFS: try space.store(cpu.fsBase, at: a[1])
        case getGS: try space.store(cpu.gsBase, at: a[1])
        default: throw Errno.EINVAL
        }
        return 0
    }

    func sysSchedGetaffinity(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[1] >= 8, a[1] % 8 == 0 else { throw Errno.EINVAL }
        try space.store(UInt64(1), at: a[2])  // one CPU: the sandbox has one vCPU
        return 8
    }

    func sysGetrlimit(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (current, maximum) = try resourceLimit(a.int32(0))
        try space.storeStruct((current, maximum), at: a[1])
        return 0
    }

    /// Limits are reported (the memory ones from the guest's RAM); new limits are accepted and ignored.
    func sysPrlimit64(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[0] == 0 || a[0] == UInt64(pid) else { throw Errno.ESRCH }
        let (current, maximum) = try resourceLimit(a.int32(1))
        if a[3] != 0 {
            try space.storeStruct((current, maximum), at: a[3])
        }
        return 0
    }

    private func resourceLimit(_ resource: Int32) throws(Errno) -> (UInt64, UInt64) {
        let infinity = UInt64.max
        switch resource {
        case 3: return (AddressSpace.stackLimit, infinity)  // RLIMIT_STACK
        case 7: return (UInt64(FileTable.limit), UInt64(FileTable.limit))  // RLIMIT_NOFILE
        case 9, 2, 5: return (UInt64(space.memory.size), UInt64(space.memory.size))  // AS, DATA, RSS
        case 0..<16: return (infinity, infinity)
        default: throw Errno.EINVAL
        }
    }
}
