import Glibc

/// Moving bytes between fds inside the kernel: splice(2), tee(2), copy_file_range(2); and
/// memfd_create(2), an anonymous /tmp-like file. Pipes and /tmp files are monitor memory, so
/// "zero-copy" is a copy through a monitor buffer here, which is what the ABI permits.
extension Task {
    func sysSplice(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let input = try files.file(a.int32(0)), output = try files.file(a.int32(2))
        let inputOffsetAddress = a[1], outputOffsetAddress = a[3]
        guard a.uint32(5) & ~0xF == 0 else { throw Errno.EINVAL }
        guard input.isReadable, output.isWritable else { throw Errno.EBADF }
        let inputIsPipe = input.isPipe, outputIsPipe = output.isPipe
        guard inputIsPipe || outputIsPipe else { throw Errno.EINVAL }
        if (inputIsPipe && inputOffsetAddress != 0) || (outputIsPipe && outputOffsetAddress != 0) { throw Errno.ESPIPE }
        if !outputIsPipe && output.statusFlags & O_APPEND != 0 { throw Errno.EINVAL }
        return try copyBytes(from: input, offsetAt: inputOffsetAddress, to: output, offsetAt: outputOffsetAddress,
                             count: try a.length(4))
    }

    /// tee(2) duplicates pipe contents without consuming them: not supported (EINVAL, as for
    /// fds tee does not handle), so callers fall back to read and write.
    func sysTee(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        _ = try files.file(a.int32(0))
        _ = try files.file(a.int32(1))
        throw Errno.EINVAL
    }

    func sysCopyFileRange(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let input = try files.file(a.int32(0)), output = try files.file(a.int32(2))
        guard a.uint32(5) == 0 else { throw Errno.EINVAL }
        guard input.isReadable, output.isWritable, output.statusFlags & O_APPEND == 0 else { throw Errno.EBADF }
        for file in [input, output] {
            let mode = try status(of: file).st_mode & S_IFMT
            if mode == S_IFDIR { throw Errno.EISDIR }
            guard mode == S_IFREG else { throw Errno.EINVAL }
        }
        // Linux copies only within one filesystem type: rootfs (the host's) to /tmp (tmpfs) is EXDEV,
        // and rootfs files are never open for writing.
        if case .host = input.backing { throw Errno.EXDEV }
        if case .host = output.backing { throw Errno.EBADF }
        return try copyBytes(from: input, offsetAt: a[1], to: output, offsetAt: a[3], count: try a.length(4))
    }

    /// memfd_create(2): a file in no directory, in /tmp's memory (counted against its capacity
    /// while it grows), read, written, truncated and mapped (also MAP_SHARED) like a /tmp file.
    /// File seals are not supported (F_ADD_SEALS is EINVAL).
    func sysMemfdCreate(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let closeOnExec: UInt32 = 1, allowSealing: UInt32 = 2, noExecSeal: UInt32 = 8, exec: UInt32 = 0x10
        let flags = a.uint32(1)
        guard flags & ~(closeOnExec | allowSealing | noExecSeal | exec) == 0 else { throw Errno.EINVAL }
        let name = try space.readCString(a[0], limit: 250)
        let node = try filesystem.tmp.makeUnlinkedFile(mode: flags & noExecSeal != 0 ? 0o666 : 0o777)
        node.owner = credentials.uid
        node.group = credentials.gid
        let file = OpenFile(backing: .memory(node), guestPath: "/memfd:\(name) (deleted)", statusFlags: O_RDWR)
        return UInt64(try files.install(file, closeOnExec: flags & closeOnExec != 0))
    }
}

extension OpenFile {
    var isPipe: Bool {
        if case .pipe = backing { return true }
        return false
    }
}
