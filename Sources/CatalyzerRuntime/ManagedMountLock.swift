import Glibc

/// The exclusive `flock` on `RUN/mounts/KEY.lock` that serialises making and removing one
/// store's managed mount, so concurrent invocations that all find it missing start one daemon.
/// Released when the value is dropped (or the process dies); close-on-exec, so the daemon
/// started while holding it does not keep it held for its whole life.
final class ManagedMountLock {
    private let fd: Int32

    init(path: String) throws(MountError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .runDirectoryUnusable(operation: "open the lock file", path: path, errno: errno) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else {
                let code = errno
                close(fd)
                throw .runDirectoryUnusable(operation: "lock", path: path, errno: code)
            }
        }
        self.fd = fd
    }

    deinit { close(fd) }
}
