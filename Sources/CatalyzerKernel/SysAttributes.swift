import Glibc

/// Syscalls that change file metadata or names: utimensat, chmod/chown, truncate, rename. They work
/// under /tmp; on the read-only rootfs they fail with EROFS (or ENOENT for a missing path).
extension Task {
    func sysUtimensat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let node: MemoryNode
        if a[1] == 0 {
            node = try memoryNode(of: try files.file(a.int32(0)))
        } else {
            let path = try absolutePath(try space.readCString(a[1]), relativeTo: a.int32(0))
            node = try filesystem.modifiableNode(path, followSymlinks: a.int32(3) & AT_SYMLINK_NOFOLLOW == 0)
        }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        if a[2] != 0 {
            let modified = try space.loadStruct(timespec.self, at: a[2] &+ 16, zero: timespec())
            let omit = 0x3FFF_FFFE, setToNow = 0x3FFF_FFFF
            if modified.tv_nsec == omit { return 0 }
            if modified.tv_nsec != setToNow { now = modified }
        }
        node.modified = now
        return 0
    }

    func sysChmod(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let node = try filesystem.modifiableNode(try absolutePath(try space.readCString(a[0]), relativeTo: AT_FDCWD))
        node.mode = a.uint32(1) & 0o7777
        return 0
    }

    func sysFchmod(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try memoryNode(of: try files.file(a.int32(0))).mode = a.uint32(1) & 0o7777
        return 0
    }

    func sysFchmodat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let node = try filesystem.modifiableNode(try absolutePath(try space.readCString(a[1]), relativeTo: a.int32(0)))
        node.mode = a.uint32(2) & 0o7777
        return 0
    }

    /// Ownership never changes: the program is root in its sandbox and /tmp is all its own.
    func sysChown(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        _ = try filesystem.modifiableNode(try absolutePath(try space.readCString(a[0]), relativeTo: AT_FDCWD))
        return 0
    }

    func sysFtruncate(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a.int32(0))
        guard file.isWritable else { throw Errno.EINVAL }
        try truncate(try memoryNode(of: file), length: a.signed(1))
        return 0
    }

    func sysTruncate(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let path = try absolutePath(try space.readCString(a[0]), relativeTo: AT_FDCWD)
        try truncate(try filesystem.modifiableNode(path), length: a.signed(1))
        return 0
    }

    private func truncate(_ node: MemoryNode, length: Int64) throws(Errno) {
        guard length >= 0 else { throw Errno.EINVAL }
        guard case .file(var data) = node.content else { throw Errno.EISDIR }
        guard length <= Int64(filesystem.tmp.capacity) else { throw Errno.EFBIG }
        try filesystem.tmp.charge(Int(length) - data.count)
        node.content = .file([])
        if Int(length) < data.count {
            data.removeLast(data.count - Int(length))
        } else {
            data += [UInt8](repeating: 0, count: Int(length) - data.count)
        }
        node.content = .file(data)
    }

    func sysRename(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try rename(AT_FDCWD, a[0], AT_FDCWD, a[1])
    }

    func sysRenameat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a.number != 316 || a.uint32(4) == 0 else { throw Errno.EINVAL }  // renameat2 flags unsupported
        return try rename(a.int32(0), a[1], a.int32(2), a[3])
    }

    private func rename(_ sourceDirectory: Int32, _ source: UInt64, _ destinationDirectory: Int32,
                        _ destination: UInt64) throws(Errno) -> UInt64 {
        let from = try absolutePath(try space.readCString(source), relativeTo: sourceDirectory)
        let to = try absolutePath(try space.readCString(destination), relativeTo: destinationDirectory)
        try filesystem.rename(from, to: to)
        return 0
    }

    /// Hard links, symlinks and device nodes: /tmp holds only files and directories and the rootfs
    /// is read-only, so these always fail with EROFS.
    func sysCreateInRootfs(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        throw Errno.EROFS
    }

    private func memoryNode(of file: OpenFile) throws(Errno) -> MemoryNode {
        guard case .memory(let node) = file.backing else { throw Errno.EROFS }
        return node
    }
}
