import Glibc

/// User and group IDs and the nice value, with Linux's rules: root (effective uid 0) may set any
/// ID; others may only move among their real, effective and saved IDs (EPERM otherwise). An ID of
/// -1 leaves that ID unchanged.
extension Task {
    private static let unchanged = UInt32.max
    /// NGROUPS_MAX.
    private static let groupLimit = 65536

    func sysGetuid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(credentials.uid) }
    func sysGetgid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(credentials.gid) }
    func sysGeteuid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(credentials.effectiveUID) }
    func sysGetegid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(credentials.effectiveGID) }

    func sysGetresuid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try space.store(credentials.uid, at: a[0])
        try space.store(credentials.effectiveUID, at: a[1])
        try space.store(credentials.savedUID, at: a[2])
        return 0
    }

    func sysGetresgid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try space.store(credentials.gid, at: a[0])
        try space.store(credentials.effectiveGID, at: a[1])
        try space.store(credentials.savedGID, at: a[2])
        return 0
    }

    /// The real, effective and saved IDs of one kind (user or group) inside `Credentials`.
    private typealias IDs = (real: WritableKeyPath<Credentials, UInt32>, effective: WritableKeyPath<Credentials, UInt32>,
                             saved: WritableKeyPath<Credentials, UInt32>)
    private static var userIDs: IDs { (\.uid, \.effectiveUID, \.savedUID) }
    private static var groupIDs: IDs { (\.gid, \.effectiveGID, \.savedGID) }

    /// setuid(2): root sets all three; others set the effective uid to their real or saved one.
    func sysSetuid(_ a: SyscallArguments) throws(Errno) -> UInt64 { try setID(a.uint32(0), Self.userIDs) }
    func sysSetgid(_ a: SyscallArguments) throws(Errno) -> UInt64 { try setID(a.uint32(0), Self.groupIDs) }

    private func setID(_ id: UInt32, _ ids: IDs) throws(Errno) -> UInt64 {
        guard id != Self.unchanged else { throw Errno.EINVAL }
        if credentials.isPrivileged {
            credentials[keyPath: ids.real] = id
            credentials[keyPath: ids.effective] = id
            credentials[keyPath: ids.saved] = id
        } else {
            guard id == credentials[keyPath: ids.real] || id == credentials[keyPath: ids.saved] else { throw Errno.EPERM }
            credentials[keyPath: ids.effective] = id
        }
        return 0
    }

    func sysSetreuid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try setIDs(real: a.uint32(0), effective: a.uint32(1), saved: nil, Self.userIDs)
    }

    func sysSetresuid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try setIDs(real: a.uint32(0), effective: a.uint32(1), saved: a.uint32(2), Self.userIDs)
    }

    func sysSetregid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try setIDs(real: a.uint32(0), effective: a.uint32(1), saved: nil, Self.groupIDs)
    }

    func sysSetresgid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try setIDs(real: a.uint32(0), effective: a.uint32(1), saved: a.uint32(2), Self.groupIDs)
    }

    /// setresuid/setresgid, and setreuid/setregid when `saved` is nil (which sets the saved ID to
    /// the new effective one when the real ID is set or the effective one changes to other than
    /// the real one).
    private func setIDs(real: UInt32, effective: UInt32, saved: UInt32?, _ ids: IDs) throws(Errno) -> UInt64 {
        var new = credentials
        let own: Set<UInt32> = [new[keyPath: ids.real], new[keyPath: ids.effective], new[keyPath: ids.saved]]
        for id in [real, effective, saved ?? Self.unchanged] where id != Self.unchanged {
            guard new.isPrivileged || own.contains(id) else { throw Errno.EPERM }
        }
        if saved == nil, real != Self.unchanged, !new.isPrivileged,
           ![new[keyPath: ids.real], new[keyPath: ids.effective]].contains(real) {
            throw Errno.EPERM  // setre*id: an unprivileged real ID may only become the effective one
        }
        let oldReal = new[keyPath: ids.real]
        if real != Self.unchanged { new[keyPath: ids.real] = real }
        if effective != Self.unchanged { new[keyPath: ids.effective] = effective }
        if let saved {
            if saved != Self.unchanged { new[keyPath: ids.saved] = saved }
        } else if real != Self.unchanged || (effective != Self.unchanged && effective != oldReal) {
            new[keyPath: ids.saved] = new[keyPath: ids.effective]
        }
        credentials = new
        return 0
    }

    /// setfsuid/setfsgid: the filesystem IDs follow the effective ones here; report them and
    /// change nothing (Linux returns the previous value and no error either way).
    func sysSetfsuid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(credentials.effectiveUID) }
    func sysSetfsgid(_ a: SyscallArguments) throws(Errno) -> UInt64 { UInt64(credentials.effectiveGID) }

    func sysGetgroups(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let groups = credentials.groups
        let size = a.int32(0)
        guard size >= 0 else { throw Errno.EINVAL }
        if size == 0 { return UInt64(groups.count) }
        guard Int(size) >= groups.count else { throw Errno.EINVAL }
        for (index, group) in groups.enumerated() { try space.store(group, at: a[1] + UInt64(index * 4)) }
        return UInt64(groups.count)
    }

    func sysSetgroups(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let size = a.int32(0)
        guard size >= 0, Int(size) <= Self.groupLimit else { throw Errno.EINVAL }
        guard credentials.isPrivileged else { throw Errno.EPERM }
        var groups: [UInt32] = []
        for index in 0..<Int(size) { groups.append(try space.load(UInt32.self, at: a[1] + UInt64(index * 4))) }
        credentials.groups = groups
        return 0
    }

    private static let priorityProcess: Int32 = 0, priorityGroup: Int32 = 1, priorityUser: Int32 = 2

    /// The processes getpriority/setpriority name: a pid (0: the caller), a process group (each
    /// process leads its own here), or every process of a user.
    private func priorityTargets(_ which: Int32, _ who: Int32) throws(Errno) -> [ThreadGroup] {
        switch which {
        case Self.priorityProcess, Self.priorityGroup:
            if who == 0 { return [group] }
            guard let target = sandbox.groups[who], !target.isZombie else { throw Errno.ESRCH }
            return [target]
        case Self.priorityUser:
            let user = who == 0 ? credentials.uid : UInt32(bitPattern: who)
            let targets = sandbox.groups.values.filter { !$0.isZombie && $0.credentials.uid == user }
            guard !targets.isEmpty else { throw Errno.ESRCH }
            return targets
        default:
            throw Errno.EINVAL
        }
    }

    /// getpriority(2) returns 20 - nice (the raw syscall's convention: 1...40).
    func sysGetpriority(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let targets = try priorityTargets(a.int32(0), a.int32(1))
        return UInt64(20 - (targets.map(\.niceValue).min() ?? 0))
    }

    func sysSetpriority(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let nice = min(max(a.int32(2), -20), 19)
        for target in try priorityTargets(a.int32(0), a.int32(1)) {
            guard nice >= target.niceValue || credentials.isPrivileged else { throw Errno.EACCES }
            target.niceValue = nice
        }
        return 0
    }
}
