import CKVM
import Glibc

/// Path and directory syscalls: cwd, directory listing, links, access checks, mkdir/unlink.
extension Task {
    func sysGetcwd(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let bytes = Array(workingDirectory.utf8) + [0]
        guard UInt64(bytes.count) <= a[1] else { throw Errno.ERANGE }
        try space.write(bytes, to: a[0])
        return UInt64(bytes.count)
    }

    func sysChdir(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let path = try absolutePath(try space.readCString(a[0]), relativeTo: AT_FDCWD)
        try changeDirectory(to: path)
        return 0
    }

    func sysFchdir(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try changeDirectory(to: try files.file(a.int32(0)).guestPath)
        return 0
    }

    private func changeDirectory(to path: String) throws(Errno) {
        let status = try filesystem.status(path, followSymlinks: true)
        guard status.st_mode & S_IFMT == S_IFDIR else { throw Errno.ENOTDIR }
        workingDirectory = try filesystem.resolve(path)  // symlinks in /tmp followed, as getcwd reports
    }

    func sysMkdir(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try makeDirectory(dirfd: AT_FDCWD, pathAddress: a[0], mode: a.uint32(1))
    }

    func sysMkdirat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try makeDirectory(dirfd: a.int32(0), pathAddress: a[1], mode: a.uint32(2))
    }

    private func makeDirectory(dirfd: Int32, pathAddress: UInt64, mode: UInt32) throws(Errno) -> UInt64 {
        let path = try absolutePath(try space.readCString(pathAddress), relativeTo: dirfd)
        try filesystem.makeDirectory(path, mode: mode & ~fileCreationMask, owner: credentials.fileOwner)
        return 0
    }

    func sysRmdir(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try filesystem.remove(try absolutePath(try space.readCString(a[0]), relativeTo: AT_FDCWD), directory: true)
        return 0
    }

    func sysUnlink(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try filesystem.remove(try absolutePath(try space.readCString(a[0]), relativeTo: AT_FDCWD), directory: false)
        return 0
    }

    func sysUnlinkat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let path = try absolutePath(try space.readCString(a[1]), relativeTo: a.int32(0))
        try filesystem.remove(path, directory: a.int32(2) & AT_REMOVEDIR != 0)
        return 0
    }

    func sysReadlink(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try readLink(dirfd: AT_FDCWD, pathAddress: a[0], buffer: a[1], size: a[2])
    }

    func sysReadlinkat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try readLink(dirfd: a.int32(0), pathAddress: a[1], buffer: a[2], size: a[3])
    }

    private func readLink(dirfd: Int32, pathAddress: UInt64, buffer: UInt64, size: UInt64) throws(Errno) -> UInt64 {
        guard size > 0, size <= UInt64(Int32.max) else { throw Errno.EINVAL }
        let target = try filesystem.readLink(try absolutePath(try space.readCString(pathAddress), relativeTo: dirfd))
        let bytes = Array(Array(target.utf8).prefix(Int(size)))
        try space.write(bytes, to: buffer)
        return UInt64(bytes.count)
    }

    func sysAccess(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try checkAccess(dirfd: AT_FDCWD, pathAddress: a[0], mode: a.int32(1), flags: 0)
    }

    func sysFaccessat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try checkAccess(dirfd: a.int32(0), pathAddress: a[1], mode: a.int32(2), flags: a.number == 439 ? a.int32(3) : 0)
    }

    /// access(2) as root sees it: existence, EROFS for writes outside /tmp, and an exec bit for X_OK.
    private func checkAccess(dirfd: Int32, pathAddress: UInt64, mode: Int32, flags: Int32) throws(Errno) -> UInt64 {
        guard mode & ~(R_OK | W_OK | X_OK) == 0 else { throw Errno.EINVAL }
        let path = try absolutePath(try space.readCString(pathAddress), relativeTo: dirfd)
        let status = try filesystem.status(path, followSymlinks: flags & AT_SYMLINK_NOFOLLOW == 0)
        if mode & W_OK != 0, filesystem.overlay == nil,
           case .rootfs = filesystem.locate(try filesystem.resolve(path, followFinal: flags & AT_SYMLINK_NOFOLLOW == 0)) {
            throw Errno.EROFS
        }
        if mode & X_OK != 0, status.st_mode & S_IFMT != S_IFDIR, status.st_mode & 0o111 == 0 { throw Errno.EACCES }
        return 0
    }

    func sysUmask(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let old = fileCreationMask
        fileCreationMask = a.uint32(0) & 0o777
        return UInt64(old)
    }

    func sysGetdents64(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a[0])
        let capacity = min(try a.length(2), 1 << 20)
        switch file.backing {
        case .host(let fd, _):
            var buffer = [UInt8](repeating: 0, count: capacity)
            let count = buffer.withUnsafeMutableBytes { chost_getdents64(fd, $0.baseAddress, capacity) }
            guard count >= 0 else { throw Errno.lastHostError }
            try space.write(Array(buffer.prefix(count)), to: a[1])
            return UInt64(count)
        case .pipe, .special:
            throw Errno.ENOTDIR
        case .memory(let node):
            guard case .directory(let children) = node.content else { throw Errno.ENOTDIR }
            func type(_ node: MemoryNode) -> UInt8 {
                UInt8(node.isDirectory ? DT_DIR : node.isSymlink ? DT_LNK : node.isSocket ? DT_SOCK : DT_REG)
            }
            var entries = [(".", node.inode, UInt8(DT_DIR)), ("..", UInt64(1), UInt8(DT_DIR))]
                + children.sorted { $0.key < $1.key }.map { ($0.key, $0.value.inode, type($0.value)) }
            // A directory of the writable root's upper layer lists the lower directory's entries too.
            if let overlay = filesystem.overlay,
               let components = filesystem.writableRootComponents(filesystem.locate(file.guestPath)) {
                entries += filesystem.lowerEntries(overlay, of: components, excluding: Set(children.keys)).map { ($0.name, $0.inode, $0.type) }
            }
            var output: [UInt8] = []
            while file.position < entries.count {
                let (name, inode, entryType) = entries[file.position]
                var record = Self.directoryRecord(name: name, inode: inode, isDirectory: entryType == UInt8(DT_DIR),
                                                  nextOffset: file.position + 1)
                record[18] = entryType
                guard output.count + record.count <= capacity else { break }
                output += record
                file.position += 1
            }
            if output.isEmpty && file.position < entries.count { throw Errno.EINVAL }
            try space.write(output, to: a[1])
            return UInt64(output.count)
        }
    }

    /// One `struct linux_dirent64`: ino, off, reclen, type, name, NUL, padded to 8 bytes.
    private static func directoryRecord(name: String, inode: UInt64, isDirectory: Bool, nextOffset: Int) -> [UInt8] {
        let nameBytes = Array(name.utf8) + [0]
        let length = (19 + nameBytes.count + 7) & ~7
        var record = [UInt8](repeating: 0, count: length)
        record.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: inode, toByteOffset: 0, as: UInt64.self)
            raw.storeBytes(of: Int64(nextOffset), toByteOffset: 8, as: Int64.self)
            raw.storeBytes(of: UInt16(length), toByteOffset: 16, as: UInt16.self)
            raw.storeBytes(of: isDirectory ? UInt8(DT_DIR) : UInt8(DT_REG), toByteOffset: 18, as: UInt8.self)
        }
        record.replaceSubrange(19..<19 + nameBytes.count, with: nameBytes)
        return record
    }
}
