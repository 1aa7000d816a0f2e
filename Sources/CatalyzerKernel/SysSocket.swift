import Glibc

/// Sockets between the sandbox's own processes (`SandboxSocket`):
/// - AF_UNIX: socketpair, and sockets bound to a file in /tmp or an abstract name;
/// - AF_INET and AF_INET6 (TCP and UDP) on the sandbox's loopback (`InetPortTable`): 127.0.0.0/8,
///   ::1 and the wildcard address;
/// - and beyond the sandbox, where its `NetworkPolicy` allows: a socket that connects or sends
///   to such a destination becomes a `HostSocket` (`leaveSandbox`), a host socket the monitor
///   holds for it. A destination the policy refuses is ECONNREFUSED, logged by the monitor.
/// With listen/accept/connect, send/recv, sendmsg/recvmsg (SCM_RIGHTS on unix sockets), shutdown
/// and the socket options programs set and query. Other families are EAFNOSUPPORT.
extension Task {
    private static let familyUnix = SocketAddress.familyUnix, familyInet = SocketAddress.familyInet
    private static let familyInet6 = SocketAddress.familyInet6, familyUnspecified: Int32 = 0
    private static let protocolTCP: Int32 = 6, protocolUDP: Int32 = 17
    private static let levelIP: Int32 = 0, levelTCP: Int32 = 6, levelIPv6: Int32 = 41
    private static let typeMask: Int32 = 0xF
    private static let messagePeek: Int32 = 2, messageTruncate: Int32 = 0x20, messageDontWait: Int32 = 0x40
    private static let messageWaitAll: Int32 = 0x100, messageNoSignal: Int32 = 0x4000
    private static let messageControlTruncated: Int32 = 0x8, messageCloseOnExec: Int32 = 0x4000_0000

    func sysSocket(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let family = a.int32(0)
        let type = a.int32(1) & Self.typeMask, flags = a.int32(1) & ~Self.typeMask
        guard flags & ~(O_CLOEXEC | O_NONBLOCK) == 0 else { throw Errno.EINVAL }
        switch family {
        case Self.familyUnix:
            guard [SandboxSocket.streamType, SandboxSocket.datagramType, SandboxSocket.sequencedPacketType].contains(type) else {
                throw Errno.EINVAL
            }
            guard a.int32(2) == 0 else { throw Errno.EPROTONOSUPPORT }
        case Self.familyInet, Self.familyInet6:
            switch type {
            case SandboxSocket.streamType: guard [0, Self.protocolTCP].contains(a.int32(2)) else { throw Errno.EPROTONOSUPPORT }
            case SandboxSocket.datagramType:
                guard [0, Self.protocolUDP, SandboxSocket.protocolUDPLite].contains(a.int32(2)) else { throw Errno.EPROTONOSUPPORT }
            default: throw Errno.ESOCKTNOSUPPORT  // raw and seqpacket inet sockets are not served
            }
        default:
            throw Errno.EAFNOSUPPORT
        }
        let socket = SandboxSocket.unconnected(family: family, type: type)
        if family != Self.familyUnix {
            // UDP-Lite behaves as UDP here: checksum coverage means nothing on a loopback that loses nothing.
            socket.transport = type == SandboxSocket.streamType ? Self.protocolTCP : a.int32(2) == 0 ? Self.protocolUDP : a.int32(2)
        }
        let file = OpenFile(backing: .special(socket), guestPath: socket.name, statusFlags: O_RDWR | (flags & O_NONBLOCK))
        return UInt64(try files.install(file, closeOnExec: flags & O_CLOEXEC != 0))
    }

    func sysSocketpair(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a.int32(0) == Self.familyUnix else {
            throw [Self.familyInet, Self.familyInet6].contains(a.int32(0)) ? Errno.EOPNOTSUPP : Errno.EAFNOSUPPORT
        }
        let type = a.int32(1) & Self.typeMask, flags = a.int32(1) & ~Self.typeMask
        guard [SandboxSocket.streamType, SandboxSocket.datagramType, SandboxSocket.sequencedPacketType].contains(type),
              flags & ~(O_CLOEXEC | O_NONBLOCK) == 0 else { throw Errno.EINVAL }
        guard a.int32(2) == 0 else { throw Errno.EPROTONOSUPPORT }
        let (first, second) = SandboxSocket.pair(type: type, creator: .init(pid: group.pid, uid: credentials.uid, gid: credentials.gid))
        let closeOnExec = flags & O_CLOEXEC != 0
        let firstFD = try files.install(OpenFile(backing: .special(first), guestPath: first.name,
                                                 statusFlags: O_RDWR | (flags & O_NONBLOCK)), closeOnExec: closeOnExec)
        let secondFD: Int32
        do throws(Errno) {
            secondFD = try files.install(OpenFile(backing: .special(second), guestPath: second.name,
                                                  statusFlags: O_RDWR | (flags & O_NONBLOCK)), closeOnExec: closeOnExec)
            try space.storeStruct((firstFD, secondFD), at: a[3])
        } catch {
            try? files.close(firstFD)
            throw error
        }
        return 0
    }

