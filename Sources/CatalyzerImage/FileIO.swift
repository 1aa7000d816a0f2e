import Glibc

/// Small, checked wrappers over the POSIX calls the store uses. They retry on EINTR, loop over
/// short reads and writes, and turn errno into `ImageError.io` naming the path.
enum FileIO {
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws(ImageError) -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno != EINTR { throw .io(operation: "open", path: path, errno: errno) }
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
    static func readFile(_ path: String, limit: Int64 = .max) throws(ImageError) -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { close(fd) }
        let size = try self.size(fd, path: path)
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

    /// Creates `path` and its missing parents.
    static func makeDirectories(_ path: String) throws(ImageError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
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
