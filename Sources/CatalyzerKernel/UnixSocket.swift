import Glibc

/// One end of an AF_UNIX socket pair inside the sandbox (socketpair(2)). Each end has a receive
/// queue of messages; the peer's writes append to it. Stream sockets read across message
/// boundaries (stopping before one that carries fds); datagram and seqpacket sockets read one
/// message per call. The queue holds up to `capacity` bytes; writers wait for room.
final class UnixSocket: SpecialFile {
    struct Message {
        var bytes: [UInt8]
        /// Open file descriptions passed with SCM_RIGHTS, installed in the receiver on recvmsg.
        var rights: [OpenFile]
    }

    static let streamType: Int32 = 1, datagramType: Int32 = 2, sequencedPacketType: Int32 = 5
    /// Linux's default socket buffer (net.core.rmem_default).
    static let capacity = 212_992

    let type: Int32
    /// The other end; nil once either end is closed (then reads see end-of-file, writes EPIPE).
    /// The two ends refer to each other until one's last description closes, which cuts both links.
    private(set) var peer: UnixSocket?
    private var queue: [Message] = []
    private var queuedBytes = 0
    /// shutdown(SHUT_RD) here, or SHUT_WR by the peer: no more data will arrive.
    private(set) var receiveShutdown = false
    /// shutdown(SHUT_WR) here: no more writes.
    private(set) var sendShutdown = false
    private(set) var peerClosed = false
    let changed = WaitQueue()

    /// Whether it was created connected (socketpair); a socket(2) socket never connects here.
    let isConnected: Bool

    private init(type: Int32, connected: Bool) {
        self.type = type
        isConnected = connected
    }

    /// socket(AF_UNIX): a socket that can be created, queried and closed; binding and connecting
    /// it are not supported yet (EOPNOTSUPP), so sending and receiving give ENOTCONN.
    static func unconnected(type: Int32) -> UnixSocket { UnixSocket(type: type, connected: false) }

    static func pair(type: Int32) -> (UnixSocket, UnixSocket) {
        let first = UnixSocket(type: type, connected: true), second = UnixSocket(type: type, connected: true)
        first.peer = second
        second.peer = first
        return (first, second)
    }

    /// FIONREAD: bytes waiting (a stream's total, a datagram socket's next message).
    var bytesReadable: Int { isStream ? queuedBytes : queue.first?.bytes.count ?? 0 }

    var name: String { "socket:[\(UInt(bitPattern: ObjectIdentifier(self).hashValue) & 0xFFFFFF)]" }
    var fileType: mode_t { S_IFSOCK }
    var isStream: Bool { type == Self.streamType }

    func readiness() -> Int16 {
        guard isConnected else { return Int16(POLLOUT | POLLHUP) }  // Linux's answer for an unconnected socket
        var ready: Int16 = 0
        if !queue.isEmpty || receiveShutdown || peerClosed { ready |= Int16(POLLIN | POLLRDNORM) }
        if receiveShutdown || peerClosed { ready |= 0x2000 }  // POLLRDHUP
        if let peer, !sendShutdown, peer.queuedBytes < Self.capacity { ready |= Int16(POLLOUT | POLLWRNORM) }
        if peerClosed || (sendShutdown && receiveShutdown) { ready |= Int16(POLLHUP) }
        if peer == nil { ready |= Int16(POLLOUT | POLLWRNORM) }  // a write fails at once (EPIPE)
        return ready
    }

    /// Receives into `vectors`: bytes read, fds passed, whether a datagram was truncated, and its
    /// full length. `peek` leaves the data queued.
    func receive(_ task: Task, into vectors: [iovec], nonblocking: Bool, peek: Bool,
                 waitAll: Bool) throws(Errno) -> (count: Int, rights: [OpenFile], truncated: Bool, length: Int) {
        guard isConnected else { throw Errno.ENOTCONN }
        if queue.isEmpty {
            if receiveShutdown || peerClosed { return (0, [], false, 0) }
            guard !nonblocking else { throw Errno.EAGAIN }
            try task.block(Wait(queues: [changed], reason: "read from a socket"))
        }
        let wanted = Buffers.totalLength(vectors)
        if !isStream {
            let message = queue[0]
            let count = Buffers.scatter(message.bytes.prefix(wanted), into: vectors)
            if !peek { dequeue(1) }
            return (count, peek ? [] : message.rights, message.bytes.count > wanted, message.bytes.count)
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
        if !peek {
            dequeue(consumedMessages)
            if partial > 0 {
                queue[0].bytes.removeFirst(partial)
                queue[0].rights = []
                queuedBytes -= partial
            }
        }
        return (Buffers.scatter(gathered, into: vectors), peek ? [] : rights, false, gathered.count)
    }

    private func dequeue(_ count: Int) {
        guard count > 0 else { return }
        for message in queue.prefix(count) { queuedBytes -= message.bytes.count }
        queue.removeFirst(count)
        changed.wakeAll()
        peer?.changed.wakeAll()  // the peer may now write
    }

    /// Sends `bytes` (with `rights`) to the peer.
    func send(_ task: Task, _ bytes: [UInt8], rights: [OpenFile], nonblocking: Bool, noSignal: Bool) throws(Errno) -> Int {
        guard isConnected else { throw Errno.ENOTCONN }
        guard !sendShutdown, let peer, !peer.receiveShutdown else {
            if !noSignal {
                var info = SignalInformation(signal: SIGPIPE)
                info.code = SignalInformation.kernelCode
                task.sandbox.send(info, toTask: task)
            }
            throw Errno.EPIPE
        }
        if !isStream && bytes.count > Self.capacity { throw Errno.EMSGSIZE }
        let room = Self.capacity - peer.queuedBytes
        let needed = isStream ? min(bytes.count, 1) : bytes.count
        if room < needed || (room <= 0 && !bytes.isEmpty) {
            guard !nonblocking else { throw Errno.EAGAIN }
            try task.block(Wait(queues: [peer.changed, changed], reason: "write to a socket"))
        }
        let count = isStream ? min(bytes.count, room) : bytes.count
        if count == 0 && isStream && rights.isEmpty { return 0 }
        peer.queue.append(Message(bytes: Array(bytes.prefix(count)), rights: rights))
        peer.queuedBytes += count
        peer.changed.wakeAll()
        return count
    }

    func shutdown(read: Bool, write: Bool) {
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
        if let peer {
            peer.peerClosed = true
            peer.peer = nil
            peer.changed.wakeAll()
        }
        peer = nil
        changed.wakeAll()
    }
}
