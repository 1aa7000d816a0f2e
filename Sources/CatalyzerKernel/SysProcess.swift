import CatalyzerKVM
import Glibc

/// Process-identity syscalls. The first process of a sandbox is pid 1 with parent 0; each process
/// is its own process group and session.
extension Task {
    func sysGetpid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(pid) }
    func sysGetppid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(parentPID) }
    func sysGettid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(tid) }
    func sysSetTidAddress(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        clearChildTID = a[0]
        return UInt64(tid)
    }
    /// Each process is its own process group; moving it is accepted and changes nothing.
    func sysSetpgid(_ a: SyscallArguments) throws(Errno) -> UInt64 { 0 }
    func sysSchedYield(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        yieldRequested = true
        return 0
    }

    /// The sandbox is one session whose processes each lead their own group (getsid reports the
    /// pid): setsid succeeds and returns the caller's pid as the new session id.
    func sysSetsid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(pid) }

    func sysUname(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let fields: [[UInt8]] = [Array("Linux".utf8), sandbox.hostName, Array("6.1.0-catalyzer".utf8), Array("#1 SMP".utf8),
                                 Array("x86_64".utf8), sandbox.domainName]
        var bytes = [UInt8](repeating: 0, count: 65 * fields.count)
        for (index, field) in fields.enumerated() {
            bytes.replaceSubrange(index * 65..<index * 65 + field.count, with: field)
        }
        try space.write(bytes, to: a[0])
        return 0
    }

    /// sethostname/setdomainname: the sandbox's own names (as a UTS namespace of its own), which
    /// uname reports to its processes; the host's are never touched. Root only, as on Linux.
    func sysSethostname(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        sandbox.hostName = try utsName(a)
        return 0
    }

    func sysSetdomainname(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        sandbox.domainName = try utsName(a)
        return 0
    }

    private func utsName(_ a: SyscallArguments) throws(Errno) -> [UInt8] {
        guard credentials.isPrivileged else { throw Errno.EPERM }
        let length = try a.length(1)
        guard length <= 64 else { throw Errno.EINVAL }
        return try space.read(a[0], count: length)
    }

    func sysPrctl(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let setName: Int32 = 15, getName: Int32 = 16
        switch a.int32(0) {
        case setName:
            name = String(try space.readCString(a[1], limit: 4096).utf8.prefix(15)) ?? name
            return 0
        case getName:
            var bytes = Array(name.utf8.prefix(15))
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
            fsBase = a[1]
        case setGS:
            guard a[1] < SystemLayout.userLimit else { throw Errno.EPERM }
            gsBase = a[1]
        case getFS: try space.store(fsBase, at: a[1])
        case getGS: try space.store(gsBase, at: a[1])
        default: throw Errno.EINVAL
        }
        return 0
    }

    func sysSchedGetaffinity(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[1] >= 8, a[1] % 8 == 0 else { throw Errno.EINVAL }
        guard a[0] == 0 || sandbox.tasks[a.int32(0)] != nil else { throw Errno.ESRCH }
        try space.store(UInt64(1), at: a[2])  // one CPU: the sandbox's tasks take turns on one host thread
        return 8
    }

    func sysGetrlimit(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (current, maximum) = try resourceLimit(a.int32(0))
        try space.storeStruct((current, maximum), at: a[1])
        return 0
    }

    /// Limits are reported (the memory ones from the guest's RAM); new limits are accepted and ignored.
    func sysPrlimit64(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[0] == 0 || sandbox.groups[a.int32(0)] != nil else { throw Errno.ESRCH }
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
