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
        let now = MemoryNode.now()
        var accessed = now, modified = now
        if a[2] != 0 {
            accessed = try space.loadStruct(timespec.self, at: a[2], zero: timespec())
            modified = try space.loadStruct(timespec.self, at: a[2] &+ 16, zero: timespec())
        }
        let omit = 0x3FFF_FFFE, setToNow = 0x3FFF_FFFF
        for time in [accessed, modified] where time.tv_nsec != omit && time.tv_nsec != setToNow {
            guard time.tv_nsec >= 0 && time.tv_nsec < 1_000_000_000 else { throw Errno.EINVAL }
        }
        if accessed.tv_nsec != omit { node.accessed = accessed.tv_nsec == setToNow ? now : accessed }
        if modified.tv_nsec != omit { node.modified = modified.tv_nsec == setToNow ? now : modified }
        if accessed.tv_nsec != omit || modified.tv_nsec != omit { node.changed = now }
        return 0
    }

    func sysChmod(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let node = try filesystem.modifiableNode(try absolutePath(try space.readCString(a[0]), relativeTo: AT_FDCWD))
        node.mode = a.uint32(1) & 0o7777
        node.changed = MemoryNode.now()
        return 0
    }

    func sysFchmod(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let node = try memoryNode(of: try files.file(a.int32(0)))
        node.mode = a.uint32(1) & 0o7777
        node.changed = MemoryNode.now()
        return 0
    }

    func sysFchmodat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let node = try filesystem.modifiableNode(try absolutePath(try space.readCString(a[1]), relativeTo: a.int32(0)))
        node.mode = a.uint32(2) & 0o7777
        node.changed = MemoryNode.now()
        return 0
    }

    /// chown(2) and lchown(2) (number 94) of a /tmp node. The program is root in its sandbox, so
    /// any owner may be given; -1 leaves that id as it is.
    func sysChown(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let path = try absolutePath(try space.readCString(a[0]), relativeTo: AT_FDCWD)
        changeOwner(try filesystem.modifiableNode(path, followSymlinks: a.number != 94), a.uint32(1), a.uint32(2))
        return 0
    }

    func sysFchown(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        changeOwner(try memoryNode(of: try files.file(a.int32(0))), a.uint32(1), a.uint32(2))
        return 0
    }

    /// fchownat(2): AT_SYMLINK_NOFOLLOW and AT_EMPTY_PATH.
    func sysFchownat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let flags = a.int32(4)
        guard flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH) == 0 else { throw Errno.EINVAL }
        let path = try space.readCString(a[1])
        let node: MemoryNode
        if path.isEmpty {
            guard flags & AT_EMPTY_PATH != 0 else { throw Errno.ENOENT }
            node = try memoryNode(of: try files.file(a.int32(0)))
        } else {
            node = try filesystem.modifiableNode(try absolutePath(path, relativeTo: a.int32(0)),
                                                 followSymlinks: flags & AT_SYMLINK_NOFOLLOW == 0)
        }
        changeOwner(node, a.uint32(2), a.uint32(3))
        return 0
    }

    private func changeOwner(_ node: MemoryNode, _ owner: UInt32, _ group: UInt32) {
        if owner != UInt32.max { node.owner = owner }
        if group != UInt32.max { node.group = group }
        // As Linux does for a chown of a non-directory: set-user-ID goes, and set-group-ID when
        // the group can execute (otherwise it marks mandatory locking).
        if !node.isDirectory && !node.isSymlink && (owner != UInt32.max || group != UInt32.max) {
            node.mode &= ~UInt32(S_ISUID)
            if node.mode & 0o010 != 0 { node.mode &= ~UInt32(S_ISGID) }
        }
        node.changed = MemoryNode.now()
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
        guard !node.isDirectory else { throw Errno.EISDIR }
        guard length <= Int64(filesystem.tmp.capacity) else { throw Errno.EFBIG }
        try filesystem.truncateFile(node, length: Int(length))
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

    /// Device nodes (mknod): /tmp holds no devices and the rootfs is read-only, so EROFS.
    func sysCreateInRootfs(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        throw Errno.EROFS
    }

    private func memoryNode(of file: OpenFile) throws(Errno) -> MemoryNode {
        if case .memory(let node) = file.backing { return node }
        // A rootfs file of a writable root, opened before it was copied up: the change goes to
        // its upper copy (this open file keeps reading the lower one, as on overlayfs).
        if filesystem.overlay != nil, case .host = file.backing { return try filesystem.modifiableNode(file.guestPath, followSymlinks: false) }
        throw Errno.EROFS
    }
}