    private func socket(_ fd: UInt64) throws(Errno) -> (OpenFile, SandboxSocket) {
        let file = try files.file(fd)
        guard case .special(let object) = file.backing, let socket = object as? SandboxSocket else {
            if case .special(let object) = file.backing, object is HostSocket { throw Errno.EINVAL }
            throw Errno.ENOTSOCK
        }
        return (file, socket)
    }

    /// The host socket behind `fd`, if the guest socket left the sandbox; nil for any other file.
    private func hostSocket(_ fd: UInt64) throws(Errno) -> (OpenFile, HostSocket)? {
        let file = try files.file(fd)
        guard case .special(let object) = file.backing, let socket = object as? HostSocket else { return nil }
        return (file, socket)
    }

    /// Where a connection or datagram to an inet address goes.
    private enum Route {
        /// A socket on the sandbox's own loopback (or nothing there: refused, as on an empty loopback).
        case inside(InetAddress)
        /// Out through a host socket; the policy allowed it.
        case outside(InetAddress)
    }

    /// The route to `requested`. The wildcard means the loopback, as on Linux. A loopback address
    /// is the sandbox's own, unless nothing there is bound and a rule names the host's (or it is
    /// the resolver `--dns` named). Any other address is outside and must pass the policy.
    private func route(_ requested: InetAddress, transport: Int32, operation: String) throws(Errno) -> Route {
        if requested.isWildcard {
            return .inside(InetAddress.loopback(for: requested.isIPv4 ? Self.familyInet : Self.familyInet6, port: requested.port))
        }
        let network = sandbox.network
        let target = network.hostDestination(for: requested)
        if requested.isLoopback {
            if sandbox.inetPorts.find(requested, transport: transport) != nil { return .inside(requested) }
            if target != requested {  // the resolver: refusals are logged
                try network.authorize(target, transport: transport, operation: operation)
                return .outside(requested)
            }
            if case .allowed = network.policy.decide(target) { return .outside(requested) }
            return .inside(requested)
        }
        try network.authorize(target, transport: transport, operation: operation)
        return .outside(requested)
    }

    /// Turns `socket` into a host socket (its first connect or send outside the sandbox): the
    /// description `file` now refers to a `HostSocket` with the options the guest set.
    private func leaveSandbox(_ file: OpenFile, _ socket: SandboxSocket) throws(Errno) -> HostSocket {
        if socket.isListening { throw Errno.EINVAL }
        if socket.isConnected && socket.isConnectionOriented { throw Errno.EISCONN }
        let host = try HostSocket(family: socket.family, type: socket.type, transport: socket.transport, options: socket.options,
                                  network: sandbox.network, account: sandbox.memoryAccount)
        file.replaceSpecial(with: host)
        socket.lastDescriptionClosed()  // its loopback port is free again
        return host
    }

    func sysSendto(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let flags = a.int32(3)
        if let (file, host) = try hostSocket(a[0]) {
            let destination = try hostDestination(host, address: a[4], length: a[5])
            let bytes = try space.read(a[1], count: min(try a.length(2), SandboxSocket.capacity + 1))
            return UInt64(try host.send(self, bytes, to: destination, nonblocking: nonblocking(file, flags),
                                        noSignal: flags & Self.messageNoSignal != 0))
        }
        let (file, socket) = try socket(a[0])
        let destination = try datagramDestination(socket, address: a[4], length: a[5])
        let bytes = try space.read(a[1], count: min(try a.length(2), SandboxSocket.capacity + 1))
        if case .outside(let address) = destination.route {
            let host = try leaveSandbox(file, socket)
            return UInt64(try host.send(self, bytes, to: address, nonblocking: nonblocking(file, flags),
                                        noSignal: flags & Self.messageNoSignal != 0))
        }
        return UInt64(try socket.send(self, bytes, rights: [], to: destination.socket, hasDestination: destination.given,
                                      nonblocking: nonblocking(file, flags), noSignal: flags & Self.messageNoSignal != 0))
    }

    /// The sendto/sendmsg address of a host socket's datagram, checked against the policy (a
    /// stream socket ignores it, as Linux does once connected).
    private func hostDestination(_ host: HostSocket, address: UInt64, length: UInt64) throws(Errno) -> InetAddress? {
        guard !host.isStream, address != 0, length != 0 else { return nil }
        guard length >= 2, length <= UInt64(UnixAddress.maximumLength) else { throw Errno.EINVAL }
        let destination = try InetAddress(parsing: try space.read(address, count: Int(length)), socketFamily: host.family)
        guard case .outside(let target) = try route(destination, transport: host.transport, operation: "send") else {
            throw Errno.ECONNREFUSED  // a socket that left the sandbox does not come back to its loopback
        }
        return target
    }

