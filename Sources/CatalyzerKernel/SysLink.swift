import Glibc

/// Hard and symbolic links (link, linkat, symlink, symlinkat). They work in /tmp and /dev/shm;
/// the rootfs is read-only (EROFS), and a hard link between it and /tmp is EXDEV.
extension Task {
    private static let followSymlink: Int32 = 0x400  // AT_SYMLINK_FOLLOW

    func sysLink(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try makeHardLink(AT_FDCWD, a[0], AT_FDCWD, a[1], flags: 0)
    }

    func sysLinkat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try makeHardLink(a.int32(0), a[1], a.int32(2), a[3], flags: a.int32(4))
    }

    private func makeHardLink(_ sourceDirectory: Int32, _ sourceAddress: UInt64, _ destinationDirectory: Int32,
                              _ destinationAddress: UInt64, flags: Int32) throws(Errno) -> UInt64 {
        guard flags & ~(Self.followSymlink | AT_EMPTY_PATH) == 0 else { throw Errno.EINVAL }
        let sourceName = try space.readCString(sourceAddress)
        let destination = try absolutePath(try space.readCString(destinationAddress), relativeTo: destinationDirectory)
        let source: String
        if sourceName.isEmpty {
            guard flags & AT_EMPTY_PATH != 0 else { throw Errno.ENOENT }
            // linkat(fd, "", ..., AT_EMPTY_PATH): the open file itself, even an unlinked one.
            let file = try files.file(sourceDirectory)
            guard case .memory(let node) = file.backing else { throw Errno.EXDEV }
            guard case .memory(let root, let components) = filesystem.locate(try filesystem.resolve(destination, followFinal: false)) else {
                throw Errno.EXDEV
            }
            try filesystem.tmp.link(node, at: components, in: root)
            return 0
        } else {
            source = try absolutePath(sourceName, relativeTo: sourceDirectory)
        }
        guard !destination.hasSuffix("/") else { throw Errno.ENOENT }
        try filesystem.makeHardLink(from: source, to: destination, followSymlinks: flags & Self.followSymlink != 0)
        return 0
    }

    func sysSymlink(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try makeSymlink(target: a[0], directory: AT_FDCWD, path: a[1])
    }

    func sysSymlinkat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try makeSymlink(target: a[0], directory: a.int32(1), path: a[2])
    }

    private func makeSymlink(target: UInt64, directory: Int32, path: UInt64) throws(Errno) -> UInt64 {
        let targetPath = try space.readCString(target)
        let linkPath = try absolutePath(try space.readCString(path), relativeTo: directory)
        try filesystem.makeSymlink(linkPath, target: targetPath, owner: credentials.fileOwner)
        return 0
    }
}
