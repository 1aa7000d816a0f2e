import Glibc

/// An AF_UNIX socket inside the sandbox: a socketpair(2) end, or a socket(2) socket that is bound
/// to a name (a socket file in /tmp, or an abstract name), listens and accepts, or connects to a
/// listener of the same sandbox. Nothing here reaches a host socket.
///
/// Each socket has a receive queue of messages; a connected peer's writes append to it. Stream
/// sockets read across message boundaries (stopping before one that carries fds); datagram and
/// seqpacket sockets read one message per call. The queue holds up to `capacity` bytes; writers
/// wait for room.
final class UnixSocket: SpecialFile {
    struct Message {
        var bytes: [UInt8]
        /// Open file descriptions passed with SCM_RIGHTS, installed in the receiver on recvmsg.
        var rights: [OpenFile]
        /// The sending socket's name, reported by recvfrom/recvmsg.
        var sender: UnixAddress = .unnamed
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
    /// Linux's default socket buffer (net.core.rmem_default).
    static let capacity = 212_992
    /// Linux's net.core.somaxconn: listen(2) backlogs above it are cut to it.
    static let maximumBacklog = 4096

    let type: Int32
    private(set) var state: State
    /// The name from bind(2), or an abstract name chosen at autobind; nil while unnamed.
    private(set) var localAddress: UnixAddress?
    /// The name of the socket this one connected to (or was accepted from); what getpeername says.
    private(set) var peerAddress: UnixAddress = .unnamed
    /// Who created the peer end (SO_PEERCRED): its process and credentials at connect time.
    private(set) var peerCredentials = PeerCredentials()
    /// The binding that makes this socket reachable by name; its weak link is cut when it closes.
    private var binding: UnixSocketBinding?
    /// The other end; nil once either end is closed (then reads see end-of-file, writes EPIPE).
    /// The two ends refer to each other until one's last description closes, which cuts both links.
    private(set) var peer: UnixSocket?
    /// A datagram socket's default destination after connect(2). Not mutual, unlike `peer`.
    private weak var datagramDestination: UnixSocket?
    private var queue: [Message] = []
    private var queuedBytes = 0
    /// Connections made to this listening socket and not accepted yet: their server-side ends.
    private var pending: [UnixSocket] = []
    /// shutdown(SHUT_RD) here, or SHUT_WR by the peer: no more data will arrive.
    private(set) var receiveShutdown = false
    /// shutdown(SHUT_WR) here: no more writes.
    private(set) var sendShutdown = false
    private(set) var peerClosed = false
    let changed = WaitQueue()

    struct PeerCredentials {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
    }

    private init(type: Int32, state: State) {
        self.type = type
        self.state = state
    }

    /// socket(AF_UNIX): unnamed and unconnected.
    static func unconnected(type: Int32) -> UnixSocket { UnixSocket(type: type, state: .unconnected) }

    /// socketpair(2): two connected, unnamed ends; each reports its creator as the peer.
    static func pair(type: Int32, creator: PeerCredentials) -> (UnixSocket, UnixSocket) {
        let first = UnixSocket(type: type, state: .connected), second = UnixSocket(type: type, state: .connected)
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
        var ready: Int16 = 0
        if !queue.isEmpty || receiveShutdown || peerClosed { ready |= Int16(POLLIN | POLLRDNORM) }
        if receiveShutdown || peerClosed { ready |= 0x2000 }  // POLLRDHUP
        if let peer, !sendShutdown, peer.queuedBytes < Self.capacity { ready |= Int16(POLLOUT | POLLWRNORM) }
        if peerClosed || (sendShutdown && receiveShutdown) { ready |= Int16(POLLHUP) }
        if peer == nil { ready |= Int16(POLLOUT | POLLWRNORM) }  // a write fails at once (EPIPE)
        return ready
    }

    // MARK: Names and connections

    /// bind(2): gives the socket `address`, registering it where connect and sendto find it.
    /// `register` creates the socket file or the abstract-namespace entry and may fail (EADDRINUSE).
    func bind(_ address: UnixAddress, register: (UnixSocketBinding) throws(Errno) -> Void) throws(Errno) {
        guard localAddress == nil else { throw Errno.EINVAL }
        let binding = UnixSocketBinding(socket: self)
        try register(binding)
        self.binding = binding
        localAddress = address
    }

