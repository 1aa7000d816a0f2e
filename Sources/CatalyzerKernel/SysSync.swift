import Glibc

/// Syncing: the rootfs is read-only and /tmp lives in memory, so there is never anything to write
/// back; these succeed once their arguments are valid (what a database needs from fsync).
extension Task {
    /// fsync(2) and fdatasync(2).
    func sysFsync(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a.int32(0))
        if case .pipe = file.backing { throw Errno.EINVAL }  // as Linux: pipes cannot be synced
        return 0
    }

    func sysSync(_ a: SyscallArguments) throws(Errno) -> UInt64 { 0 }

    func sysSyncfs(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        _ = try files.file(a.int32(0))
        return 0
    }

    /// sync_file_range(2): fd, offset, nbytes, flags.
    func sysSyncFileRange(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a.int32(0))
        guard a.uint32(3) & ~0x7 == 0, a.signed(1) >= 0, a.signed(2) >= 0 else { throw Errno.EINVAL }
        if case .pipe = file.backing { throw Errno.ESPIPE }
        return 0
    }
}
