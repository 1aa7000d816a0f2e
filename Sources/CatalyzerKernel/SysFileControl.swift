import Glibc

/// ioctl requests that act on any file rather than a device (Linux's `do_vfs_ioctl`).
extension Task {
    private static let setCloseOnExec: UInt = 0x5451, clearCloseOnExec: UInt = 0x5450  // FIOCLEX, FIONCLEX
    private static let setNonBlocking: UInt = 0x5421, setAsync: UInt = 0x5452  // FIONBIO, FIOASYNC
    private static let bytesReadable: UInt = 0x541B  // FIONREAD

    /// The answer to a generic request, or nil when `request` is not one (device ioctls follow).
    func fileIoctl(_ file: OpenFile, fd: Int32, request: UInt, argument: UInt64) throws(Errno) -> UInt64? {
        switch request {
        case Self.setCloseOnExec, Self.clearCloseOnExec:
            try files.setCloseOnExec(fd, request == Self.setCloseOnExec)
            return 0
        case Self.setNonBlocking:
            let on = try space.load(Int32.self, at: argument) != 0
            file.statusFlags = on ? file.statusFlags | O_NONBLOCK : file.statusFlags & ~O_NONBLOCK
            return 0
        case Self.setAsync:
            guard try space.load(Int32.self, at: argument) == 0 else { throw Errno.EINVAL }  // no SIGIO
            return 0
        case Self.bytesReadable:
            let count: Int
            switch file.backing {
            case .pipe(let pipe): count = pipe.count
            case .special(let object):
                if let socket = object as? SandboxSocket {
                    count = socket.bytesReadable
                } else if let socket = object as? HostSocket {
                    count = socket.bytesReadable
                } else {
                    throw Errno.ENOTTY
                }
            case .memory(let node):
                guard !node.isDirectory else { throw Errno.ENOTTY }
                count = max(0, node.size - file.position)
            case .host(let fd, _):
                var available: Int32 = 0
                guard Glibc.ioctl(fd, Self.bytesReadable, &available) == 0 else { throw Errno.lastHostError }
                count = Int(available)
            }
            try space.store(Int32(clamping: count), at: argument)
            return 0
        default:
            return nil
        }
    }
}
