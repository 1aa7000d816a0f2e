import CatalyzerKVM
import Glibc

/// A guest TCP or UDP socket whose traffic leaves the sandbox: the monitor holds a non-blocking
/// host socket on the guest's behalf (as gVisor's host network mode does) and passes each send and
/// receive through, after `SandboxNetwork` allowed the destination. A guest socket becomes one
/// when it first connects or sends to a destination outside the sandbox (`Task.leaveSandbox`);
/// until then it is a `SandboxSocket` on the sandbox's own loopback.
///
/// Blocking calls wait on the host fd through the scheduler (a task's wait names it; the monitor
/// polls it) and re-run from the start, so every call here is written to be re-run: a connect
/// asks the host again and gets EALREADY, 0 or the connection's error.
///
/// A socket open at a checkpoint cannot take its connection to another host or another time: it
/// is restored `reset`, its first use fails with ECONNRESET and later ones see the end of the
/// stream (EPIPE for writes), so client libraries reconnect, as after AWS Lambda SnapStart.
final class HostSocket: SpecialFile {
    let family: Int32
    let type: Int32
    /// IPPROTO_TCP or IPPROTO_UDP.
    let transport: Int32
    /// The non-blocking host socket; -1 once closed, or for a socket restored reset.
    private var fd: Int32
    /// Options as the guest set them (reported back by getsockopt where the host's value means
    /// nothing to the guest).
    var options: SandboxSocket.Options
    let changed = WaitQueue()
    private let network: SandboxNetwork?
    private let account: MemoryAccount?
    /// What getpeername says: the destination as the guest named it.
    private(set) var peerAddress: InetAddress?
    /// A blocking connect is waiting for the host's connect to finish; its re-run reports 0.
    private var blockingConnectUnderWay = false
    /// Restored from a checkpoint: the connection did not survive it.
    let isReset: Bool
    /// ECONNRESET was reported once; later calls see the end of the stream.
    private var resetReported = false

    /// Options applied to the host socket as well as stored: they change how the connection
    /// behaves on the wire. Buffer sizes are not (the sandbox's budget fixes them), nor is
    /// anything that could reach beyond the connection (SO_BINDTODEVICE, IP_TRANSPARENT, ...).
    private static let passedThrough: Set<Int64> = [
        SandboxSocket.Options.key(SOL_SOCKET, SO_KEEPALIVE), SandboxSocket.Options.key(SOL_SOCKET, SO_LINGER),
        SandboxSocket.Options.key(SOL_SOCKET, SO_OOBINLINE),
        SandboxSocket.Options.key(6, 1), SandboxSocket.Options.key(6, 4), SandboxSocket.Options.key(6, 5),
        SandboxSocket.Options.key(6, 6),  // TCP_NODELAY, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT
        SandboxSocket.Options.key(6, 18),  // TCP_USER_TIMEOUT
    ]

