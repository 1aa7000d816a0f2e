import Glibc

/// An advisory `flock` on a file in the store, released when the value is dropped.
///
/// Two locks keep concurrent `catalyzer` processes safe:
/// - `gc.lock`: writers (create, rm) hold it shared for their whole run; `image gc` holds it
///   exclusive, so it never deletes a blob that a create in progress has written but not named yet.
/// - `index.lock`: held exclusive while `index.json` is read, changed and replaced.
/// Readers take no lock: `index.json` and blobs are only ever replaced by `rename`, so a reader
/// always sees a complete file.
final class StoreLock {
    private let fd: Int32

    enum Mode { case shared, exclusive }

    init(path: String, mode: Mode, store: String) throws(ImageError) {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, ImageStore.fileMode)
        guard fd >= 0 else { throw ImageError.writing("open", path, errno: errno, store: store) }
        while flock(fd, mode == .shared ? LOCK_SH : LOCK_EX) != 0 {
            if errno != EINTR {
                let code = errno
                close(fd)
                throw .io(operation: "lock", path: path, errno: code)
            }
        }
        self.fd = fd
    }

    deinit { close(fd) }
}