    /// The socket a sendto/sendmsg address names, and whether an address applies. A
    /// connection-oriented socket ignores the address once connected, as Linux does, and refuses
    /// it before (EOPNOTSUPP). A connected inet datagram socket without one sends to its peer's
    /// port, looked up now. An inet datagram to a free port has a destination but no socket.
    private func datagramDestination(_ socket: SandboxSocket, address: UInt64,
                                     length: UInt64) throws(Errno) -> (socket: SandboxSocket?, given: Bool, route: Route?) {
        let named = address != 0 && length != 0
        guard !socket.isConnectionOriented else {
            if !named || socket.isConnected { return (nil, false, nil) }
            throw socket.isListening ? Errno.ENOTCONN : Errno.EOPNOTSUPP
        }
        guard named else { return (nil, false, nil) }
        let name = try readAddress(socket, address: address, length: length)
        guard case .inet(let destination) = name else { return (try lookUpSocket(name, type: socket.type), true, nil) }
        let route = try route(destination, transport: socket.transport, operation: "send")
        guard case .inside(let target) = route else { return (nil, true, route) }
        if !socket.isBound { try socket.bind(InetAddress(wildcardFor: socket.family, port: 0), in: sandbox.inetPorts) }
        return (sandbox.inetPorts.find(target, transport: socket.transport), true, route)
    }

    /// A guest `sockaddr` for `socket`'s family (EINVAL, or EAFNOSUPPORT for another family).
    private func readAddress(_ socket: SandboxSocket, address: UInt64, length: UInt64) throws(Errno) -> SocketAddress {
        guard length >= 2, length <= UInt64(UnixAddress.maximumLength) else { throw Errno.EINVAL }
        let bytes = try space.read(address, count: Int(length))
        if socket.isInet { return .inet(try InetAddress(parsing: bytes, socketFamily: socket.family)) }
        return .unix(try UnixAddress(parsing: bytes))
    }


    /// The live socket of `type` bound at `name`. As on Linux, a socket file of another type is
    /// EPROTOTYPE, while an abstract name of another type is not found at all (ECONNREFUSED).
    private func lookUpSocket(_ name: SocketAddress, type: Int32) throws(Errno) -> SandboxSocket {
        switch name {
        case .unix(.unnamed): throw Errno.EINVAL
        case .unix(.path(let path)):
            let socket = try sandbox.filesystem.boundSocket(at: try absolutePath(path, relativeTo: AT_FDCWD))
            guard socket.type == type else { throw Errno.EPROTOTYPE }
            return socket
        case .unix(.abstract(let bytes)):
            guard let socket = sandbox.abstractSockets[bytes]?.socket, socket.type == type else { throw Errno.ECONNREFUSED }
            return socket
        case .inet:
            throw Errno.EINVAL  // inet destinations are routed (`route`), not looked up by name
        }
    }

    /// Writes `name` to a guest (addr, addrlen) pair as accept/getsockname do: truncated to the
    /// room the caller gave, with the full length stored back.
    private func storeAddress(_ name: SocketAddress, of socket: SandboxSocket, at address: UInt64,
                              lengthAt lengthAddress: UInt64) throws(Errno) {
        try storeAddress(name, family: socket.family, at: address, lengthAt: lengthAddress)
    }

    private func storeAddress(_ name: SocketAddress, family: Int32, at address: UInt64,
                              lengthAt lengthAddress: UInt64) throws(Errno) {
        guard address != 0 else { return }
        let room = try space.load(Int32.self, at: lengthAddress)
        guard room >= 0 else { throw Errno.EINVAL }
        let bytes = name.encoded(family: family)
        try space.write(Array(bytes.prefix(Int(room))), to: address)
        try space.store(UInt32(bytes.count), at: lengthAddress)
    }

    func sysBind(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        if try hostSocket(a[0]) != nil { throw Errno.EINVAL }  // bound by its connection already
        let (_, socket) = try socket(a[0])
        let address = try readAddress(socket, address: a[1], length: a[2])
        guard case .unix(var name) = address else {
            guard case .inet(let inet) = address else { throw Errno.EINVAL }
            try socket.bind(inet, in: sandbox.inetPorts)
            return 0
        }
        if name == .unnamed { name = .abstract(try autobindName()) }  // Linux's autobind
        let sandbox = sandbox
        switch name {
        case .unnamed: throw Errno.EINVAL
        case .path(let path):
            guard !path.isEmpty else { throw Errno.ENOENT }
            let absolute = try absolutePath(path, relativeTo: AT_FDCWD)
            let mode = 0o777 & ~fileCreationMask, owner = credentials.fileOwner
            try socket.bind(name) { binding throws(Errno) in
                try sandbox.filesystem.bindSocket(absolute, binding, mode: mode, owner: owner)
            }
        case .abstract(let bytes):
            try socket.bind(name) { binding throws(Errno) in
                guard sandbox.abstractSockets[bytes]?.socket == nil else { throw Errno.EADDRINUSE }
                sandbox.abstractSockets[bytes] = binding
            }
        }
        return 0
    }

