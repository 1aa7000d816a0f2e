import CatalyzerKVM
import Glibc

/// A socket whose every peer is in the sandbox: an AF_UNIX socket (a socketpair(2) end, or a
/// socket bound to a socket file in /tmp or an abstract name), or an AF_INET/AF_INET6 socket on the
/// sandbox's own loopback (`InetPortTable`). It listens and accepts, or connects to a listener of
/// the same sandbox. Nothing here reaches a host socket.
///
/// Each socket has a receive queue of messages; a connected peer's writes append to it. Stream
/// sockets read across message boundaries (stopping before one that carries fds); datagram and
/// seqpacket sockets read one message per call. The queue holds up to `capacity` bytes; writers
/// wait for room. What a queue holds (its bytes plus `messageOverhead` per message) is charged to
/// the sandbox's `MemoryAccount`, the `--memory` budget guest RAM, /tmp and pipes draw from; a
/// send the account cannot take fails with ENOMEM.
final class SandboxSocket: SpecialFile {
    struct Message {
        var bytes: [UInt8]
        /// Open file descriptions passed with SCM_RIGHTS, installed in the receiver on recvmsg.
        var rights: [OpenFile]
        /// The sending socket's name, reported by recvfrom/recvmsg.
        var sender: SocketAddress
        /// An IPv6 datagram's hop limit and traffic class, for IPV6_RECVHOPLIMIT / IPV6_RECVTCLASS.
        var hopLimit: Int32 = 64
        var trafficClass: Int32 = 0
    }

    enum State {
        /// From socket(2), before listen or connect (it may be bound).
        case unconnected
        /// listen(2) was called: connections queue in `pending` up to the backlog.
        case listening(backlog: Int)
        /// A socketpair end, an accepted socket, or a socket that connected. The peer may since
        /// have gone (`peer` is nil, `peerClosed` is set).
        case connected
    }

    static let streamType: Int32 = 1, datagramType: Int32 = 2, sequencedPacketType: Int32 = 5
    static let protocolTCP: Int32 = 6, protocolUDP: Int32 = 17, protocolUDPLite: Int32 = 136
    /// Linux's default socket buffer (net.core.rmem_default).
    static let capacity = 212_992
    /// Linux's net.core.somaxconn: listen(2) backlogs above it are cut to it.
    static let maximumBacklog = 4096

    /// AF_UNIX, AF_INET or AF_INET6.
    let family: Int32
    let type: Int32
    /// An inet socket's transport: IPPROTO_TCP, IPPROTO_UDP or IPPROTO_UDPLITE (0 for unix).
    var transport: Int32 = 0
    private(set) var state: State
    /// The name from bind(2) (or an automatic bind); nil while unnamed.
    private(set) var localAddress: SocketAddress?
    /// The name of the socket this one connected to (or was accepted from); what getpeername says.
    private(set) var peerAddress: SocketAddress
    var options = Options()
    /// Who created the peer end (SO_PEERCRED): its process and credentials at connect time.
    private(set) var peerCredentials = PeerCredentials()
    /// Gives the name back when the socket closes (a unix binding's weak link is cut, an inet
    /// port is released).
    private var releaseName: (() -> Void)?
    /// The other end; nil once either end is closed (then reads see end-of-file, writes EPIPE).
    /// The two ends refer to each other until one's last description closes, which cuts both links.
    private(set) var peer: SandboxSocket?
    /// A unix datagram socket's default destination after connect(2). Not mutual, unlike `peer`.
    /// An inet one looks its peer's port up at each send instead (in `ports`).
    private weak var datagramDestination: SandboxSocket?
    private weak var ports: InetPortTable?
    private var queue: [Message] = []
    private var queuedBytes = 0
    /// Host memory a queued message costs beyond its bytes (the record, its sender's name).
    static let messageOverhead = 256
    /// Where the queue is charged, and how much it holds there.
    private var account: MemoryAccount?
    private var chargedBytes = 0
    /// Connections made to this listening socket and not accepted yet: their server-side ends.
    private var pending: [SandboxSocket] = []
    /// shutdown(SHUT_RD) here, or SHUT_WR by the peer: no more data will arrive.
    private(set) var receiveShutdown = false
    /// shutdown(SHUT_WR) here: no more writes.
    private(set) var sendShutdown = false
    private(set) var peerClosed = false
    /// A TCP write went to a peer that had closed: the next ones fail with EPIPE.
    private var wroteAfterPeerClosed = false
    /// An error to report once (SO_ERROR, the next receive, POLLERR): a connected inet datagram
    /// socket's send to a port nobody holds is refused, as the ICMP port-unreachable a Linux
    /// loopback sends back makes it.
    var pendingError: Errno?
    /// A non-blocking connect answered EINPROGRESS; the next connect reports the connection
    /// made (0), later ones EISCONN, as on Linux.
    var connectReportedInProgress = false
    let changed = WaitQueue()

