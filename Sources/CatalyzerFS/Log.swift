import CFuse3
import Glibc

/// Where the daemon's log lines go. Lines are written with a single `write(2)` each (or one
/// syslog call), so lines from concurrent FUSE worker threads never interleave.
public struct Log: Sendable {
    enum Destination: Sendable {
        case descriptor(Int32)
        case syslog
    }

    let destination: Destination

    /// Standard error: for the foreground daemon and for errors before it detaches.
    public static let standardError = Log(destination: .descriptor(STDERR_FILENO))

    /// The system log (facility daemon, ident `catalyzerfs`): the default once detached, when
    /// standard error is gone.
    public static func systemLog() -> Log {
        openlog("catalyzerfs", LOG_PID, LOG_DAEMON)
        return Log(destination: .syslog)
    }

    /// Appends to the file at `path`, created if missing.
    public static func file(_ path: String) throws(FilesystemError) -> Log {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .logUnwritable(path: path, errno: errno) }
        return Log(destination: .descriptor(fd))
    }

    /// The fd lines go to, unless they go to the system log.
    var fileDescriptor: Int32? {
        if case .descriptor(let fd) = destination { return fd }
        return nil
    }

    /// Writes one line: `catalyzerfs[PID] TIME: message`.
    public func write(_ message: String) {
        switch destination {
        case .syslog:
            catalyzerfs_syslog(LOG_ERR, message)
        case let .descriptor(fd):
            Self.writeAll(fd, "catalyzerfs[\(getpid())] \(Self.timestamp()): \(message)\n")
        }
    }

    /// Writes `text` to `fd` with `write(2)`, retrying short writes and EINTR.
    public static func writeAll(_ fd: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            done += n
        }
    }

    /// UTC time as `2026-11-27T17:04:59Z`.
    private static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
