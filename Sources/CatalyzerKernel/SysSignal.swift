import Glibc

/// Signal syscalls. Dispositions and the mask are recorded, not delivered: no signal ever arrives
/// asynchronously in a single-task sandbox, and a signal sent to itself (abort, raise) ends the
/// program with that signal, as the default action would.
extension Kernel {
    private static let sigactionSize = 32
    private static let uncatchable: Set<Int32> = [SIGKILL, SIGSTOP]

    func sysRtSigaction(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let signal = a.int32(0)
        guard (1...64).contains(signal), a[3] == 8 else { throw Errno.EINVAL }
        if a[2] != 0 {
            let old = signalActions[signal] ?? [UInt8](repeating: 0, count: Self.sigactionSize)
            try space.write(old, to: a[2])
        }
        if a[1] != 0 {
            guard !Self.uncatchable.contains(signal) else { throw Errno.EINVAL }
            signalActions[signal] = try space.read(a[1], count: Self.sigactionSize)
        }
        return 0
    }

    func sysRtSigprocmask(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[3] == 8 else { throw Errno.EINVAL }
        if a[2] != 0 { try space.store(signalMask, at: a[2]) }
        if a[1] != 0 {
            let set = try space.load(UInt64.self, at: a[1])
            switch a.int32(0) {
            case SIG_BLOCK: signalMask |= set
            case SIG_UNBLOCK: signalMask &= ~set
            case SIG_SETMASK: signalMask = set
            default: throw Errno.EINVAL
            }
        }
        return 0
    }

    /// The recorded handler address: 0 is SIG_DFL, 1 is SIG_IGN.
    func handler(for signal: Int32) -> UInt64 {
        signalActions[signal]?.prefix(8).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) } ?? 0
    }

    /// A signal the program sends itself: ignored if its disposition says so, otherwise fatal.
    func deliverToSelf(signal: Int32) throws(Errno) {
        guard (0...64).contains(signal) else { throw Errno.EINVAL }
        guard signal != 0 else { return }
        let handler = handler(for: signal)
        let ignored: UInt64 = 1
        let ignoredByDefault: Set<Int32> = [SIGCHLD, SIGURG, SIGWINCH, SIGCONT]
        if handler == ignored || (handler == 0 && ignoredByDefault.contains(signal)) { return }
        kill(signal: signal, reason: "killed by signal \(signal) sent by the program itself")
    }
}