    /// What setsockopt stored that changes behaviour; other options are stored in `values` and
    /// reported back by getsockopt.
    struct Options {
        var reuseAddress = false
        var reusePort = false
        var ipv6Only = false
        /// (level, name) → value as set, for options that are only reported back.
        var values: [Int64: [UInt8]] = [:]

        static func key(_ level: Int32, _ name: Int32) -> Int64 { Int64(level) << 32 | Int64(UInt32(bitPattern: name)) }

        /// SO_RCVTIMEO or SO_SNDTIMEO (a `struct timeval`) in nanoseconds; nil when unset or zero.
        func timeout(_ name: Int32) -> UInt64? {
            guard let bytes = values[Self.key(SOL_SOCKET, name)], bytes.count >= 16 else { return nil }
            let seconds = bytes.withUnsafeBytes { $0.loadUnaligned(as: Int64.self) }
            let microseconds = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: Int64.self) }
            guard seconds >= 0, microseconds >= 0, seconds > 0 || microseconds > 0 else { return nil }
            return UInt64(min(seconds, 1 << 32)) * 1_000_000_000 + UInt64(min(microseconds, 999_999)) * 1000
        }

        /// Whether an integer option was set non-zero.
        func flag(_ level: Int32, _ name: Int32) -> Bool {
            guard let bytes = values[Self.key(level, name)], bytes.count >= 4 else { return false }
            return bytes.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) } != 0
        }
    }

    struct PeerCredentials {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
    }

    private init(family: Int32, type: Int32, state: State) {
        self.family = family
        self.type = type
        self.state = state
        peerAddress = .unbound(family: family)
    }

    /// socket(2): unnamed and unconnected.
    static func unconnected(family: Int32, type: Int32) -> SandboxSocket { SandboxSocket(family: family, type: type, state: .unconnected) }

    /// socketpair(2): two connected, unnamed ends; each reports its creator as the peer.
    static func pair(type: Int32, creator: PeerCredentials) -> (SandboxSocket, SandboxSocket) {
        let family = SocketAddress.familyUnix
        let first = SandboxSocket(family: family, type: type, state: .connected)
        let second = SandboxSocket(family: family, type: type, state: .connected)
        first.peer = second
        second.peer = first
        first.peerCredentials = creator
        second.peerCredentials = creator
        return (first, second)
    }

    var isConnected: Bool {
        if case .connected = state { return true }
        return false
    }

    var isListening: Bool {
        if case .listening = state { return true }
        return false
    }

    /// Stream and seqpacket sockets connect to a listener; datagram sockets send to a name.
    var isConnectionOriented: Bool { type != Self.datagramType }

    /// FIONREAD: bytes waiting (a stream's total, a datagram socket's next message).
    var bytesReadable: Int { isStream ? queuedBytes : queue.first?.bytes.count ?? 0 }

    var name: String { "socket:[\(UInt(bitPattern: ObjectIdentifier(self).hashValue) & 0xFFFFFF)]" }
    var fileType: mode_t { S_IFSOCK }
    var isStream: Bool { type == Self.streamType }
    var isInet: Bool { family != SocketAddress.familyUnix }

    /// The local inet address, when bound.
    var inetAddress: InetAddress? {
        if case .inet(let address) = localAddress { return address }
        return nil
    }

    func readiness() -> Int16 {
        switch state {
        case .listening:
            return pending.isEmpty ? 0 : Int16(POLLIN | POLLRDNORM)
        case .unconnected where isConnectionOriented:
            return Int16(POLLOUT | POLLHUP)  // Linux's answer for an unconnected stream socket
        case .unconnected:
            var ready = Int16(POLLOUT | POLLWRNORM)
            if !queue.isEmpty { ready |= Int16(POLLIN | POLLRDNORM) }
            return ready
        case .connected:
            break
        }
        var ready: Int16 = pendingError == nil ? 0 : Int16(POLLERR)
        if !queue.isEmpty || receiveShutdown || peerClosed { ready |= Int16(POLLIN | POLLRDNORM) }
        if receiveShutdown || peerClosed { ready |= 0x2000 }  // POLLRDHUP
        if let peer, !sendShutdown, peer.queuedBytes < Self.capacity { ready |= Int16(POLLOUT | POLLWRNORM) }
        if peerClosed || (sendShutdown && receiveShutdown) { ready |= Int16(POLLHUP) }
        if peer == nil { ready |= Int16(POLLOUT | POLLWRNORM) }  // a write fails at once (EPIPE)
        return ready
    }

    // MARK: Names and connections

    /// bind(2) of an AF_UNIX socket: gives it `address`, registering it where connect and sendto
    /// find it. `register` creates the socket file or the abstract-namespace entry and may fail
    /// (EADDRINUSE).
    func bind(_ address: UnixAddress, register: (UnixSocketBinding) throws(Errno) -> Void) throws(Errno) {
        guard localAddress == nil else { throw Errno.EINVAL }
        let binding = UnixSocketBinding(socket: self)
        try register(binding)
        releaseName = { [weak binding] in binding?.socket = nil }
        localAddress = .unix(address)
    }

    /// bind(2) of an inet socket (also the automatic bind of connect, listen and sendto).
    func bind(_ address: InetAddress, in ports: InetPortTable) throws(Errno) {
        guard localAddress == nil else { throw Errno.EINVAL }
        let bound = try ports.bind(self, to: address)
        self.ports = ports
        releaseName = { [weak self, weak ports] in
            if let self { ports?.release(self, port: bound.port) }
        }
        localAddress = .inet(bound)
    }

    var isBound: Bool { localAddress != nil }

    /// listen(2). The socket must be bound (the caller binds an inet socket to an ephemeral port
    /// first; an unbound unix socket is EINVAL, as on Linux).
    func listen(backlog: Int32) throws(Errno) {
        guard isConnectionOriented else { throw Errno.EOPNOTSUPP }
        switch state {
        case .connected: throw Errno.EINVAL
        case .unconnected, .listening:
            guard localAddress != nil else { throw Errno.EINVAL }
            state = .listening(backlog: Int(min(max(backlog, 0), Int32(Self.maximumBacklog))))
            changed.wakeAll()
        }
    }

    /// connect(2) of a stream or seqpacket socket to `listener`: makes the server-side end, queues
    /// it for accept and connects this socket to it at once. Waits while the backlog is full.
    func connect(_ task: Task, to listener: SandboxSocket, address: SocketAddress, nonblocking: Bool) throws(Errno) {
        switch state {
        case .connected: throw Errno.EISCONN
        case .listening: throw Errno.EINVAL
        case .unconnected: break
        }
        guard case .listening(let backlog) = listener.state else { throw Errno.ECONNREFUSED }
        if listener.pending.count > backlog {
            guard !nonblocking else { throw Errno.EAGAIN }
            try task.block(Wait(queues: [listener.changed], reason: "connect to a unix socket (backlog full)"))
        }
        let server = SandboxSocket(family: listener.family, type: type, state: .connected)
        server.transport = transport
        server.options = listener.options
        server.localAddress = isInet ? address : listener.localAddress  // inet: the address connected to
        server.peerAddress = localAddress ?? .unbound(family: family)
        server.peerCredentials = PeerCredentials(pid: task.group.pid, uid: task.credentials.uid, gid: task.credentials.gid)
        peerCredentials = listener.peerCredentials
        peerAddress = address
        server.peer = self
        peer = server
        state = .connected
        listener.pending.append(server)
        listener.changed.wakeAll()
        changed.wakeAll()
    }

    /// Records who listens, for the SO_PEERCRED of sockets that connect to it.
    func noteListener(_ task: Task) {
        peerCredentials = PeerCredentials(pid: task.group.pid, uid: task.credentials.uid, gid: task.credentials.gid)
    }

    /// accept(2): the oldest pending connection; waits for one unless `nonblocking`.
    func accept(_ task: Task, nonblocking: Bool) throws(Errno) -> SandboxSocket {
        guard isListening else { throw Errno.EINVAL }
        if pending.isEmpty {
            guard !nonblocking else { throw Errno.EAGAIN }
            try task.block(Wait.socket(task, queues: [changed], timeout: options.timeout(SO_RCVTIMEO), reason: "accept on a socket"))
        }
        let connection = pending.removeFirst()
        changed.wakeAll()  // a connect waiting for backlog room may go on
        return connection
    }

    /// connect(2) of a datagram socket: sets the default destination.
    func connectDatagram(to destination: SandboxSocket?, address: SocketAddress) {
        datagramDestination = destination
        peerAddress = address
        state = .connected
    }

    /// connect(AF_UNSPEC) of a datagram socket: no default destination any more.
    func disconnectDatagram() {
        datagramDestination = nil
        peerAddress = .unbound(family: family)
        if case .connected = state, peer == nil { state = .unconnected }
    }

    // MARK: Data

    /// What a receive got.
    struct Received {
        var count: Int
        var rights: [OpenFile]
        /// A datagram longer than the buffers (MSG_TRUNC).
        var truncated: Bool
        /// The datagram's full length.
        var length: Int
        var sender: SocketAddress
        var hopLimit: Int32 = 64
        var trafficClass: Int32 = 0
    }

    /// Receives into `vectors`: bytes read, fds passed, whether a datagram was truncated, its
    /// full length and who sent it. `peek` leaves the data queued.
    func receive(_ task: Task, into vectors: [iovec], nonblocking: Bool, peek: Bool,
                 waitAll: Bool) throws(Errno) -> Received {
        guard isConnected || !isConnectionOriented else { throw isListening ? Errno.EINVAL : Errno.ENOTCONN }
        if let error = pendingError {
            pendingError = nil
            throw error
        }
        if queue.isEmpty {
            if receiveShutdown || peerClosed { return Received(count: 0, rights: [], truncated: false, length: 0, sender: peerAddress) }
            guard !nonblocking else { throw Errno.EAGAIN }
            try task.block(Wait.socket(task, queues: [changed], timeout: options.timeout(SO_RCVTIMEO), reason: "read from a socket"))
        }
        let wanted = Buffers.totalLength(vectors)
        if !isStream {
            let message = queue[0]
            let count = Buffers.scatter(message.bytes.prefix(wanted), into: vectors)
            if !peek { dequeue(1) }
            return Received(count: count, rights: peek ? [] : message.rights, truncated: message.bytes.count > wanted,
                            length: message.bytes.count, sender: message.sender, hopLimit: message.hopLimit,
                            trafficClass: message.trafficClass)
        }
        if waitAll && !peek && queuedBytes < wanted && !(receiveShutdown || peerClosed) && !nonblocking
            && queue.allSatisfy({ $0.rights.isEmpty }) && queuedBytes < Self.capacity {
            try task.block(Wait.socket(task, queues: [changed], timeout: options.timeout(SO_RCVTIMEO),
                                       reason: "read from a socket (MSG_WAITALL)"))
        }
        // A stream read takes the fds of the first message that carries some and stops after it.
        var gathered: [UInt8] = []
        var rights: [OpenFile] = []
        var consumedMessages = 0
        var partial = 0
        for message in queue where gathered.count < wanted {
            let take = min(message.bytes.count, wanted - gathered.count)
            gathered += message.bytes.prefix(take)
            rights += message.rights
            if take == message.bytes.count { consumedMessages += 1 } else { partial = take }
            if !message.rights.isEmpty { break }
        }
        let sender = queue.first?.sender ?? peerAddress
        if !peek {
            dequeue(consumedMessages)
            if partial > 0 {
                queue[0].bytes.removeFirst(partial)
                queue[0].rights = []
                queuedBytes -= partial
                uncharge(partial)
            }
        }
        return Received(count: Buffers.scatter(gathered, into: vectors), rights: peek ? [] : rights, truncated: false,
                        length: gathered.count, sender: sender)
    }

    /// Appends a message to this socket's queue, charging the sandbox's memory account for it.
    private func enqueue(_ message: Message, account: MemoryAccount) throws(Errno) {
        let cost = message.bytes.count + Self.messageOverhead
        guard account.charge(cost) else { throw Errno.ENOMEM }
        if let previous = self.account, previous !== account { previous.release(chargedBytes); chargedBytes = 0 }
        self.account = account
        chargedBytes += cost
        queue.append(message)
        queuedBytes += message.bytes.count
    }

    /// Gives back what `bytes` bytes of queued data cost.
    private func uncharge(_ bytes: Int) {
        let released = min(bytes, chargedBytes)
        account?.release(released)
        chargedBytes -= released
    }

    deinit { uncharge(chargedBytes) }

    private func dequeue(_ count: Int) {
        guard count > 0 else { return }
        for message in queue.prefix(count) {
            queuedBytes -= message.bytes.count
            uncharge(message.bytes.count + Self.messageOverhead)
        }
        queue.removeFirst(count)
        changed.wakeAll()
        peer?.changed.wakeAll()  // the peer may now write
        waitingSenders.wakeAll()
    }

    /// Datagram senders waiting for room in this socket's queue.
    private let waitingSenders = WaitQueue()

    private func raiseBrokenPipe(_ task: Task, noSignal: Bool) -> Errno {
        if !noSignal {
            var info = SignalInformation(signal: SIGPIPE)
            info.code = SignalInformation.kernelCode
            task.sandbox.send(info, toTask: task)
        }
        return Errno.EPIPE
    }

    /// Sends `bytes` (with `rights`) to the connected peer, or for a datagram socket to
    /// `destination` (sendto) or its default destination.
    /// `hasDestination` says a sendto address was given (an inet datagram to a port nobody holds
    /// has a destination but no socket: it is dropped, as UDP does).
    func send(_ task: Task, _ bytes: [UInt8], rights: [OpenFile], to destination: SandboxSocket? = nil,
              hasDestination: Bool = false, headers: (hopLimit: Int32, trafficClass: Int32)? = nil,
              nonblocking: Bool, noSignal: Bool) throws(Errno) -> Int {
        if !isConnectionOriented && peer == nil {
            var connectedTarget = datagramDestination
            if isInet, isConnected, !hasDestination, case .inet(let address) = peerAddress {
                connectedTarget = ports?.find(address, transport: transport)
            }
            guard let target = destination ?? connectedTarget else {
                if isInet && (hasDestination || isConnected) {
                    guard bytes.count <= Self.capacity else { throw Errno.EMSGSIZE }
                    if isConnected && !hasDestination {
                        pendingError = Errno.ECONNREFUSED
                        changed.wakeAll()
                    }
                    return bytes.count  // dropped: nothing listens there
                }
                throw isConnected ? Errno.ECONNREFUSED : isInet ? Errno.EDESTADDRREQ : Errno.ENOTCONN
            }
            return try sendDatagram(task, bytes, rights: rights, to: target, headers: headers ?? defaultHeaders,
                                    nonblocking: nonblocking)
        }
        guard isConnected else { throw Errno.ENOTCONN }
        if isInet && isStream && !sendShutdown && peer == nil && peerClosed && !wroteAfterPeerClosed {
            // TCP: the peer's close arrived as a FIN, so a write still succeeds (into a connection
            // whose other end answers with a reset), and only later ones fail, as on Linux.
            if !bytes.isEmpty { wroteAfterPeerClosed = true }
            return bytes.count
        }
        guard !sendShutdown, let peer, !peer.receiveShutdown else { throw raiseBrokenPipe(task, noSignal: noSignal) }
        if !isStream && bytes.count > Self.capacity { throw Errno.EMSGSIZE }
        let room = Self.capacity - peer.queuedBytes
        let needed = isStream ? min(bytes.count, 1) : bytes.count
        if room < needed || (room <= 0 && !bytes.isEmpty) {
            guard !nonblocking else { throw Errno.EAGAIN }
            try task.block(Wait.socket(task, queues: [peer.changed, changed], timeout: options.timeout(SO_SNDTIMEO),
                                       reason: "write to a socket"))
        }
        let count = isStream ? min(bytes.count, room) : bytes.count
        if count == 0 && isStream && rights.isEmpty { return 0 }
        try peer.enqueue(Message(bytes: Array(bytes.prefix(count)), rights: rights, sender: localAddress ?? .unbound(family: family)),
                         account: task.sandbox.memoryAccount)
        peer.changed.wakeAll()
        return count
    }

    func waitForWriteRoom(_ task: Task, nonblocking: Bool) throws(Errno) -> Int? {
        guard isConnectionOriented, isConnected, !sendShutdown, let peer, !peer.receiveShutdown else { return nil }
        let room = Self.capacity - peer.queuedBytes
        guard room <= 0 else { return isStream ? room : nil }
        guard !nonblocking else { throw Errno.EAGAIN }
        try task.block(Wait.socket(task, queues: [peer.changed, changed], timeout: options.timeout(SO_SNDTIMEO),
                                   reason: "write to a socket"))
    }

    /// IPV6_UNICAST_HOPS (64 unless set) and IPV6_TCLASS (0 unless set) of this socket.
    var ipv6Headers: (hopLimit: Int32, trafficClass: Int32) { defaultHeaders }

    private var defaultHeaders: (hopLimit: Int32, trafficClass: Int32) {
        func option(_ name: Int32) -> Int32? {
            options.values[Options.key(41, name)].map { $0.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) } }
        }
        let hops = option(16) ?? -1, trafficClass = option(67) ?? -1
        return (hops < 0 ? 64 : hops, trafficClass < 0 ? 0 : trafficClass)
    }

    private func sendDatagram(_ task: Task, _ bytes: [UInt8], rights: [OpenFile], to target: SandboxSocket,
                              headers: (hopLimit: Int32, trafficClass: Int32),
                              nonblocking: Bool) throws(Errno) -> Int {
        guard target.releaseName != nil || target.peer != nil else { throw Errno.ECONNREFUSED }  // closed since
        guard !sendShutdown else { throw Errno.EPIPE }
        guard bytes.count <= Self.capacity else { throw Errno.EMSGSIZE }
        if target.queuedBytes + bytes.count > Self.capacity {
            guard !nonblocking else { throw Errno.EAGAIN }
            try task.block(Wait.socket(task, queues: [target.waitingSenders], timeout: options.timeout(SO_SNDTIMEO),
                                       reason: "send to a datagram socket"))
        }
        try target.enqueue(Message(bytes: bytes, rights: rights, sender: senderAddress(toward: target),
                                   hopLimit: headers.hopLimit, trafficClass: headers.trafficClass),
                           account: task.sandbox.memoryAccount)
        target.changed.wakeAll()
        return bytes.count
    }

    /// The source address a datagram to `target` carries: an inet socket bound to the wildcard
    /// sends from the loopback address of the destination's side.
    private func senderAddress(toward target: SandboxSocket) -> SocketAddress {
        guard let local = localAddress else { return .unbound(family: family) }
        guard case .inet(var address) = local, address.isWildcard, let destination = target.inetAddress else { return local }
        address.ip = destination.isWildcard ? InetAddress.loopback(for: family, port: 0).ip : destination.ip
        return .inet(address)
    }

    func shutdown(read: Bool, write: Bool) throws(Errno) {
        guard isConnected else { throw Errno.ENOTCONN }
        if read { receiveShutdown = true }
        if write {
            sendShutdown = true
            peer?.receiveShutdown = true
            peer?.changed.wakeAll()
        }
        changed.wakeAll()
    }

    func read(_ task: Task, _ file: OpenFile, into vectors: [iovec]) throws(Errno) -> Int {
        let result = try receive(task, into: vectors, nonblocking: file.statusFlags & O_NONBLOCK != 0, peek: false, waitAll: false)
        return result.count  // fds passed with the data are dropped when read(2) is used, as on Linux
    }

    func write(_ task: Task, _ file: OpenFile, from vectors: [iovec]) throws(Errno) -> Int {
        try send(task, Buffers.gather(vectors, limit: Self.capacity), rights: [], nonblocking: file.statusFlags & O_NONBLOCK != 0,
                 noSignal: false)
    }

    func lastDescriptionClosed() {
        queue.removeAll()
        queuedBytes = 0
        uncharge(chargedBytes)
        releaseName?()  // a socket file stays, but nothing answers at it any more
        releaseName = nil
        // Connections nobody accepted are reset: their clients see the end of the stream.
        for connection in pending { connection.lastDescriptionClosed() }
        pending.removeAll()
        if let peer {
            peer.peerClosed = true
            peer.peer = nil
            peer.changed.wakeAll()
        }
        peer = nil
        changed.wakeAll()
        waitingSenders.wakeAll()
    }
}

