import Glibc

/// Signal syscalls: dispositions, masks, sending, waiting, the alternate stack and rt_sigreturn.
/// Delivery itself (frames, default actions, SA_RESTART) is in SignalDelivery.swift.
extension Task {
    func sysRtSigaction(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let signal = a.int32(0)
        guard (1...64).contains(signal), a[3] == 8 else { throw Errno.EINVAL }
        let old = signalHandlers.action(for: signal)
        if a[1] != 0 {
            guard signal != SIGKILL && signal != SIGSTOP else { throw Errno.EINVAL }
            let new = SignalAction(bytes: try space.read(a[1], count: SignalAction.size))
            signalHandlers.setAction(new, for: signal)
            if new.handler == SignalAction.ignore || (new.handler == SignalAction.defaultAction
                                                      && SignalHandlers.ignoredByDefault.contains(signal)) {
                // Setting a pending signal to be ignored discards it (POSIX).
                for task in group.tasks { task.pendingSignals.remove(signal) }
                group.pendingSignals.remove(signal)
            }
        }
        if a[2] != 0 { try space.write(old.bytes, to: a[2]) }
        return 0
    }

    func sysRtSigprocmask(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[3] == 8 else { throw Errno.EINVAL }
        let old = signalMask
        if a[1] != 0 {
            let set = try space.load(UInt64.self, at: a[1])
            switch a.int32(0) {
            case SIG_BLOCK: signalMask |= set
            case SIG_UNBLOCK: signalMask &= ~set
            case SIG_SETMASK: signalMask = set
            default: throw Errno.EINVAL
            }
            signalMask &= ~unblockableSignals
        }
        if a[2] != 0 { try space.store(old, at: a[2]) }
        return 0
    }

    func sysRtSigpending(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[1] <= 8 else { throw Errno.EINVAL }
        try space.store((pendingSignals.bits | group.pendingSignals.bits) & signalMask, at: a[0])
        return 0
    }

    func sysRtSigreturn(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        do throws(Errno) {
            try returnFromSignal()
        } catch {
            forceSignal(SignalInformation(signal: SIGSEGV), reason: "rt_sigreturn with a corrupt signal frame at 0x\(hex(registers.rsp))")
            registersReplaced = true
        }
        return 0
    }

    /// rt_sigsuspend: waits with a temporary mask until a handled signal arrives; always EINTR.
    func sysRtSigsuspend(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[1] == 8 else { throw Errno.EINVAL }
        let mask = try space.load(UInt64.self, at: a[0]) & ~unblockableSignals
        if savedSignalMask == nil { savedSignalMask = signalMask }
        signalMask = mask
        if hasDeliverableSignal { throw Errno.EINTR }
        try block(Wait(reason: "rt_sigsuspend", forSignal: true))
    }

    func sysPause(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try block(Wait(reason: "pause", forSignal: true))
    }

    /// rt_sigtimedwait: takes a pending signal of `set` (blocked ones included) without running
    /// its handler, waiting up to the timeout.
    func sysRtSigtimedwait(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[3] == 8 else { throw Errno.EINVAL }
        let set = try space.load(UInt64.self, at: a[0]) & ~unblockableSignals
        let pending = (pendingSignals.bits | group.pendingSignals.bits) & set
        if pending != 0 {
            let signal = Int32(pending.trailingZeroBitCount + 1)
            let info = pendingSignals.take(signal) ?? group.pendingSignals.take(signal)!
            if a[1] != 0 {
                var bytes = [UInt8](repeating: 0, count: 128)
                withUnsafeBytes(of: info.signal) { bytes.replaceSubrange(0..<4, with: $0) }
                withUnsafeBytes(of: info.code) { bytes.replaceSubrange(8..<12, with: $0) }
                withUnsafeBytes(of: info.senderPID) { bytes.replaceSubrange(16..<20, with: $0) }
                withUnsafeBytes(of: info.senderUID) { bytes.replaceSubrange(20..<24, with: $0) }
                withUnsafeBytes(of: info.signal == SIGCHLD ? UInt64(UInt32(bitPattern: info.status)) : info.value) {
                    bytes.replaceSubrange(24..<32, with: $0)
                }
                try space.write(bytes, to: a[1])
            }
            return UInt64(signal)
        }
        var deadline: UInt64?
        if a[2] != 0 {
            let timeout = try space.loadStruct(timespec.self, at: a[2], zero: timespec())
            guard timeout.tv_sec >= 0, (0..<1_000_000_000).contains(timeout.tv_nsec) else { throw Errno.EINVAL }
            deadline = self.deadline(afterNanoseconds: timeout.nanoseconds)
            if hasTimedOut { throw Errno.EAGAIN }
        }
        // A signal of `set` that arrives wakes this wait (see `Sandbox.send`), blocked or not.
        sigtimedwaitSet = set
        try block(Wait(deadline: deadline, reason: "rt_sigtimedwait", forSignal: true))
    }

