import Glibc

/// A request handed to a sandbox as its stdin: a pipe holding one line, then end of input, so a
/// runner answers it and exits.
public enum RequestPipe {
    /// What a pipe buffers without a reader (Linux's default is 64 KiB); a longer request written
    /// before the sandbox runs would block forever.
    public static let capacity = 60_000

    /// The read end of a pipe that holds `line` and a newline; the caller closes it.
    public static func holding(_ line: String) throws -> Int32 {
        let bytes = Array((line + "\n").utf8)
        guard bytes.count <= capacity else {
            throw RuntimeError("a request of \(bytes.count) bytes is longer than a pipe holds (\(capacity)); send it on standard input instead")
        }
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
}
