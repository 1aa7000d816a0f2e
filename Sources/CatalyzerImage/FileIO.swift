import Glibc

/// Small, checked wrappers over the POSIX calls the store uses. They retry on EINTR, loop over
/// short reads and writes, and turn errno into `ImageError.io` naming the path.
public enum FileIO {
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws(ImageError) -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno != EINTR { throw .io(operation: "open", path: path, errno: errno) }
        }
    }

    /// Opens an existing file of the store for reading, refusing anything but a regular file:
    /// the store writes nothing else, and a FIFO put in its place would block the reader (a
    /// catalyzerfs worker, an invocation) forever, a device would be read from the host, and a
    /// symbolic link could point outside the store. `O_NONBLOCK` makes even the open of a FIFO
    /// return at once; `O_NOFOLLOW` fails on a link (ELOOP). Returns the fd and the file's size.
    static func openRegular(_ path: String) throws(RegularFileError) -> (fd: Int32, size: Int64) {
        var fd: Int32
        repeat {
            fd = Glibc.open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC)
        } while fd < 0 && errno == EINTR
        guard fd >= 0 else {
            let code = errno
            if code == ELOOP { throw .notRegular(kind: "a symbolic link") }
            // A socket cannot be opened at all; say what it is rather than "no such device".
            var info = stat()
            if code == ENXIO && lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK { throw .notRegular(kind: "a socket") }
            throw .io(.io(operation: "open", path: path, errno: code))
        }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let code = errno
            close(fd)
            throw .io(.io(operation: "stat", path: path, errno: code))
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw .notRegular(kind: fileKind(info.st_mode))
        }
        return (fd, Int64(info.st_size))
    }

    /// Why `openRegular` failed: the path is not a regular file, or a system call failed.
    enum RegularFileError: Error {
        case notRegular(kind: String)
        case io(ImageError)
    }

    /// "a FIFO", "a directory", ... for an `st_mode`.
    static func fileKind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: "a regular file"
        case S_IFDIR: "a directory"
        case S_IFIFO: "a FIFO"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        case S_IFLNK: "a symbolic link"
        default: "a file of unknown type"
        }
    }

    /// Size of the open file `fd`.
    static func size(_ fd: Int32, path: String) throws(ImageError) -> Int64 {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .io(operation: "stat", path: path, errno: errno) }
        return Int64(info.st_size)
    }

    /// Reads until `buffer` is full or end of file; returns the number of bytes read.
    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, path: String) throws(ImageError) -> Int {
        var done = 0
        while done < buffer.count {
            let n = Glibc.read(fd, buffer.baseAddress! + done, buffer.count - done)
            if n > 0 { done += n; continue }
            if n == 0 { break }
            if errno != EINTR { throw .io(operation: "read", path: path, errno: errno) }
        }
        return done
    }

    /// Reads the whole file at `path`, refusing files larger than `limit`.
    /// A file read to its end whatever size it reports: procfs and sysfs files say 0, and
    /// readers that trust the size (Foundation's `String(contentsOfFile:)` among them) return a
    /// truncated /proc/self/mountinfo or smaps. nil when it cannot be opened or read.
    public static func readToEnd(_ path: String) -> String? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count < 0 { return nil }
            if count == 0 { return String(decoding: bytes, as: UTF8.self) }
            bytes += buffer.prefix(count)
        }
    }

    static func readFile(_ path: String, limit: Int64 = .max) throws(ImageError) -> [UInt8] {
        let fd: Int32, size: Int64
        do { (fd, size) = try openRegular(path) } catch {
            switch error {
            case let .notRegular(kind): throw .notRegularFile(path: path, kind: kind)
            case let .io(failure): throw failure
            }
        }
        defer { close(fd) }
        guard size <= limit else {
            throw .invalidInput("\(path) is \(size) bytes, more than the \(limit) bytes allowed for it")
        }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        let count = try bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(ImageError) in try read(fd, into: buffer, path: path) }
        }.get()
        bytes.removeSubrange(count...)
        return bytes
    }

    static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws(ImageError) -> Void {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n >= 0 { done += n; continue }
            if errno != EINTR { throw .io(operation: "write", path: path, errno: errno) }
        }
    }

    static func pwrite(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64, path: String) throws(ImageError) {
        var done = 0
        while done < bytes.count {
            let n = Glibc.pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n >= 0 { done += n; continue }
            if errno != EINTR { throw .io(operation: "write", path: path, errno: errno) }
        }
    }

    static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// Creates `path` and its missing parents; `path` itself gets `mode`, the parents 0755.
    static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(ImageError) {
        var current = path.hasPrefix("/") ? "" : "."
        let components = path.split(separator: "/")
        for (position, component) in components.enumerated() {
            current += "/" + component
            if mkdir(current, position == components.count - 1 ? mode : 0o755) != 0 && errno != EEXIST {
                throw .io(operation: "mkdir", path: current, errno: errno)
            }
        }
    }

    /// Flushes a directory's entries (after a rename into it) to disk.
    static func syncDirectory(_ path: String) {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }

    /// The names in a directory, without `.` and `..`.
    static func listDirectory(_ path: String) throws(ImageError) -> [String] {
        guard let dir = opendir(path) else { throw .io(operation: "list", path: path, errno: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// True when every byte of `bytes` is zero. memcmp of the buffer against itself shifted by
    /// one byte is vectorized by libc, which keeps this fast in debug builds too.
    static func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return true }
        guard base.load(as: UInt8.self) == 0 else { return false }
        return memcmp(base, base + 1, bytes.count - 1) == 0
    }
}
