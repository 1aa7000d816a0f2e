import Glibc

/// Extended attributes (getxattr, setxattr, listxattr, removexattr and their l/f variants). No
/// file in the sandbox has any, and none can be set: /tmp answers as a tmpfs without xattr support
/// (EOPNOTSUPP, "Operation not supported", for every name, where Linux's tmpfs supports only
/// trusted. and security.), and the read-only rootfs is EROFS for changes. Lists are empty. The
/// path or fd is checked first, so a missing file is still ENOENT or EBADF.
extension Task {
    private enum Target { case path(followSymlinks: Bool), fd }

    private func xattrTarget(_ a: SyscallArguments, _ target: Target) throws(Errno) -> Filesystem.Location? {
        switch target {
        case .fd:
            let file = try files.file(a.int32(0))
            if case .memory = file.backing { return nil }
            return filesystem.locate(file.guestPath)
        case .path(let follow):
            let path = try absolutePath(try space.readCString(a[0]), relativeTo: AT_FDCWD)
            _ = try filesystem.status(path, followSymlinks: follow)
            return filesystem.locate(try filesystem.resolve(path, followFinal: follow))
        }
    }

    private func checkName(_ address: UInt64) throws(Errno) {
        let name = try space.readCString(address, limit: 256)
        guard !name.isEmpty else { throw Errno.ERANGE }
    }

    private func getAttribute(_ a: SyscallArguments, _ target: Target) throws(Errno) -> UInt64 {
        _ = try xattrTarget(a, target)
        try checkName(a[1])
        throw Errno.EOPNOTSUPP
    }

    private func setAttribute(_ a: SyscallArguments, _ target: Target) throws(Errno) -> UInt64 {
        let location = try xattrTarget(a, target)
        try checkName(a[1])
        guard a.int32(4) & ~0x3 == 0 else { throw Errno.EINVAL }  // XATTR_CREATE | XATTR_REPLACE
        if case .rootfs = location { throw Errno.EROFS }
        throw Errno.EOPNOTSUPP
    }

    private func listAttributes(_ a: SyscallArguments, _ target: Target) throws(Errno) -> UInt64 {
        _ = try xattrTarget(a, target)
        return 0
    }

    private func removeAttribute(_ a: SyscallArguments, _ target: Target) throws(Errno) -> UInt64 {
        let location = try xattrTarget(a, target)
        try checkName(a[1])
        if case .rootfs = location { throw Errno.EROFS }
        throw Errno.EOPNOTSUPP
    }

    func sysSetxattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try setAttribute(a, .path(followSymlinks: true)) }
    func sysLsetxattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try setAttribute(a, .path(followSymlinks: false)) }
    func sysFsetxattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try setAttribute(a, .fd) }
    func sysGetxattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try getAttribute(a, .path(followSymlinks: true)) }
    func sysLgetxattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try getAttribute(a, .path(followSymlinks: false)) }
    func sysFgetxattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try getAttribute(a, .fd) }
    func sysListxattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try listAttributes(a, .path(followSymlinks: true)) }
    func sysLlistxattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try listAttributes(a, .path(followSymlinks: false)) }
    func sysFlistxattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try listAttributes(a, .fd) }
    func sysRemovexattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try removeAttribute(a, .path(followSymlinks: true)) }
    func sysLremovexattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try removeAttribute(a, .path(followSymlinks: false)) }
    func sysFremovexattr(_ a: SyscallArguments) throws(Errno) -> UInt64 { try removeAttribute(a, .fd) }
}