    /// Five hex digits no live abstract socket uses, as Linux's autobind picks.
    private func autobindName() throws(Errno) -> [UInt8] {
        for number in 0..<0x100000 {
            let digits = String(number, radix: 16)
            let name = Array((String(repeating: "0", count: 5 - digits.count) + digits).utf8)
            if sandbox.abstractSockets[name]?.socket == nil { return name }
        }
        throw Errno.ENOSPC
    }

    func sysListen(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (_, socket) = try socket(a[0])
        if socket.isInet && !socket.isBound && socket.isConnectionOriented {
            try socket.bind(InetAddress(wildcardFor: socket.family, port: 0), in: sandbox.inetPorts)
        }
        try socket.listen(backlog: a.int32(1))
        socket.noteListener(self)
        return 0
    }

    func sysConnect(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        if let (file, host) = try hostSocket(a[0]) {
            if !host.isStream && a[2] >= 2, try space.load(UInt16.self, at: a[1]) == UInt16(Self.familyUnspecified) {
                try host.disconnect()
                return 0
            }
            guard a[2] >= 2, a[2] <= UInt64(UnixAddress.maximumLength) else { throw Errno.EINVAL }
            let requested = try InetAddress(parsing: try space.read(a[1], count: Int(a[2])), socketFamily: host.family)
            guard case .outside(let address) = try route(requested, transport: host.transport, operation: "connect") else {
                throw host.isStream ? Errno.EISCONN : Errno.ECONNREFUSED
            }
            try host.connect(self, to: address, nonblocking: file.statusFlags & O_NONBLOCK != 0)
            return 0
        }
        let (file, socket) = try socket(a[0])
        let nonblocking = file.statusFlags & O_NONBLOCK != 0
        guard socket.isInet else {
            let name = try readAddress(socket, address: a[1], length: a[2])
            guard name != .unix(.unnamed) else { throw Errno.EINVAL }
            let target = try lookUpSocket(name, type: socket.type)
            if socket.isConnectionOriented {
                try socket.connect(self, to: target, address: name, nonblocking: nonblocking)
            } else {
                socket.connectDatagram(to: target, address: name)
            }
            return 0
        }
        if !socket.isConnectionOriented && a[2] >= 2, try space.load(UInt16.self, at: a[1]) == UInt16(Self.familyUnspecified) {
            socket.disconnectDatagram()  // connect(AF_UNSPEC) dissolves a UDP association
            return 0
        }
        guard case .inet(let requested) = try readAddress(socket, address: a[1], length: a[2]) else { throw Errno.EINVAL }
        let operation = socket.isConnectionOriented ? "connect" : "udp connect"
        let destination: InetAddress
        switch try route(requested, transport: socket.transport, operation: operation) {
        case .inside(let address):
            destination = address
        case .outside(let address):
            if socket.isConnected && socket.isConnectionOriented { throw Errno.EISCONN }
            try leaveSandbox(file, socket).connect(self, to: address, nonblocking: nonblocking)
            return 0
        }
        if !socket.isBound {
            var source = destination
            source.port = 0
            try socket.bind(source, in: sandbox.inetPorts)
        }
        guard socket.isConnectionOriented else {
            socket.connectDatagram(to: nil, address: .inet(destination))
            return 0
        }
        if socket.isConnected {
            guard socket.connectReportedInProgress else { throw Errno.EISCONN }
            socket.connectReportedInProgress = false
            return 0
        }
        guard let listener = sandbox.inetPorts.find(destination, transport: SandboxSocket.protocolTCP) else { throw Errno.ECONNREFUSED }
        try socket.connect(self, to: listener, address: .inet(destination), nonblocking: nonblocking)
        // The connection is made at once, but a non-blocking TCP connect reports it as under way
        // (Linux does, even on loopback); the socket is writable and SO_ERROR is 0 when polled.
        if nonblocking {
            socket.connectReportedInProgress = true
            throw Errno.EINPROGRESS
        }
        return 0
    }

    func sysAccept(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try accept(a, flags: 0)
    }

    func sysAccept4(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let flags = a.int32(3)
        guard flags & ~(O_CLOEXEC | O_NONBLOCK) == 0 else { throw Errno.EINVAL }
        return try accept(a, flags: flags)
    }

    private func accept(_ a: SyscallArguments, flags: Int32) throws(Errno) -> UInt64 {
        let (file, socket) = try socket(a[0])
        guard socket.isConnectionOriented else { throw Errno.EOPNOTSUPP }
        if a[1] != 0 { _ = try space.load(Int32.self, at: a[2]) }  // EFAULT before a connection is taken
        let connection = try socket.accept(self, nonblocking: file.statusFlags & O_NONBLOCK != 0)
        let accepted = OpenFile(backing: .special(connection), guestPath: connection.name,
                                statusFlags: O_RDWR | (flags & O_NONBLOCK))
        let fd = try files.install(accepted, closeOnExec: flags & O_CLOEXEC != 0)
        try storeAddress(connection.peerAddress, of: connection, at: a[1], lengthAt: a[2])
        return UInt64(fd)
    }

