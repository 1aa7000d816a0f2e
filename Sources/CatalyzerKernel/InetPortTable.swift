/// The sandbox's own loopback network: which IPv4/IPv6 socket holds which port. The sandbox has
/// one interface, `lo` (127.0.0.0/8 and ::1); a socket binds there or to the wildcard address,
/// and a connection or datagram to a loopback address reaches only sockets of the same sandbox,
/// never the host's loopback. Ports are per protocol (TCP, UDP and UDP-Lite have separate spaces).
final class InetPortTable {
    struct Binding {
        weak var socket: SandboxSocket?
        let address: InetAddress
        /// An AF_INET6 socket with IPV6_V6ONLY: its wildcard does not cover IPv4.
        let ipv6Only: Bool
        let family: Int32
    }

    private struct Key: Hashable {
        /// IPPROTO_TCP, IPPROTO_UDP or IPPROTO_UDPLITE.
        let transport: Int32
        let port: UInt16
    }

    private var bindings: [Key: [Binding]] = [:]
    /// Linux's default net.ipv4.ip_local_port_range.
    static let ephemeralPorts: ClosedRange<UInt16> = 32768...60999
    private var nextEphemeral = ephemeralPorts.lowerBound

    /// Whether a socket may bind `address` here: the wildcard or a loopback address.
    static func isLocal(_ address: InetAddress) -> Bool { address.isWildcard || address.isLoopback }

    /// Binds `socket` to `address` (port 0 picks a free ephemeral port) and returns the address
    /// it got. EADDRINUSE when a live socket holds an overlapping address and port, unless both
    /// set SO_REUSEADDR (and neither listens) or both set SO_REUSEPORT.
    func bind(_ socket: SandboxSocket, to address: InetAddress) throws(Errno) -> InetAddress {
        guard Self.isLocal(address) else { throw Errno.EADDRNOTAVAIL }
        var address = address
        if address.port == 0 {
            address.port = try ephemeralPort(transport: socket.transport)
        } else {
            let key = Key(transport: socket.transport, port: address.port)
            for existing in live(key) where overlaps(existing, address, family: socket.family, ipv6Only: socket.options.ipv6Only) {
                guard let other = existing.socket else { continue }
                let reuse = (socket.options.reuseAddress && other.options.reuseAddress && !other.isListening)
                    || (socket.options.reusePort && other.options.reusePort)
                guard reuse else { throw Errno.EADDRINUSE }
            }
        }
        let key = Key(transport: socket.transport, port: address.port)
        bindings[key, default: []].append(Binding(socket: socket, address: address, ipv6Only: socket.options.ipv6Only,
                                                  family: socket.family))
        return address
    }

    func release(_ socket: SandboxSocket, port: UInt16) {
        let key = Key(transport: socket.transport, port: port)
        bindings[key] = live(key).filter { $0.socket !== socket }
        if bindings[key]?.isEmpty == true { bindings[key] = nil }
    }

    /// The socket a connection (stream) or datagram to `destination` reaches: an exact address
    /// match first, then a wildcard that covers it. For streams only listening sockets answer.
    func find(_ destination: InetAddress, transport: Int32) -> SandboxSocket? {
        let stream = transport == SandboxSocket.protocolTCP
        let candidates = live(Key(transport: transport, port: destination.port)).filter { binding in
            guard let socket = binding.socket, !stream || socket.isListening else { return false }
            return covers(binding, destination)
        }
        let exact = candidates.first { $0.address.ip == destination.ip }
        return (exact ?? candidates.first)?.socket
    }

    private func live(_ key: Key) -> [Binding] {
        (bindings[key] ?? []).filter { $0.socket != nil }
    }

    /// Whether `binding` receives what is sent to `destination`.
    private func covers(_ binding: Binding, _ destination: InetAddress) -> Bool {
        if binding.address.ip == destination.ip { return true }
        guard binding.address.isWildcard else { return false }
        if binding.family == SocketAddress.familyInet { return destination.isIPv4 }
        return !destination.isIPv4 || !binding.ipv6Only
    }

    /// Whether a new binding of `address` would collide with `existing`.
    private func overlaps(_ existing: Binding, _ address: InetAddress, family: Int32, ipv6Only: Bool) -> Bool {
        if existing.address.ip == address.ip { return true }
        let new = Binding(socket: nil, address: address, ipv6Only: ipv6Only, family: family)
        if existing.address.isWildcard && covers(existing, address) { return true }
        if address.isWildcard && covers(new, existing.address) { return true }
        // Two wildcards of different families collide unless the IPv6 one is IPV6_V6ONLY.
        return existing.address.isWildcard && address.isWildcard
            && !(existing.family == SocketAddress.familyInet6 && existing.ipv6Only)
            && !(family == SocketAddress.familyInet6 && ipv6Only)
    }

    private func ephemeralPort(transport: Int32) throws(Errno) -> UInt16 {
        let count = Int(Self.ephemeralPorts.upperBound - Self.ephemeralPorts.lowerBound) + 1
        for _ in 0..<count {
            let port = nextEphemeral
            nextEphemeral = port == Self.ephemeralPorts.upperBound ? Self.ephemeralPorts.lowerBound : port + 1
            if live(Key(transport: transport, port: port)).isEmpty { return port }
        }
        throw Errno.EADDRINUSE
    }
}
