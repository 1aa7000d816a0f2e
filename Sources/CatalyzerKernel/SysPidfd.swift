import Glibc

/// A process file descriptor (pidfd_open): names one process for its whole life, unlike a pid
/// that is reused. It polls readable once the process has exited.
final class ProcessFile: SpecialFile {
    let pid: Int32
    private weak var group: ThreadGroup?
    let changed: WaitQueue

    init(_ group: ThreadGroup) {
        pid = group.pid
        self.group = group
        changed = group.exited
    }

    var name: String { "anon_inode:[pidfd]" }

    /// The process, while it has not exited.
    var liveProcess: ThreadGroup? {
        guard let group, !group.isZombie, !group.tasks.isEmpty else { return nil }
        return group
    }

    func readiness() -> Int16 { liveProcess == nil ? Int16(POLLIN | POLLRDNORM) : 0 }

    func read(_ task: Task, _ file: OpenFile, into vectors: [iovec]) throws(Errno) -> Int { throw Errno.EINVAL }
    func write(_ task: Task, _ file: OpenFile, from vectors: [iovec]) throws(Errno) -> Int { throw Errno.EINVAL }
}

/// pidfd_open and pidfd_send_signal. A /proc/PID directory opened with O_DIRECTORY works as a
/// pidfd for pidfd_send_signal too, as on Linux.
extension Task {
    func sysPidfdOpen(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let nonblocking = O_NONBLOCK
        guard a.int32(1) & ~nonblocking == 0 else { throw Errno.EINVAL }
        guard a.int32(0) > 0, let target = sandbox.groups[a.int32(0)], !target.isZombie else { throw Errno.ESRCH }
        let file = OpenFile(backing: .special(ProcessFile(target)), guestPath: "anon_inode:[pidfd]",
                            statusFlags: O_RDWR | (a.int32(1) & nonblocking))
        return UInt64(try files.install(file, closeOnExec: true))
    }

    func sysPidfdSendSignal(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let signal = a.int32(1)
        guard (0...64).contains(signal), a.int32(3) == 0 else { throw Errno.EINVAL }
        guard a[2] == 0 else { throw Errno.EINVAL }  // a caller-made siginfo is not supported
        let file = try files.file(a.int32(0))
        let target: ThreadGroup
        switch file.backing {
        case .special(let object):
            guard let process = object as? ProcessFile else { throw Errno.EBADF }
            guard let live = process.liveProcess else { throw Errno.ESRCH }
            target = live
        case .memory(let node):
            guard let pid = ProcFilesystem.pid(ofDirectory: node) else { throw Errno.EBADF }
            guard let live = sandbox.groups[pid], !live.isZombie else { throw Errno.ESRCH }
            target = live
        case .host, .pipe:
            throw Errno.EBADF
        }
        guard signal != 0 else { return 0 }
        var info = SignalInformation(signal: signal)
        info.senderPID = pid
        sandbox.send(info, toProcess: target)
        return 0
    }
}