    func sysRecvfrom(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let flags = a.int32(3)
        let vectors = try hostBuffers([(a[1], try a.length(2))], access: .write)
        let (result, family, isStream) = try receive(a[0], into: vectors, flags: flags)
        if a[4] != 0 && a[5] != 0 { try storeAddress(result.sender, family: family, at: a[4], lengthAt: a[5]) }
        return UInt64(flags & Self.messageTruncate != 0 && !isStream ? result.length : result.count)
    }

    /// recvfrom/recvmsg's receive, from a socket of the sandbox or a host socket: what arrived,
    /// the socket's family and whether it is a stream.
    private func receive(_ fd: UInt64, into vectors: [iovec], flags: Int32) throws(Errno)
        -> (SandboxSocket.Received, family: Int32, isStream: Bool) {
        let peek = flags & Self.messagePeek != 0, waitAll = flags & Self.messageWaitAll != 0
        if let (file, host) = try hostSocket(fd) {
            let result = try host.receive(self, into: vectors, nonblocking: nonblocking(file, flags), peek: peek, waitAll: waitAll)
            return (result, host.family, host.isStream)
        }
        let (file, socket) = try socket(fd)
        let result = try socket.receive(self, into: vectors, nonblocking: nonblocking(file, flags), peek: peek, waitAll: waitAll)
        return (result, socket.family, socket.isStream)
    }