/// What makes a bound socket reachable by its name: held by the socket file in /tmp (or the
/// sandbox's abstract namespace) and pointing weakly at the socket, so a closed socket leaves a
/// name that refuses connections, as on Linux.
final class UnixSocketBinding {
    weak var socket: SandboxSocket?

    init(socket: SandboxSocket) { self.socket = socket }
}

// MARK: Persist

/// A socket within the sandbox, saved and restored with its links (peer, pending connections,
/// a datagram socket's destination) as indices into the snapshot's socket list, its name
/// registered again in the port table or abstract namespace, and its queue charged again.
extension SandboxSocket {
    /// The sockets this one keeps alive or points at, which a checkpoint must hold too.
    var linkedSockets: [SandboxSocket] {
        [peer, datagramDestination].compactMap { $0 } + pending
    }

    /// Why this socket cannot be checkpointed, if it cannot.
    var checkpointObstacle: String? {
        if queue.contains(where: { !$0.rights.isEmpty }) { return "it holds file descriptors in flight (SCM_RIGHTS)" }
        if case .unix(.path(let path)) = localAddress, releaseName != nil { return "it is bound to the socket file \(path)" }
        return nil
    }

    func capture(index: (SandboxSocket) -> Int) -> KernelSnapshot.SocketState {
        let (stateCode, backlog): (UInt8, Int32) = switch state {
        case .unconnected: (0, 0)
        case .listening(let backlog): (1, Int32(backlog))
        case .connected: (2, 0)
        }
        let keys = options.values.keys.sorted()
        return KernelSnapshot.SocketState(
            family: family, type: type, transport: transport, state: stateCode, backlog: backlog,
            localAddress: localAddress?.encoded(family: family) ?? [], nameRegistered: releaseName != nil,
            peerAddress: peerAddress.encoded(family: family), reuseAddress: options.reuseAddress, reusePort: options.reusePort,
            ipv6Only: options.ipv6Only, optionKeys: keys, optionValues: keys.map { options.values[$0]! },
            credentials: [UInt32(bitPattern: peerCredentials.pid), peerCredentials.uid, peerCredentials.gid],
            peer: peer.map(index) ?? -1, datagramDestination: datagramDestination.map(index) ?? -1,
            pending: pending.map(index),
            messages: queue.map { .init(bytes: $0.bytes, sender: $0.sender.encoded(family: family), hopLimit: $0.hopLimit,
                                        trafficClass: $0.trafficClass) },
            receiveShutdown: receiveShutdown, sendShutdown: sendShutdown, peerClosed: peerClosed,
            connectReportedInProgress: connectReportedInProgress, pendingError: pendingError?.code ?? 0)
    }