    /// A new host socket of the guest socket's kind, with the options the guest set before.
    init(family: Int32, type: Int32, transport: Int32, options: SandboxSocket.Options, network: SandboxNetwork,
         account: MemoryAccount) throws(Errno) {
        try network.reserveHostSocket(account: account)
        let fd = Glibc.socket(family, type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), transport)
        guard fd >= 0 else {
            let error = Errno.lastHostError
            network.releaseHostSocket(account: account)
            throw error == Errno.EMFILE ? Errno.ENFILE : error
        }
        var size = SandboxNetwork.hostBufferSize
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        self.family = family
        self.type = type
        self.transport = transport
        self.options = options
        self.network = network
        self.account = account
        self.fd = fd
        isReset = false
        for (key, value) in options.values where Self.passedThrough.contains(key) {
            _ = applyToHost(level: Int32(key >> 32), name: Int32(truncatingIfNeeded: key), value)
        }
    }

    /// A socket that was connected outside the sandbox when it was checkpointed.
    init(resetFamily family: Int32, type: Int32, transport: Int32, peer: InetAddress?) {
        self.family = family
        self.type = type
        self.transport = transport
        options = SandboxSocket.Options()
        network = nil
        account = nil
        fd = -1
        isReset = true
        peerAddress = peer
    }

    deinit { closeHost() }

    var name: String { "socket:[\(UInt(bitPattern: ObjectIdentifier(self).hashValue) & 0xFFFFFF)]" }
    var fileType: mode_t { S_IFSOCK }
    var isStream: Bool { type == SandboxSocket.streamType }
    var hostPollDescriptor: Int32? { fd >= 0 ? fd : nil }

    private func closeHost() {
        guard fd >= 0 else { return }
        Glibc.close(fd)
        fd = -1
        if let network, let account { network.releaseHostSocket(account: account) }
    }

    func lastDescriptionClosed() {
        closeHost()
        changed.wakeAll()
    }

    func readiness() -> Int16 {
        guard fd >= 0 else { return Int16(POLLIN | POLLRDNORM | POLLOUT | POLLWRNORM | POLLERR | POLLHUP) }
        var entry = pollfd(fd: fd, events: Int16(POLLIN | POLLOUT | POLLPRI | POLLRDNORM | POLLWRNORM) | 0x2000, revents: 0)
        return Glibc.poll(&entry, 1, 0) > 0 ? entry.revents : 0
    }

    /// The error a call on a reset socket gets: ECONNRESET once, then `after`.
    private func resetError(after: Errno) -> Errno {
        guard !resetReported else { return after }
        resetReported = true
        return Errno.ECONNRESET
    }

    /// Waits for `events` on the host socket, for at most SO_RCVTIMEO (reads) or SO_SNDTIMEO
    /// (writes, connects) when the guest set one.
    private func wait(_ task: Task, for events: Int16, reason: String) throws(Errno) -> Never {
        let timeout = options.timeout(events & Int16(POLLOUT) != 0 ? SO_SNDTIMEO : SO_RCVTIMEO)
        try task.block(Wait.socket(task, queues: [changed], hostDescriptors: [pollfd(fd: fd, events: events, revents: 0)],
                                   timeout: timeout, reason: reason))
    }

    // MARK: Connections

    /// connect(2) toward `destination` (as the guest named it; the policy allowed it).
    func connect(_ task: Task, to destination: InetAddress, nonblocking: Bool) throws(Errno) {
        guard !isReset else { throw resetError(after: Errno.EISCONN) }
        let target = network?.hostDestination(for: destination) ?? destination
        let address = target.encoded(asFamily: family)
        let result = address.withUnsafeBytes {
            Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count))
        }
        let error = result == 0 ? 0 : errno
        switch error {
        case 0:
            peerAddress = destination
            blockingConnectUnderWay = false
            changed.wakeAll()
        case EINPROGRESS, EALREADY:
            peerAddress = destination
            guard !nonblocking else { throw Errno(error) }
            blockingConnectUnderWay = true
            do throws(Errno) {
                try wait(task, for: Int16(POLLOUT), reason: "connect to \(destination.description)")
            } catch {
                // SO_SNDTIMEO ran out: Linux reports the connection as still under way.
                if error == Errno.EAGAIN { blockingConnectUnderWay = false; throw Errno.EINPROGRESS }
                throw error
            }
        case EISCONN where blockingConnectUnderWay:
            blockingConnectUnderWay = false  // the connection this caller waited for is made
        default:
            blockingConnectUnderWay = false
            if error != EISCONN { peerAddress = nil }
            throw Errno(error)
        }
    }

    /// connect(AF_UNSPEC) of a UDP socket: no default destination any more.
    func disconnect() throws(Errno) {
        guard fd >= 0 else { return }
        var unspecified = sockaddr()
        unspecified.sa_family = sa_family_t(AF_UNSPEC)
        _ = Glibc.connect(fd, &unspecified, socklen_t(MemoryLayout<sockaddr>.size))
        peerAddress = nil
    }

    var localAddress: SocketAddress {
        guard fd >= 0 else { return .unbound(family: family) }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard result == 0 else { return .unbound(family: family) }
        let bytes = withUnsafeBytes(of: storage) { Array($0.prefix(Int(length))) }
        return (try? InetAddress(parsing: bytes, socketFamily: family)).map { .inet($0) } ?? .unbound(family: family)
    }

    /// getpeername(2): ENOTCONN until the host connection is made.
    func peerName() throws(Errno) -> SocketAddress {
        if isReset, let peerAddress { return .inet(peerAddress) }
        guard fd >= 0, let peerAddress else { throw Errno.ENOTCONN }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        }
        guard result == 0 else { throw Errno.ENOTCONN }
        return .inet(peerAddress)
    }

    func shutdown(how: Int32) throws(Errno) {
        guard !isReset else { throw Errno.ENOTCONN }
        guard Glibc.shutdown(fd, how) == 0 else { throw Errno.lastHostError }
        changed.wakeAll()
    }

    // MARK: Data

    /// Sends `bytes`, to `destination` when a datagram names one (sendto; the policy allowed it).
    func send(_ task: Task, _ bytes: [UInt8], to destination: InetAddress?, nonblocking: Bool,
              noSignal: Bool) throws(Errno) -> Int {
        guard !isReset else {
            let error = resetError(after: Errno.EPIPE)
            if error == Errno.EPIPE { raiseBrokenPipe(task, noSignal: noSignal) }
            throw error
        }
        let flags = MSG_DONTWAIT | MSG_NOSIGNAL
        let sent: Int
        if let destination {
            let target = (network?.hostDestination(for: destination) ?? destination).encoded(asFamily: family)
            sent = bytes.withUnsafeBytes { data in
                target.withUnsafeBytes {
                    Glibc.sendto(fd, data.baseAddress, data.count, Int32(flags), $0.baseAddress!.assumingMemoryBound(to: sockaddr.self),
                                 socklen_t($0.count))
                }
            }
        } else {
            sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(flags)) }
        }
        if sent >= 0 {
            changed.wakeAll()
            return sent
        }
        let error = errno
        switch error {
        case EAGAIN:
            guard !nonblocking else { throw Errno.EAGAIN }
            try wait(task, for: Int16(POLLOUT), reason: "write to a socket")
        case EPIPE:
            raiseBrokenPipe(task, noSignal: noSignal)
            throw Errno.EPIPE
        default:
            throw Errno(error)
        }
    }

    private func raiseBrokenPipe(_ task: Task, noSignal: Bool) {
        guard !noSignal else { return }
        var info = SignalInformation(signal: SIGPIPE)
        info.code = SignalInformation.kernelCode
        task.sandbox.send(info, toTask: task)
    }

    /// Receives into `vectors` (host pointers into guest memory). A datagram from where the
    /// sandbox may not send is dropped, as a stateful firewall would.
    func receive(_ task: Task, into vectors: [iovec], nonblocking: Bool, peek: Bool,
                 waitAll: Bool) throws(Errno) -> SandboxSocket.Received {
        let nothing = SandboxSocket.Received(count: 0, rights: [], truncated: false, length: 0,
                                             sender: peerAddress.map { .inet($0) } ?? .unbound(family: family))
        guard !isReset else {
            let error = resetError(after: Errno.ENOTCONN)
            if error == Errno.ENOTCONN { return nothing }  // the end of the stream
            throw error
        }
        let wanted = Buffers.totalLength(vectors)
        if waitAll && isStream && !nonblocking && !peek && wanted > 0 {
            var available: Int32 = 0
            var entry = pollfd(fd: fd, events: Int16(POLLIN) | 0x2000, revents: 0)
            let ended = Glibc.poll(&entry, 1, 0) > 0 && entry.revents & (0x2000 | Int16(POLLHUP | POLLERR)) != 0
            if !ended && ioctl(fd, UInt(FIONREAD), &available) == 0 && Int(available) < wanted {
                try wait(task, for: Int16(POLLIN) | 0x2000, reason: "read from a socket")
            }
        }
        while true {
            var storage = sockaddr_storage()
            var vectors = vectors
            var header = msghdr()
            let received: Int = withUnsafeMutablePointer(to: &storage) { name in
                vectors.withUnsafeMutableBufferPointer { buffers in
                    header.msg_name = UnsafeMutableRawPointer(name)
                    header.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
                    header.msg_iov = buffers.baseAddress
                    header.msg_iovlen = buffers.count
                    var flags = MSG_DONTWAIT | (peek ? MSG_PEEK : 0)
                    if !isStream { flags |= MSG_TRUNC }  // the datagram's full length
                    return recvmsg(fd, &header, Int32(flags))
                }
            }
            guard received >= 0 else {
                let error = errno
                guard error == EAGAIN else { throw Errno(error) }
                guard !nonblocking else { throw Errno.EAGAIN }
                try wait(task, for: Int16(POLLIN) | 0x2000, reason: "read from a socket")
            }
            var sender = nothing.sender
            if !isStream {
                let bytes = withUnsafeBytes(of: storage) { Array($0.prefix(Int(header.msg_namelen))) }
                if let source = try? InetAddress(parsing: bytes, socketFamily: family) {
                    guard network?.admitsDatagram(from: source) ?? true else {
                        if peek { _ = Glibc.recv(fd, nil, 0, Int32(MSG_DONTWAIT)) }  // drop it and look again
                        continue
                    }
                    sender = .inet(network?.guestSource(for: source) ?? source)
                }
            }
            return SandboxSocket.Received(count: min(received, wanted), rights: [], truncated: received > wanted,
                                          length: received, sender: sender)
        }
    }

    /// FIONREAD.
    var bytesReadable: Int {
        guard fd >= 0 else { return 0 }
        var available: Int32 = 0
        return ioctl(fd, UInt(FIONREAD), &available) == 0 ? Int(available) : 0
    }

    func read(_ task: Task, _ file: OpenFile, into vectors: [iovec]) throws(Errno) -> Int {
        try receive(task, into: vectors, nonblocking: file.statusFlags & O_NONBLOCK != 0, peek: false, waitAll: false).count
    }

    func write(_ task: Task, _ file: OpenFile, from vectors: [iovec]) throws(Errno) -> Int {
        try send(task, Buffers.gather(vectors, limit: SandboxSocket.capacity), to: nil,
                 nonblocking: file.statusFlags & O_NONBLOCK != 0, noSignal: false)
    }

    func waitForWriteRoom(_ task: Task, nonblocking: Bool) throws(Errno) -> Int? {
        guard fd >= 0 else { return nil }
        var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        guard Glibc.poll(&entry, 1, 0) == 0 else { return nil }
        guard !nonblocking else { throw Errno.EAGAIN }
        try wait(task, for: Int16(POLLOUT), reason: "write to a socket")
    }

    // MARK: Options

    /// setsockopt(2): stored, and applied to the host socket when it shapes the connection.
    func setOption(level: Int32, name: Int32, _ bytes: [UInt8]) throws(Errno) {
        let key = SandboxSocket.Options.key(level, name)
        if Self.passedThrough.contains(key), fd >= 0 {
            guard applyToHost(level: level, name: name, bytes) else { throw Errno.lastHostError }
        }
        options.values[key] = bytes
    }

    private func applyToHost(level: Int32, name: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { setsockopt(fd, level, name, $0.baseAddress, socklen_t($0.count)) } == 0
    }

    /// getsockopt(2): what the host reports for SO_ERROR and the options passed through (and
    /// TCP_INFO and the like, which describe this connection), the guest's stored value otherwise.
    func option(level: Int32, name: Int32, room: Int) throws(Errno) -> [UInt8] {
        func integer(_ value: Int32) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
        switch (level, name) {
        case (SOL_SOCKET, SO_TYPE): return integer(type)
        case (SOL_SOCKET, SO_DOMAIN): return integer(family)
        case (SOL_SOCKET, SO_PROTOCOL): return integer(transport)
        case (SOL_SOCKET, SO_ACCEPTCONN): return integer(0)
        case (SOL_SOCKET, SO_ERROR) where fd < 0:
            let error = resetReported ? 0 : ECONNRESET
            resetReported = true
            return integer(error)
        default: break
        }
        let key = SandboxSocket.Options.key(level, name)
        if let stored = options.values[key], !Self.passedThrough.contains(key) { return stored }
        guard fd >= 0, [SOL_SOCKET, 0, 6, 41, 17].contains(level), name != SO_PEERCRED else {
            if let stored = options.values[key] { return stored }
            throw Errno.ENOPROTOOPT
        }
        var buffer = [UInt8](repeating: 0, count: max(min(room, 512), 4))
        var length = socklen_t(buffer.count)
        let result = buffer.withUnsafeMutableBytes { getsockopt(fd, level, name, $0.baseAddress, &length) }
        guard result == 0 else { throw Errno.lastHostError }
        return Array(buffer.prefix(Int(length)))
    }
}
