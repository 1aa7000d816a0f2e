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

    /// setuid(2): root sets all three; others set the effective uid to their real or saved one.
    func sysSetuid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let id = a.uint32(0)
        guard id != Self.unchanged else { throw Errno.EINVAL }
        if credentials.isPrivileged {
            (credentials.uid, credentials.effectiveUID, credentials.savedUID) = (id, id, id)
        } else {
            guard id == credentials.uid || id == credentials.savedUID else { throw Errno.EPERM }
            credentials.effectiveUID = id
        }
        return 0
    }

    func sysSetgid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let id = a.uint32(0)
        guard id != Self.unchanged else { throw Errno.EINVAL }
        if credentials.isPrivileged {
            (credentials.gid, credentials.effectiveGID, credentials.savedGID) = (id, id, id)
        } else {
            guard id == credentials.gid || id == credentials.savedGID else { throw Errno.EPERM }
            credentials.effectiveGID = id
        }
        return 0
    }

    func sysSetreuid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try setResUID(real: a.uint32(0), effective: a.uint32(1), saved: nil)
    }

    func sysSetresuid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try setResUID(real: a.uint32(0), effective: a.uint32(1), saved: a.uint32(2))
    }

    func sysSetregid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try setResGID(real: a.uint32(0), effective: a.uint32(1), saved: nil)
    }

    func sysSetresgid(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try setResGID(real: a.uint32(0), effective: a.uint32(1), saved: a.uint32(2))
    }

    /// setresuid, and setreuid when `saved` is nil (which sets the saved uid to the new effective
    /// one when the real uid is set or the effective one changes to other than the real one).
    private func setResUID(real: UInt32, effective: UInt32, saved: UInt32?) throws(Errno) -> UInt64 {
        var new = credentials
        let own: Set<UInt32> = [new.uid, new.effectiveUID, new.savedUID]
        for id in [real, effective, saved ?? Self.unchanged] where id != Self.unchanged {
            guard new.isPrivileged || own.contains(id) else { throw Errno.EPERM }
        }
        if saved == nil, real != Self.unchanged, !new.isPrivileged, ![new.uid, new.effectiveUID].contains(real) {
            throw Errno.EPERM  // setreuid: an unprivileged real uid may only become the effective one
        }
        let oldReal = new.uid
        if real != Self.unchanged { new.uid = real }
        if effective != Self.unchanged { new.effectiveUID = effective }
        if let saved {
            if saved != Self.unchanged { new.savedUID = saved }
        } else if real != Self.unchanged || (effective != Self.unchanged && effective != oldReal) {
            new.savedUID = new.effectiveUID
        }
        credentials = new
        return 0
    }

    private func setResGID(real: UInt32, effective: UInt32, saved: UInt32?) throws(Errno) -> UInt64 {
        var new = credentials
        let own: Set<UInt32> = [new.gid, new.effectiveGID, new.savedGID]
        for id in [real, effective, saved ?? Self.unchanged] where id != Self.unchanged {
            guard new.isPrivileged || own.contains(id) else { throw Errno.EPERM }
        }
        if saved == nil, real != Self.unchanged, !new.isPrivileged, ![new.gid, new.effectiveGID].contains(real) {
            throw Errno.EPERM
        }
        let oldReal = new.gid
        if real != Self.unchanged { new.gid = real }
        if effective != Self.unchanged { new.effectiveGID = effective }
        if let saved {
            if saved != Self.unchanged { new.savedGID = saved }
        } else if real != Self.unchanged || (effective != Self.unchanged && effective != oldReal) {
            new.savedGID = new.effectiveGID
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