    /// Rebuilds the sockets of a snapshot: each socket, then the links between them, then their
    /// names and queued messages. Throws `RestoreError` for a state no monitor would have made.
    static func restore(_ states: [KernelSnapshot.SocketState], ports: InetPortTable, abstractNames: AbstractSocketNames,
                        account: MemoryAccount) throws -> [SandboxSocket] {
        func address(_ bytes: [UInt8], family: Int32) throws(Errno) -> SocketAddress {
            family == SocketAddress.familyUnix ? .unix(try UnixAddress(parsing: bytes)) : .inet(try InetAddress(parsing: bytes, socketFamily: family))
        }
        var sockets: [SandboxSocket] = []
        for (number, saved) in states.enumerated() {
            let isUnix = saved.family == SocketAddress.familyUnix
            guard [SocketAddress.familyUnix, SocketAddress.familyInet, SocketAddress.familyInet6].contains(saved.family),
                  [streamType, datagramType, sequencedPacketType].contains(saved.type),
                  isUnix ? saved.transport == 0 : [protocolTCP, protocolUDP, protocolUDPLite].contains(saved.transport),
                  (0...maximumBacklog).contains(Int(saved.backlog)) else {
                throw RestoreError("socket \(number) of the checkpoint has family \(saved.family), type \(saved.type), transport \(saved.transport)")
            }
            let state: State = switch saved.state {
            case 1: .listening(backlog: Int(saved.backlog))
            case 2: .connected
            default: .unconnected
            }
            let socket = SandboxSocket(family: saved.family, type: saved.type, state: state)
            socket.transport = saved.transport
            do throws(Errno) {
                socket.peerAddress = try address(saved.peerAddress, family: saved.family)
            } catch {
                throw RestoreError("socket \(number) of the checkpoint has a malformed peer name")
            }
            socket.options.reuseAddress = saved.reuseAddress
            socket.options.reusePort = saved.reusePort
            socket.options.ipv6Only = saved.ipv6Only
            socket.options.values = Dictionary(zip(saved.optionKeys, saved.optionValues), uniquingKeysWith: { $1 })
            socket.peerCredentials = PeerCredentials(pid: Int32(bitPattern: saved.credentials[0]), uid: saved.credentials[1],
                                                     gid: saved.credentials[2])
            socket.receiveShutdown = saved.receiveShutdown
            socket.sendShutdown = saved.sendShutdown
            socket.peerClosed = saved.peerClosed
            socket.connectReportedInProgress = saved.connectReportedInProgress
            socket.pendingError = saved.pendingError == 0 ? nil : Errno(saved.pendingError)
            sockets.append(socket)
        }
        for (socket, saved) in zip(sockets, states) {
            if saved.peer >= 0 { socket.peer = sockets[saved.peer] }
            if saved.datagramDestination >= 0 { socket.datagramDestination = sockets[saved.datagramDestination] }
            socket.pending = saved.pending.map { sockets[$0] }
        }
        for (number, (socket, saved)) in zip(sockets, states).enumerated() {
            do throws(Errno) {
                if !saved.localAddress.isEmpty {
                    let name = try address(saved.localAddress, family: saved.family)
                    switch name {
                    case .inet(let inet) where saved.nameRegistered:
                        try socket.bind(inet, in: ports)
                    case .unix(.abstract(let bytes)) where saved.nameRegistered:
                        try socket.bind(.abstract(bytes)) { binding throws(Errno) in
                            guard abstractNames[bytes]?.socket == nil else { throw Errno.EADDRINUSE }
                            abstractNames[bytes] = binding
                        }
                    default:
                        socket.localAddress = name  // reported, not registered (an accepted socket's)
                    }
                }
                for message in saved.messages {
                    try socket.enqueue(Message(bytes: message.bytes, rights: [], sender: try address(message.sender, family: saved.family),
                                               hopLimit: message.hopLimit, trafficClass: message.trafficClass), account: account)
                }
            } catch {
                throw RestoreError("socket \(number) of the checkpoint cannot be restored: its name or queue is invalid here (\(error))")
            }
        }
        return sockets
    }
}

extension Wait {
    /// A socket call's wait, bounded by SO_RCVTIMEO or SO_SNDTIMEO when set: once that time has
    /// passed since the call began, the call fails with EAGAIN instead of waiting again, as on
    /// Linux.
    static func socket(_ task: Task, queues: [WaitQueue], hostDescriptors: [pollfd] = [], timeout: UInt64?,
                       reason: String) throws(Errno) -> Wait {
        var wait = Wait(queues: queues, hostDescriptors: hostDescriptors, reason: reason)
        if let timeout {
            wait.deadline = task.deadline(afterNanoseconds: timeout)
            if task.hasTimedOut { throw Errno.EAGAIN }
        }
        return wait
    }
}
