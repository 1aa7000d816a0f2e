import Glibc

import CKVM

/// A request handed to a sandbox as its stdin: one line, then end of input, so a runner answers
/// it and exits. A pipe holding it when it fits in one; a longer one (Lambda allows 6 MB) in an
/// anonymous file (memfd) read from its start, since writing more than a pipe buffers before
/// the sandbox reads would block forever.
public enum RequestPipe {
    /// What a pipe buffers without a reader (Linux's default is 64 KiB), with room to spare.
    public static let capacity = 60_000

    /// A readable fd that yields `line`, a newline, then end of file; the caller closes it.
    public static func holding(_ line: String) throws -> Int32 {
        let bytes = Array((line + "\n").utf8)
        if bytes.count > capacity { return try file(holding: bytes) }
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw RuntimeError("cannot create a pipe: \(String(cString: strerror(errno)))") }
        _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
        let written = bytes.withUnsafeBytes { write(ends[1], $0.baseAddress, $0.count) }
        close(ends[1])
        guard written == bytes.count else {
            close(ends[0])
            throw RuntimeError("cannot write the request into its pipe: \(String(cString: strerror(errno)))")
        }
        return ends[0]
    }

    private static func file(holding bytes: [UInt8]) throws -> Int32 {
        let fd = ckvm_memfd_create("catalyzer-request")
        guard fd >= 0 else { throw RuntimeError("cannot create a file for a request of \(bytes.count) bytes: \(String(cString: strerror(errno)))") }
        var done = 0
        while done < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                close(fd)
                throw RuntimeError("cannot write a request of \(bytes.count) bytes: \(String(cString: strerror(errno)))")
            }
            done += count
        }
        guard lseek(fd, 0, SEEK_SET) == 0 else {
            close(fd)
            throw RuntimeError("cannot rewind a request file: \(String(cString: strerror(errno)))")
        }
        return fd
    }
}
