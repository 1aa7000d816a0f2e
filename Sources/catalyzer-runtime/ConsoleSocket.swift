import CLinux
import CatalyzerOCI
import Glibc

/// Unix socket addresses for paths of any length: through an fd of the socket's directory,
/// `/proc/self/fd/N/NAME` fits `sun_path` (108 bytes) whatever the directory's path.
enum UnixSocketAddress {
    static func with<T>(directory: String, name: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) throws -> T {
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else { throw ContainerError.system("cannot open \(directory): \(String(cString: strerror(errno)))") }
        defer { close(directoryFD) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array("/proc/self/fd/\(directoryFD)/\(name)".utf8)
        guard path.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw ContainerError.system("the socket name \(name) is too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { bytes in
            bytes.copyBytes(from: path)
            bytes[path.count] = 0
        }
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// `with` for a full path.
    static func with<T>(path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) throws -> T {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        return try with(directory: directory, name: name, body)
    }
}

/// A terminal for a container's process, as runc makes one: a pseudo-terminal whose primary side
/// goes to the engine through its console socket (`--console-socket`, one message carrying the
/// fd), and whose secondary side is the process's stdin, stdout and stderr. In the sandbox the
/// guest sees a terminal: its modes and window size pass to this pty (see `Task.terminalIoctl`).
enum ConsoleSocket {
    /// Makes the pty, hands its primary side to the engine, returns the secondary side.
    static func terminal(sendingTo socketPath: String?) throws -> Int32 {
        guard let socketPath else {
            throw ContainerError.system("process.terminal is set but no --console-socket was given to receive the terminal")
        }
        var primary: Int32 = -1, secondary: Int32 = -1
        guard clinux_open_pty(&primary, &secondary) == 0 else {
            throw ContainerError.system("cannot open a pseudo-terminal: \(String(cString: strerror(errno)))")
        }
        defer { close(primary) }
        let connection = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { if connection >= 0 { close(connection) } }
        let connected = try UnixSocketAddress.with(path: socketPath) { connect(connection, $0, $1) }
        guard connection >= 0, connected == 0 else {
            close(secondary)
            throw ContainerError.system("cannot connect to the console socket \(socketPath): \(String(cString: strerror(errno)))")
        }
        let name = Array("/dev/ptmx".utf8)
        let sent = name.withUnsafeBytes { bytes in
            withUnsafePointer(to: primary) { clinux_send_with_fds(connection, bytes.baseAddress, UInt(bytes.count), $0, 1) }
        }
        guard sent == name.count else {
            close(secondary)
            throw ContainerError.system("cannot send the terminal to the console socket \(socketPath): \(String(cString: strerror(errno)))")
        }
        return secondary
    }
}