    func sysSendmsg(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let header = try space.read(a[1], count: 56)
        func word(_ offset: Int) -> UInt64 { header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) } }
        let segments = try ioVectors(word(16), count: word(24))
        if let (file, host) = try hostSocket(a[0]) {
            // Control messages are not passed to the host: SCM_RIGHTS is for unix sockets, and the
            // IPv6 header options change nothing a host connection needs.
            let destination = try hostDestination(host, address: word(0), length: word(8) & 0xFFFF_FFFF)
            var bytes: [UInt8] = []
            for (base, length) in segments where bytes.count <= SandboxSocket.capacity {
                bytes += try space.read(base, count: min(length, SandboxSocket.capacity + 1 - bytes.count))
            }
            let flags = a.int32(2)
            return UInt64(try host.send(self, bytes, to: destination, nonblocking: nonblocking(file, flags),
                                        noSignal: flags & Self.messageNoSignal != 0))
        }
        let (file, socket) = try socket(a[0])
        var bytes: [UInt8] = []
        for (base, length) in segments where bytes.count <= SandboxSocket.capacity {
            bytes += try space.read(base, count: min(length, SandboxSocket.capacity + 1 - bytes.count))
        }
        var rights: [OpenFile] = []
        var hopLimit: Int32?, trafficClass: Int32?
        let control = word(32), controlLength = word(40)
        if control != 0 && controlLength > 0 {
            guard controlLength <= 64 << 10 else { throw Errno.ENOBUFS }
            let controlBytes = try space.read(control, count: Int(controlLength))
            var offset = 0
            while offset + 16 <= controlBytes.count {
                let length = Int(controlBytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) })
                let level = controlBytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 8, as: Int32.self) }
                let type = controlBytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 12, as: Int32.self) }
                guard length >= 16, offset + length <= controlBytes.count else { throw Errno.EINVAL }
                if level == Self.levelIPv6 && (type == Self.optionHopLimit || type == Self.optionTrafficClass) {
                    guard socket.family == Self.familyInet6, length >= 20 else { throw Errno.EINVAL }
                    let value = controlBytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 16, as: Int32.self) }
                    guard (-1...255).contains(value) else { throw Errno.EINVAL }
                    if type == Self.optionHopLimit { hopLimit = value } else { trafficClass = value }
                } else if level == SOL_SOCKET && type == 1 {  // SCM_RIGHTS
                    let count = (length - 16) / 4
                    guard rights.count + count <= 253 else { throw Errno.EINVAL }  // SCM_MAX_FD
                    for index in 0..<count {
                        let fd = controlBytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 16 + index * 4, as: Int32.self) }
                        rights.append(try files.file(fd))
                    }
                } else if !(level == SOL_SOCKET && type == 2) {  // SCM_CREDENTIALS is accepted and ignored
                    throw Errno.EINVAL
                }
                offset += (length + 7) & ~7
            }
        }
        let flags = a.int32(2)
        let destination = try datagramDestination(socket, address: word(0), length: word(8) & 0xFFFF_FFFF)
        if !rights.isEmpty && socket.isInet { throw Errno.EINVAL }  // SCM_RIGHTS is for unix sockets
        if case .outside(let address) = destination.route {
            return UInt64(try leaveSandbox(file, socket).send(self, bytes, to: address, nonblocking: nonblocking(file, flags),
                                                              noSignal: flags & Self.messageNoSignal != 0))
        }
        var headers: (hopLimit: Int32, trafficClass: Int32)?
        if hopLimit != nil || trafficClass != nil {
            let defaults = socket.ipv6Headers
            headers = (hopLimit.map { $0 < 0 ? defaults.hopLimit : $0 } ?? defaults.hopLimit,
                       trafficClass.map { $0 < 0 ? defaults.trafficClass : $0 } ?? defaults.trafficClass)
        }
        return UInt64(try socket.send(self, bytes, rights: rights, to: destination.socket, hasDestination: destination.given,
                                      headers: headers, nonblocking: nonblocking(file, flags),
                                      noSignal: flags & Self.messageNoSignal != 0))
    }

    func sysRecvmsg(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let flags = a.int32(2)
        let header = try space.read(a[1], count: 56)
        func word(_ offset: Int) -> UInt64 { header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) } }
        let vectors = try hostBuffers(try ioVectors(word(16), count: word(24)), access: .write)
        let (result, family, isStream) = try receive(a[0], into: vectors, flags: flags)
        let sandboxSocket = try? socket(a[0]).1  // ancillary data (IPv6 hop limit, traffic class) is the sandbox's own
        var messageFlags: Int32 = result.truncated ? Self.messageTruncate : 0
        let control = word(32), controlLength = Int(min(word(40), 64 << 10))
        var controlWritten = 0
        if !result.rights.isEmpty {
            let room = controlLength >= 16 ? (controlLength - 16) / 4 : 0
            let passed = result.rights.prefix(room)
            if passed.count < result.rights.count { messageFlags |= Self.messageControlTruncated }
            if !passed.isEmpty {
                var fds: [Int32] = []
                for right in passed {
                    guard let fd = try? files.install(right, closeOnExec: flags & Self.messageCloseOnExec != 0) else {
                        messageFlags |= Self.messageControlTruncated
                        break
                    }
                    fds.append(fd)
                }
                var bytes: [UInt8] = []
                withUnsafeBytes(of: UInt64(16 + fds.count * 4)) { bytes += $0 }
                withUnsafeBytes(of: Int32(SOL_SOCKET)) { bytes += $0 }
                withUnsafeBytes(of: Int32(1)) { bytes += $0 }
                for fd in fds { withUnsafeBytes(of: fd) { bytes += $0 } }
                try space.write(bytes, to: control)
                controlWritten = (bytes.count + 7) & ~7
            }
        }
        // IPV6_RECVHOPLIMIT and IPV6_RECVTCLASS: the datagram's hop limit, then its traffic class,
        // as Linux orders them; a control buffer too short for one gets what fits and MSG_CTRUNC.
        var ancillary: [(type: Int32, value: Int32)] = []
        if let socket = sandboxSocket, socket.family == Self.familyInet6 && !socket.isConnectionOriented {
            if socket.options.flag(Self.levelIPv6, Self.optionReceiveHopLimit) { ancillary.append((Self.optionHopLimit, result.hopLimit)) }
            if socket.options.flag(Self.levelIPv6, Self.optionReceiveTrafficClass) {
                ancillary.append((Self.optionTrafficClass, result.trafficClass))
            }
        }
        for (type, value) in ancillary {
            let room = controlLength - controlWritten
            guard control != 0, room >= 16 else {
                messageFlags |= Self.messageControlTruncated
                break
            }
            var bytes: [UInt8] = []
            withUnsafeBytes(of: UInt64(20)) { bytes += $0 }
            withUnsafeBytes(of: Self.levelIPv6) { bytes += $0 }
            withUnsafeBytes(of: type) { bytes += $0 }
            withUnsafeBytes(of: value) { bytes += $0 }
            if room < 20 {
                messageFlags |= Self.messageControlTruncated
                bytes.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(room)) { Array($0) })
                try space.write(Array(bytes.prefix(room)), to: control + UInt64(controlWritten))
                controlWritten += room
                break
            }
            try space.write(bytes, to: control + UInt64(controlWritten))
            controlWritten += min(24, room)  // CMSG_SPACE(sizeof(int)), or what is left
        }
        if word(0) != 0 {  // msg_name: the sender's name, within msg_namelen
            let name = result.sender.encoded(family: family)
            let room = Int(UInt32(truncatingIfNeeded: word(8)))
            try space.write(Array(name.prefix(room)), to: word(0))
            try space.store(UInt32(name.count), at: a[1] + 8)
        }
        try space.store(UInt64(min(controlWritten, controlLength)), at: a[1] + 40)
        try space.store(messageFlags, at: a[1] + 48)
        return UInt64(flags & Self.messageTruncate != 0 && !isStream ? result.length : result.count)
    }

    func sysShutdown(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        if let (_, host) = try hostSocket(a[0]) {
            guard (0...2).contains(a.int32(1)) else { throw Errno.EINVAL }
            try host.shutdown(how: a.int32(1))
            return 0
        }
        let (_, socket) = try socket(a[0])
        switch a.int32(1) {
        case 0: try socket.shutdown(read: true, write: false)
        case 1: try socket.shutdown(read: false, write: true)
        case 2: try socket.shutdown(read: true, write: true)
        default: throw Errno.EINVAL
        }
        return 0
    }

    private static let optionReusePort: Int32 = 15, optionIPv6Only: Int32 = 26
    private static let optionReceiveHopLimit: Int32 = 51, optionHopLimit: Int32 = 52
    private static let optionReceiveTrafficClass: Int32 = 66, optionTrafficClass: Int32 = 67

    /// Whether `level` applies to `socket`: SOL_SOCKET to all, IP and TCP levels to inet sockets
    /// (TCP to streams), IPv6 to AF_INET6 sockets.
    private func checkLevel(_ level: Int32, of socket: SandboxSocket) throws(Errno) {
        switch level {
        case SOL_SOCKET: return
        case Self.levelIP: guard socket.isInet else { throw Errno.EOPNOTSUPP }
        case Self.levelTCP: guard socket.isInet && socket.isStream else { throw Errno.EOPNOTSUPP }
        case Self.levelIPv6: guard socket.family == Self.familyInet6 else { throw Errno.ENOPROTOOPT }
        case Self.protocolUDP: guard socket.isInet && !socket.isConnectionOriented else { throw Errno.EOPNOTSUPP }
        case SandboxSocket.protocolUDPLite: guard socket.transport == SandboxSocket.protocolUDPLite else { throw Errno.EOPNOTSUPP }
        default: throw Errno.ENOPROTOOPT
        }
    }

    func sysGetsockopt(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        if let (_, host) = try hostSocket(a[0]) {
            let room = try space.load(Int32.self, at: a[4])
            guard room >= 0 else { throw Errno.EINVAL }
            let value = try host.option(level: a.int32(1), name: a.int32(2), room: Int(room))
            try space.write(Array(value.prefix(Int(room))), to: a[3])
            try space.store(UInt32(value.count), at: a[4])
            return 0
        }
        let (_, socket) = try socket(a[0])
        let level = a.int32(1), name = a.int32(2)
        try checkLevel(level, of: socket)
        let room = try space.load(Int32.self, at: a[4])
        guard room >= 0 else { throw Errno.EINVAL }
        func integer(_ value: Int32) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
        let stored = socket.options.values[SandboxSocket.Options.key(level, name)]
        let value: [UInt8]
        switch (level, name) {
        case (SOL_SOCKET, SO_PEERCRED):  // struct ucred
            let credentials = socket.peerCredentials
            value = withUnsafeBytes(of: (credentials.pid, credentials.uid, credentials.gid)) { Array($0) }
        case (SOL_SOCKET, SO_TYPE): value = integer(socket.type)
        case (SOL_SOCKET, SO_ACCEPTCONN): value = integer(socket.isListening ? 1 : 0)
        case (SOL_SOCKET, SO_ERROR):  // connections here complete or fail at once; datagrams may be refused
            value = integer(socket.pendingError?.code ?? 0)
            socket.pendingError = nil
        case (SOL_SOCKET, SO_DOMAIN): value = integer(socket.family)
        case (SOL_SOCKET, SO_PROTOCOL):
            value = integer(socket.transport)
        case (SOL_SOCKET, SO_REUSEADDR): value = integer(socket.options.reuseAddress ? 1 : 0)
        case (SOL_SOCKET, Self.optionReusePort): value = integer(socket.options.reusePort ? 1 : 0)
        case (SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_SNDBUF): value = stored ?? integer(Int32(SandboxSocket.capacity))
        case (SOL_SOCKET, SO_LINGER): value = stored ?? [UInt8](repeating: 0, count: 8)
        case (SOL_SOCKET, SO_RCVTIMEO), (SOL_SOCKET, SO_SNDTIMEO): value = stored ?? [UInt8](repeating: 0, count: 16)
        case (SOL_SOCKET, SO_PASSCRED), (SOL_SOCKET, SO_KEEPALIVE), (SOL_SOCKET, SO_BROADCAST), (SOL_SOCKET, SO_OOBINLINE),
             (Self.levelTCP, 1):  // TCP_NODELAY
            value = stored ?? integer(0)
        case (Self.levelIPv6, Self.optionIPv6Only): value = integer(socket.options.ipv6Only ? 1 : 0)
        default:
            guard let stored else { throw Errno.ENOPROTOOPT }
            value = stored
        }
        try space.write(Array(value.prefix(Int(room))), to: a[3])
        try space.store(UInt32(value.count), at: a[4])
        return 0
    }

    /// Stores the option; SO_REUSEADDR, SO_REUSEPORT and IPV6_V6ONLY change how binding works,
    /// SO_RCVTIMEO and SO_SNDTIMEO bound blocking calls (EAGAIN), the rest (buffer sizes,
    /// keepalive, TCP_NODELAY, linger) are reported back by getsockopt and have no other effect
    /// on a connection inside the sandbox. (A host socket applies those to its connection.)
    func sysSetsockopt(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        if let (_, host) = try hostSocket(a[0]) {
            let length = try a.length(4)
            guard length <= 256 else { throw Errno.EINVAL }
            try host.setOption(level: a.int32(1), name: a.int32(2), try space.read(a[3], count: length))
            return 0
        }
        let (_, socket) = try socket(a[0])
        let level = a.int32(1), name = a.int32(2)
        try checkLevel(level, of: socket)
        let length = try a.length(4)
        guard length <= 256 else { throw Errno.EINVAL }
        let bytes = try space.read(a[3], count: length)
        let isStruct = level == SOL_SOCKET && [SO_LINGER, SO_RCVTIMEO, SO_SNDTIMEO].contains(name)
        guard isStruct || length >= 4 else { throw Errno.EINVAL }
        let integer = length >= 4 ? bytes.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) } : 0
        switch (level, name) {
        case (SOL_SOCKET, SO_REUSEADDR): socket.options.reuseAddress = integer != 0
        case (SOL_SOCKET, Self.optionReusePort): socket.options.reusePort = integer != 0
        case (Self.levelIPv6, Self.optionIPv6Only):
            guard !socket.isBound else { throw Errno.EINVAL }
            socket.options.ipv6Only = integer != 0
        default:
            socket.options.values[SandboxSocket.Options.key(level, name)] = isStruct ? bytes : Array(bytes.prefix(4))
        }
        return 0
    }

    func sysGetsockname(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        if let (_, host) = try hostSocket(a[0]) {
            try storeAddress(host.localAddress, family: host.family, at: a[1], lengthAt: a[2])
            return 0
        }
        let (_, socket) = try socket(a[0])
        try storeAddress(socket.localAddress ?? .unbound(family: socket.family), of: socket, at: a[1], lengthAt: a[2])
        return 0
    }

    func sysGetpeername(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        if let (_, host) = try hostSocket(a[0]) {
            try storeAddress(try host.peerName(), family: host.family, at: a[1], lengthAt: a[2])
            return 0
        }
        let (_, socket) = try socket(a[0])
        guard socket.isConnected else { throw Errno.ENOTCONN }
        try storeAddress(socket.peerAddress, of: socket, at: a[1], lengthAt: a[2])
        return 0
    }

    private func nonblocking(_ file: OpenFile, _ flags: Int32) -> Bool {
        file.statusFlags & O_NONBLOCK != 0 || flags & Self.messageDontWait != 0
    }
}