    /// listen(2). The socket must be bound, as on Linux for a named listener (autobind happens
    /// at bind(2) with an empty name).
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
    func connect(_ task: Task, to listener: UnixSocket, address: UnixAddress, nonblocking: Bool) throws(Errno) {
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
        let server = UnixSocket(type: type, state: .connected)
        server.localAddress = listener.localAddress
        server.peerAddress = localAddress ?? .unnamed
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
    func accept(_ task: Task, nonblocking: Bool) throws(Errno) -> UnixSocket {
        guard isListening else { throw Errno.EINVAL }
        if pending.isEmpty {
            guard !nonblocking else { throw Errno.EAGAIN }
            try task.block(Wait(queues: [changed], reason: "accept on a unix socket"))
        }
        let connection = pending.removeFirst()
        changed.wakeAll()  // a connect waiting for backlog room may go on
        return connection
    }

    /// connect(2) of a datagram socket: sets the default destination.
    func connectDatagram(to destination: UnixSocket, address: UnixAddress) {
        datagramDestination = destination
        peerAddress = address
        state = .connected
    }

    // MARK: Data

    /// Receives into `vectors`: bytes read, fds passed, whether a datagram was truncated, its
    /// full length and who sent it. `peek` leaves the data queued.
    func receive(_ task: Task, into vectors: [iovec], nonblocking: Bool, peek: Bool,
                 waitAll: Bool) throws(Errno) -> (count: Int, rights: [OpenFile], truncated: Bool, length: Int, sender: UnixAddress) {
        guard isConnected || !isConnectionOriented else { throw isListening ? Errno.EINVAL : Errno.ENOTCONN }
        if queue.isEmpty {
            if receiveShutdown || peerClosed { return (0, [], false, 0, .unnamed) }
            guard !nonblocking else { throw Errno.EAGAIN }
            try task.block(Wait(queues: [changed], reason: "read from a socket"))
        }
        let wanted = Buffers.totalLength(vectors)
        if !isStream {
            let message = queue[0]
            let count = Buffers.scatter(message.bytes.prefix(wanted), into: vectors)
            if !peek { dequeue(1) }
            return (count, peek ? [] : message.rights, message.bytes.count > wanted, message.bytes.count, message.sender)
        }
        if waitAll && !peek && queuedBytes < wanted && !(receiveShutdown || peerClosed) && !nonblocking
            && queue.allSatisfy({ $0.rights.isEmpty }) && queuedBytes < Self.capacity {
            try task.block(Wait(queues: [changed], reason: "read from a socket (MSG_WAITALL)"))
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
        let sender = queue.first?.sender ?? .unnamed
        if !peek {
            dequeue(consumedMessages)
            if partial > 0 {
                queue[0].bytes.removeFirst(partial)
                queue[0].rights = []
                queuedBytes -= partial
            }
        }
        return (Buffers.scatter(gathered, into: vectors), peek ? [] : rights, false, gathered.count, sender)
    }

    private func dequeue(_ count: Int) {
        guard count > 0 else { return }
        for message in queue.prefix(count) { queuedBytes -= message.bytes.count }
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
    func send(_ task: Task, _ bytes: [UInt8], rights: [OpenFile], to destination: UnixSocket? = nil,
              nonblocking: Bool, noSignal: Bool) throws(Errno) -> Int {
        if !isConnectionOriented && peer == nil {
            guard let target = destination ?? datagramDestination else {
                throw peerAddress == .unnamed ? Errno.ENOTCONN : Errno.ECONNREFUSED
            }
            return try sendDatagram(task, bytes, rights: rights, to: target, nonblocking: nonblocking)
        }
        guard isConnected else { throw Errno.ENOTCONN }
        guard !sendShutdown, let peer, !peer.receiveShutdown else { throw raiseBrokenPipe(task, noSignal: noSignal) }
        if !isStream && bytes.count > Self.capacity { throw Errno.EMSGSIZE }
        let room = Self.capacity - peer.queuedBytes
        let needed = isStream ? min(bytes.count, 1) : bytes.count
        if room < needed || (room <= 0 && !bytes.isEmpty) {
            guard !nonblocking else { throw Errno.EAGAIN }
            try task.block(Wait(queues: [peer.changed, changed], reason: "write to a socket"))
        }
        let count = isStream ? min(bytes.count, room) : bytes.count
        if count == 0 && isStream && rights.isEmpty { return 0 }
        peer.queue.append(Message(bytes: Array(bytes.prefix(count)), rights: rights, sender: localAddress ?? .unnamed))
        peer.queuedBytes += count
        peer.changed.wakeAll()
        return count
    }

    private func sendDatagram(_ task: Task, _ bytes: [UInt8], rights: [OpenFile], to target: UnixSocket,
                              nonblocking: Bool) throws(Errno) -> Int {
        guard target.binding != nil || target.peer != nil else { throw Errno.ECONNREFUSED }  // closed since
        guard !sendShutdown else { throw Errno.EPIPE }
        guard bytes.count <= Self.capacity else { throw Errno.EMSGSIZE }
        if target.queuedBytes + bytes.count > Self.capacity {
            guard !nonblocking else { throw Errno.EAGAIN }
            try task.block(Wait(queues: [target.waitingSenders], reason: "send to a unix datagram socket"))
        }
        target.queue.append(Message(bytes: bytes, rights: rights, sender: localAddress ?? .unnamed))
        target.queuedBytes += bytes.count
        target.changed.wakeAll()
        return bytes.count
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
        binding?.socket = nil  // the name stays (a socket file) but nothing answers at it any more
        binding = nil
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
    weak var socket: UnixSocket?

    init(socket: UnixSocket) { self.socket = socket }
}

/// A `sockaddr_un` as the guest passes and receives it.
enum UnixAddress: Equatable {
    /// An unbound socket: only the family is reported.
    case unnamed
    /// A filesystem name, as given to bind (getsockname reports it unchanged).
    case path(String)
    /// Linux's abstract namespace: a name starting with a NUL byte, bound to no file.
    case abstract([UInt8])

    static let family: UInt16 = 1
    /// sizeof(struct sockaddr_un).
    static let maximumLength = 110

    /// Parses a guest `sockaddr_un` of `bytes` (as long as the caller's addrlen).
    init(parsing bytes: [UInt8]) throws(Errno) {
        guard bytes.count >= 2 else { throw Errno.EINVAL }
        guard UInt16(bytes[0]) | UInt16(bytes[1]) << 8 == Self.family else { throw Errno.EINVAL }
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

    /// The `sockaddr_un` bytes the kernel reports, with their length (addrlen).
    var encoded: [UInt8] {
        var bytes: [UInt8] = [UInt8(Self.family & 0xFF), UInt8(Self.family >> 8)]
        switch self {
        case .unnamed: break
        case .path(let path): bytes += Array(path.utf8) + [0]
        case .abstract(let name): bytes += [0] + name
        }
        return bytes
    }
}
