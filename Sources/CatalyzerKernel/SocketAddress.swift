import Glibc

/// A socket's name in any family the sandbox serves, as bind, connect, accept, getsockname and
/// recvfrom pass it.
enum SocketAddress: Equatable {
    case unix(UnixAddress)
    case inet(InetAddress)

    static let familyUnix: Int32 = 1, familyInet: Int32 = 2, familyInet6: Int32 = 10

    /// The `sockaddr` bytes a socket of `family` reports for this address.
    func encoded(family: Int32) -> [UInt8] {
        switch self {
        case .unix(let address): address.encoded
        case .inet(let address): address.encoded(asFamily: family)
        }
    }

    /// What an unbound socket of `family` reports: the family alone, or the wildcard address, port 0.
    static func unbound(family: Int32) -> SocketAddress {
        family == familyUnix ? .unix(.unnamed) : .inet(InetAddress(wildcardFor: family, port: 0))
    }
}

/// A `sockaddr_un` as the guest passes and receives it.
enum UnixAddress: Equatable {
    /// An unbound socket: only the family is reported.
    case unnamed
    /// A filesystem name, as given to bind (getsockname reports it unchanged).
    case path(String)
    /// Linux's abstract namespace: a name starting with a NUL byte, bound to no file.
    case abstract([UInt8])

    /// sizeof(struct sockaddr_un).
    static let maximumLength = 110

    /// Parses a guest `sockaddr_un` of `bytes` (as long as the caller's addrlen).
    init(parsing bytes: [UInt8]) throws(Errno) {
        guard bytes.count >= 2 else { throw Errno.EINVAL }
        guard Int32(bytes[0]) | Int32(bytes[1]) << 8 == SocketAddress.familyUnix else { throw Errno.EINVAL }
        let name = bytes.dropFirst(2)
        if name.isEmpty {
            self = .unnamed
        } else if name.first == 0 {
            self = .abstract(Array(name.dropFirst()))
        } else {
            let path = name.prefix { $0 != 0 }
            self = .path(String(decoding: path, as: UTF8.self))
        }
    }

    /// The `sockaddr_un` bytes the kernel reports; their count is the addrlen.
    var encoded: [UInt8] {
        var bytes: [UInt8] = [UInt8(SocketAddress.familyUnix), 0]
        switch self {
        case .unnamed: break
        case .path(let path): bytes += Array(path.utf8) + [0]
        case .abstract(let name): bytes += [0] + name
        }
        return bytes
    }
}

/// An IPv4 or IPv6 address and port. IPv4 addresses are kept in their IPv4-mapped IPv6 form
/// (`::ffff:a.b.c.d`) so that the two families compare and match (a dual-stack listener on `::`
/// accepts IPv4 connections, as on Linux).
struct InetAddress: Equatable, Hashable {
    /// 16 bytes, network order.
    var ip: [UInt8]
    var port: UInt16

    static let mappedPrefix: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]
    static let sockaddrInLength = 16, sockaddrIn6Length = 28
    /// The shortest `sockaddr_in6` Linux accepts (SIN6_LEN_RFC2133, without the scope id).
    static let sockaddrIn6MinimumLength = 24

    init(ip: [UInt8], port: UInt16) {
        self.ip = ip
        self.port = port
    }

    init(ipv4: [UInt8], port: UInt16) {
        self.init(ip: Self.mappedPrefix + ipv4, port: port)
    }

    init(wildcardFor family: Int32, port: UInt16) {
        self.init(ip: family == SocketAddress.familyInet ? Self.mappedPrefix + [0, 0, 0, 0] : [UInt8](repeating: 0, count: 16),
                  port: port)
    }

    /// The loopback address of `family`: 127.0.0.1 or ::1.
    static func loopback(for family: Int32, port: UInt16) -> InetAddress {
        family == SocketAddress.familyInet ? InetAddress(ipv4: [127, 0, 0, 1], port: port)
            : InetAddress(ip: [UInt8](repeating: 0, count: 15) + [1], port: port)
    }

    /// Parses a guest `sockaddr_in` (for an AF_INET socket) or `sockaddr_in6` (AF_INET6).
    init(parsing bytes: [UInt8], socketFamily: Int32) throws(Errno) {
        guard bytes.count >= 2 else { throw Errno.EINVAL }
        let family = Int32(bytes[0]) | Int32(bytes[1]) << 8
        if socketFamily == SocketAddress.familyInet {
            guard bytes.count >= Self.sockaddrInLength else { throw Errno.EINVAL }
            guard family == SocketAddress.familyInet else { throw Errno.EAFNOSUPPORT }
            self.init(ipv4: Array(bytes[4..<8]), port: UInt16(bytes[2]) << 8 | UInt16(bytes[3]))
        } else {
            guard bytes.count >= Self.sockaddrIn6MinimumLength else { throw Errno.EINVAL }
            guard family == SocketAddress.familyInet6 else { throw Errno.EAFNOSUPPORT }
            self.init(ip: Array(bytes[8..<24]), port: UInt16(bytes[2]) << 8 | UInt16(bytes[3]))
        }
    }

    var isIPv4: Bool { Array(ip.prefix(12)) == Self.mappedPrefix }
    var isWildcard: Bool { ip == [UInt8](repeating: 0, count: 16) || ip == Self.mappedPrefix + [0, 0, 0, 0] }
    /// 127.0.0.0/8 or ::1.
    var isLoopback: Bool { isIPv4 ? ip[12] == 127 : ip == [UInt8](repeating: 0, count: 15) + [1] }

    /// A `sockaddr_in` for an AF_INET socket, a `sockaddr_in6` (IPv4 mapped) for an AF_INET6 one.
    func encoded(asFamily family: Int32) -> [UInt8] {
        let port = [UInt8(self.port >> 8), UInt8(self.port & 0xFF)]
        if family == SocketAddress.familyInet {
            return [UInt8(SocketAddress.familyInet), 0] + port + Array(ip.suffix(4)) + [UInt8](repeating: 0, count: 8)
        }
        return [UInt8(SocketAddress.familyInet6), 0] + port + [0, 0, 0, 0] + ip + [0, 0, 0, 0]
    }

    var description: String { isIPv4 ? "\(ipDescription):\(port)" : "[\(ipDescription)]:\(port)" }

    /// The address alone: dotted IPv4, or IPv6 as eight hex groups.
    var ipDescription: String {
        if isIPv4 { return ip.suffix(4).map(String.init).joined(separator: ".") }
        return stride(from: 0, to: 16, by: 2).map { String(UInt16(ip[$0]) << 8 | UInt16(ip[$0 + 1]), radix: 16) }
            .joined(separator: ":")
    }
}
