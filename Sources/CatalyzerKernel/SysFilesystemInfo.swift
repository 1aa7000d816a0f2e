import CKVM
import Glibc

/// statfs(2) and fstatfs(2). /tmp and /dev/shm report a tmpfs sized by the sandbox's /tmp capacity;
/// rootfs paths report the host filesystem's numbers, marked read-only (ST_RDONLY) as the
/// sandbox sees it; a writable root reports its in-memory upper layer's, as /tmp does.
extension Task {
    static let tmpfsMagic = 0x0102_1994, pipefsMagic = 0x5049_5045
    static let readOnlyMount = 1, noSetuidMount = 2, noDevicesMount = 4

    func sysStatfs(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let path = try absolutePath(try space.readCString(a[0]), relativeTo: AT_FDCWD)
        let result: FilesystemStatus
        switch filesystem.locate(try filesystem.resolve(path)) {
        case .memory(let root, let components):
            _ = try filesystem.tmp.lookup(components, in: root)
            result = memoryFilesystemStatus()
        case .generated(let root, let components):
            _ = try filesystem.tmp.lookup(components, in: root)
            result = procFilesystemStatus()
        case .rootfs(let path) where filesystem.overlay != nil:
            // A writable root: the space writes take is the in-memory upper layer's.
            _ = try filesystem.status(path, followSymlinks: true)
            result = memoryFilesystemStatus()
        case .rootfs(let path):
            let fd = try filesystem.openHost(path, flags: O_PATH)
            defer { close(fd) }
            result = try hostFilesystemStatus(fd)
        case .executableLink:
            let fd = try filesystem.openExecutable(executablePath)
            defer { close(fd) }
            result = try hostFilesystemStatus(fd)
        case .hostDevice(let path):
            let fd = Glibc.open(path, O_PATH | O_CLOEXEC)
            guard fd >= 0 else { throw Errno.lastHostError }
            defer { close(fd) }
            result = try hostFilesystemStatus(fd)
        }
        try space.storeStruct(result, at: a[1])
        return 0
    }

    func sysFstatfs(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a.int32(0))
        let result: FilesystemStatus
        switch file.backing {
        case .memory(let node): result = node.inode >= ProcFilesystem.firstInode ? procFilesystemStatus() : memoryFilesystemStatus()
        case .host where filesystem.overlay != nil && filesystem.writableRootComponents(filesystem.locate(file.guestPath)) != nil:
            result = memoryFilesystemStatus()
        case .host(let fd, _): result = try hostFilesystemStatus(fd)
        case .pipe, .special:
            var pipe = FilesystemStatus()
            pipe.f_type = Self.pipefsMagic
            pipe.f_bsize = 4096
            pipe.f_namelen = 255
            pipe.f_frsize = 4096
            result = pipe
        }
        try space.storeStruct(result, at: a[1])
        return 0
    }

    private func memoryFilesystemStatus() -> FilesystemStatus {
        let tmp = filesystem.tmp
        var result = FilesystemStatus()
        result.f_type = Self.tmpfsMagic
        result.f_bsize = 4096
        result.f_blocks = UInt64(tmp.capacity / 4096)
        result.f_bfree = UInt64(max(0, tmp.bytesFree) / 4096)
        result.f_bavail = result.f_bfree
        // tmpfs limits inodes to half the pages of RAM by default; report that many.
        result.f_files = UInt64(tmp.capacity / 8192)
        result.f_ffree = UInt64(max(0, tmp.capacity / 8192 - Int(tmp.nextInode)))
        result.f_namelen = 255
        result.f_frsize = 4096
        result.f_flags = Self.noSetuidMount | Self.noDevicesMount
        return result
    }

    /// /proc: no blocks, read-only, as Linux's procfs reports (PROC_SUPER_MAGIC).
    private func procFilesystemStatus() -> FilesystemStatus {
        var result = FilesystemStatus()
        result.f_type = 0x9FA0
        result.f_bsize = 4096
        result.f_namelen = 255
        result.f_frsize = 4096
        result.f_flags = Self.readOnlyMount | Self.noSetuidMount | Self.noDevicesMount
        return result
    }

    private func hostFilesystemStatus(_ fd: Int32) throws(Errno) -> FilesystemStatus {
        var result = FilesystemStatus()
        guard chost_fstatfs(fd, &result) == 0 else { throw Errno.lastHostError }
        result.f_flags |= Self.readOnlyMount
        return result
    }
}

/// Linux x86-64 `struct statfs` (glibc's Swift module does not declare it).
struct FilesystemStatus {
    var f_type = 0, f_bsize = 0
    var f_blocks: UInt64 = 0, f_bfree: UInt64 = 0, f_bavail: UInt64 = 0, f_files: UInt64 = 0, f_ffree: UInt64 = 0
    var f_fsid: (Int32, Int32) = (0, 0)
    var f_namelen = 0, f_frsize = 0, f_flags = 0
    var f_spare: (Int, Int, Int, Int) = (0, 0, 0, 0)
}