/// sendmmsg and recvmmsg: sendmsg/recvmsg over an array of `struct mmsghdr` (a msghdr and the
/// byte count, 64 bytes each), stopping at the first error once one message went through.
extension Task {
    private static let multipleMessageLimit = 1024  // UIO_MAXIOV
    private static let multipleMessageSize: UInt64 = 64, messageLengthOffset: UInt64 = 56

    func sysSendmmsg(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let count = min(Int(a.uint32(2)), Self.multipleMessageLimit)
        var sent = 0
        while sent < count {
            let header = a[1] + UInt64(sent) * Self.multipleMessageSize
            let length: UInt64
            do throws(Errno) {
                length = try sysSendmsg(SyscallArguments(number: 46, values: [a[0], header, a[3], 0, 0, 0]))
            } catch {
                if sent > 0 && error != Errno.blocked { break }
                throw error
            }
            try space.store(UInt32(truncatingIfNeeded: length), at: header + Self.messageLengthOffset)
            sent += 1
        }
        return UInt64(sent)
    }

    /// The timeout argument is not supported (EINVAL when given); MSG_WAITFORONE is honoured.
    func sysRecvmmsg(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let waitForOne: Int32 = 0x10000
        guard a[4] == 0 else { throw Errno.EINVAL }
        let count = min(Int(a.uint32(2)), Self.multipleMessageLimit)
        var flags = a.int32(3) & ~waitForOne
        var received = 0
        while received < count {
            let header = a[1] + UInt64(received) * Self.multipleMessageSize
            let length: UInt64
            do throws(Errno) {
                length = try sysRecvmsg(SyscallArguments(number: 47, values: [a[0], header, UInt64(UInt32(bitPattern: flags)), 0, 0, 0]))
            } catch {
                if received > 0 && error != Errno.blocked { break }
                if received > 0 { break }  // what arrived so far is returned; the rest would wait
                throw error
            }
            try space.store(UInt32(truncatingIfNeeded: length), at: header + Self.messageLengthOffset)
            received += 1
            if a.int32(3) & waitForOne != 0 { flags |= 0x40 }  // MSG_DONTWAIT after the first
        }
        return UInt64(received)
    }
}
