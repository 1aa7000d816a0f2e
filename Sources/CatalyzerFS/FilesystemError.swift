import Glibc

/// Why catalyzerfs cannot mount. Each message says what is wrong, with which path, and what to
/// do; the mount helper prints it as mount(8) would.
public enum FilesystemError: Error, Sendable, Equatable, CustomStringConvertible {
    case usage(String)
    case invalidOption(String)
    case storeMissing(path: String)
    case storeUnreadable(path: String, errno: Int32)
    case storeInvalid(path: String, detail: String)
    case mountpointMissing(path: String)
    case mountpointNotDirectory(path: String)
    case mountpointBusy(path: String)
    case logUnwritable(path: String, errno: Int32)
    case startFailed(detail: String)
    case mountFailed(path: String)

    public var description: String {
        switch self {
        case let .usage(detail):
            return "\(detail) (see catalyzerfs --help)"
        case let .invalidOption(detail):
            return "\(detail) (see catalyzerfs --help for the options)"
        case let .storeMissing(path):
            return "image store \(path) does not exist: create it with `catalyzer image create --store \(path) ...`, or name the right directory"
        case let .storeUnreadable(path, code):
            return "image store \(path) is not readable: \(String(cString: strerror(code))); check its permissions"
        case let .storeInvalid(path, detail):
            return "\(path) is not a usable image store: \(detail)"
        case let .mountpointMissing(path):
            return "mountpoint \(path) does not exist: create it with `mkdir -p \(path)`"
        case let .mountpointNotDirectory(path):
            return "mountpoint \(path) is not a directory"
        case let .mountpointBusy(path):
            return "mountpoint \(path) is busy: something is already mounted there; `umount \(path)` first"
        case let .logUnwritable(path, code):
            return "cannot open log file \(path): \(String(cString: strerror(code)))"
        case let .startFailed(detail):
            return "catalyzerfs cannot start: \(detail)"
        case let .mountFailed(path):
            return "mounting on \(path) failed (libfuse's message above says why); mounting needs root (or fusermount3) and a usable /dev/fuse (`modprobe fuse`)"
        }
    }
}