    func sysSigaltstack(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let onStack = alternateStack.contains(registers.rsp)
        if a[1] != 0 {
            var old = alternateStack
            if onStack { old.flags |= AlternateStack.onStack }
            try space.storeStruct((old.base, old.flags, Int32(0), old.size), at: a[1])
        }
        if a[0] != 0 {
            guard !onStack else { throw Errno.EPERM }
            let base = try space.load(UInt64.self, at: a[0])
            let flags = try space.load(Int32.self, at: a[0] + 8)
            let size = try space.load(UInt64.self, at: a[0] + 16)
            guard flags & ~(AlternateStack.disabled | Int32(bitPattern: 0x8000_0000)) == 0 else { throw Errno.EINVAL }
            if flags & AlternateStack.disabled != 0 {
                alternateStack = AlternateStack()
            } else {
                guard size >= 2048 else { throw Errno.ENOMEM }  // MINSIGSTKSZ
                alternateStack = AlternateStack(base: base, size: size, flags: 0)
            }
        }
        return 0
    }

    // MARK: sending

    func sysKill(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let target = a.int32(0), signal = a.int32(1)
        guard (0...64).contains(signal) else { throw Errno.EINVAL }
        var info = SignalInformation(signal: signal)
        info.senderPID = pid
        let groups: [ThreadGroup]
        switch target {
        case let pid where pid > 0:
            guard let group = sandbox.groups[pid], !group.isZombie else { throw Errno.ESRCH }
            groups = [group]
        default:
            // Process groups and sessions are not modelled: 0, -1 and -pgid reach every process
            // of the sandbox that the caller could signal (for -1, all but itself).
            groups = sandbox.groups.values.filter { !$0.isZombie && (target != -1 || $0 !== group) }
                .sorted { $0.pid < $1.pid }
            guard !groups.isEmpty else { throw Errno.ESRCH }
        }
        guard signal != 0 else { return 0 }
        for target in groups { sandbox.send(info, toProcess: target) }
        return 0
    }

    func sysTkill(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try signalThread(tid: a.int32(0), group: nil, signal: a.int32(1))
    }

    func sysTgkill(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try signalThread(tid: a.int32(1), group: a.int32(0), signal: a.int32(2))
    }

    private func signalThread(tid: Int32, group pid: Int32?, signal: Int32) throws(Errno) -> UInt64 {
        guard tid > 0, (pid ?? 1) > 0, (0...64).contains(signal) else { throw Errno.EINVAL }
        guard let task = sandbox.tasks[tid], pid == nil || task.group.pid == pid else { throw Errno.ESRCH }
        guard signal != 0 else { return 0 }
        var info = SignalInformation(signal: signal)
        info.code = SignalInformation.tkillCode
        info.senderPID = self.pid
        sandbox.send(info, toTask: task)
        return 0
    }

    /// rt_sigqueueinfo / rt_tgsigqueueinfo: a signal with the caller's siginfo (code must be < 0).
    func sysRtSigqueueinfo(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let signal = a.int32(1)
        guard (1...64).contains(signal) else { throw Errno.EINVAL }
        guard let group = sandbox.groups[a.int32(0)], !group.isZombie else { throw Errno.ESRCH }
        var info = SignalInformation(signal: signal)
        info.code = try space.load(Int32.self, at: a[2] + 8)
        guard info.code < 0 else { throw Errno.EPERM }
        info.senderPID = pid
        info.value = try space.load(UInt64.self, at: a[2] + 24)
        sandbox.send(info, toProcess: group)
        return 0
    }
}

extension timespec {
    var nanoseconds: UInt64 {
        let (product, overflow) = UInt64(max(0, tv_sec)).multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : product &+ UInt64(max(0, tv_nsec))
    }

    init(nanoseconds: UInt64) {
        self.init(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    }
}
