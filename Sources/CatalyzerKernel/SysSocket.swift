import Glibc

/// Sockets: AF_UNIX inside the sandbox. socketpair, and socket(2) sockets bound to a file in /tmp
/// or an abstract name, with listen/accept/connect between the sandbox's own processes; send/recv,
/// sendmsg/recvmsg (SCM_RIGHTS), shutdown and the socket options programs query. There is no
/// network yet: socket(2) of any other family is EAFNOSUPPORT.
extension Task {
    private static let familyUnix: Int32 = 1
    private static let typeMask: Int32 = 0xF
    private static let messagePeek: Int32 = 2, messageTruncate: Int32 = 0x20, messageDontWait: Int32 = 0x40
    private static let messageWaitAll: Int32 = 0x100, messageNoSignal: Int32 = 0x4000
    private static let messageControlTruncated: Int32 = 0x8, messageCloseOnExec: Int32 = 0x4000_0000

    func sysSocket(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a.int32(0) == Self.familyUnix else { throw Errno.EAFNOSUPPORT }
        let type = a.int32(1) & Self.typeMask, flags = a.int32(1) & ~Self.typeMask
        guard [UnixSocket.streamType, UnixSocket.datagramType, UnixSocket.sequencedPacketType].contains(type),
              flags & ~(O_CLOEXEC | O_NONBLOCK) == 0 else { throw Errno.EINVAL }
        guard a.int32(2) == 0 else { throw Errno.EPROTONOSUPPORT }
        let socket = UnixSocket.unconnected(type: type)
        let file = OpenFile(backing: .special(socket), guestPath: socket.name, statusFlags: O_RDWR | (flags & O_NONBLOCK))
        return UInt64(try files.install(file, closeOnExec: flags & O_CLOEXEC != 0))
    }

    func sysSocketpair(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a.int32(0) == Self.familyUnix else { throw Errno.EAFNOSUPPORT }
        let type = a.int32(1) & Self.typeMask, flags = a.int32(1) & ~Self.typeMask
        guard [UnixSocket.streamType, UnixSocket.datagramType, UnixSocket.sequencedPacketType].contains(type),
              flags & ~(O_CLOEXEC | O_NONBLOCK) == 0 else { throw Errno.EINVAL }
        guard a.int32(2) == 0 else { throw Errno.EPROTONOSUPPORT }
        let (first, second) = UnixSocket.pair(type: type, creator: .init(pid: group.pid, uid: credentials.uid, gid: credentials.gid))
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

    private func socket(_ fd: UInt64) throws(Errno) -> (OpenFile, UnixSocket) {
        let file = try files.file(fd)
        guard case .special(let object) = file.backing, let socket = object as? UnixSocket else { throw Errno.ENOTSOCK }
        return (file, socket)
    }

    func sysSendto(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (file, socket) = try socket(a[0])
        let destination = try datagramDestination(socket, address: a[4], length: a[5])
        let bytes = try space.read(a[1], count: min(try a.length(2), UnixSocket.capacity + 1))
        let flags = a.int32(3)
        return UInt64(try socket.send(self, bytes, rights: [], to: destination, nonblocking: nonblocking(file, flags),
                                      noSignal: flags & Self.messageNoSignal != 0))
    }

    /// The socket a sendto/sendmsg address names: nil without one. A connection-oriented socket
    /// ignores the address once connected, as Linux does, and refuses it before (EOPNOTSUPP).
    private func datagramDestination(_ socket: UnixSocket, address: UInt64, length: UInt64) throws(Errno) -> UnixSocket? {
        guard address != 0 && length != 0 else { return nil }
        guard !socket.isConnectionOriented else {
            if socket.isConnected { return nil }
            throw socket.isListening ? Errno.ENOTCONN : Errno.EOPNOTSUPP
        }
        return try lookUpSocket(try readAddress(address, length: length), type: socket.type)
    }

    /// A guest `sockaddr_un` (EINVAL when it is not one).
    private func readAddress(_ address: UInt64, length: UInt64) throws(Errno) -> UnixAddress {
        guard length >= 2, length <= UInt64(UnixAddress.maximumLength) else { throw Errno.EINVAL }
        return try UnixAddress(parsing: try space.read(address, count: Int(length)))
    }

    /// The live socket of `type` bound at `name`. As on Linux, a socket file of another type is
    /// EPROTOTYPE, while an abstract name of another type is not found at all (ECONNREFUSED).
    private func lookUpSocket(_ name: UnixAddress, type: Int32) throws(Errno) -> UnixSocket {
        switch name {
        case .unnamed: throw Errno.EINVAL
        case .path(let path):
            let socket = try sandbox.filesystem.boundSocket(at: try absolutePath(path, relativeTo: AT_FDCWD))
            guard socket.type == type else { throw Errno.EPROTOTYPE }
            return socket
        case .abstract(let bytes):
            guard let socket = sandbox.abstractSockets[bytes]?.socket, socket.type == type else { throw Errno.ECONNREFUSED }
            return socket
        }
    }

    /// Writes `name` to a guest (addr, addrlen) pair as accept/getsockname do: truncated to the
    /// room the caller gave, with the full length stored back.
    private func storeAddress(_ name: UnixAddress, at address: UInt64, lengthAt lengthAddress: UInt64) throws(Errno) {
        guard address != 0 else { return }
        let room = try space.load(Int32.self, at: lengthAddress)
        guard room >= 0 else { throw Errno.EINVAL }
        let bytes = name.encoded
        try space.write(Array(bytes.prefix(Int(room))), to: address)
        try space.store(UInt32(bytes.count), at: lengthAddress)
    }

    func sysBind(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (_, socket) = try socket(a[0])
        var name = try readAddress(a[1], length: a[2])
        if name == .unnamed { name = .abstract(try autobindName()) }  // Linux's autobind
        let sandbox = sandbox
        switch name {
        case .unnamed: throw Errno.EINVAL
        case .path(let path):
            guard !path.isEmpty else { throw Errno.ENOENT }
            let absolute = try absolutePath(path, relativeTo: AT_FDCWD)
            let mode = 0o777 & ~fileCreationMask, owner = credentials
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
        try socket.listen(backlog: a.int32(1))
        socket.noteListener(self)
        return 0
    }

    func sysConnect(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (file, socket) = try socket(a[0])
        let name = try readAddress(a[1], length: a[2])
        guard name != .unnamed else { throw Errno.EINVAL }
        let target = try lookUpSocket(name, type: socket.type)
        if socket.isConnectionOriented {
            try socket.connect(self, to: target, address: name, nonblocking: file.statusFlags & O_NONBLOCK != 0)
        } else {
            try socket.connectDatagram(to: target, address: name)
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
        try storeAddress(connection.peerAddress, at: a[1], lengthAt: a[2])
        return UInt64(fd)
    }

    func sysRecvfrom(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (file, socket) = try socket(a[0])
        let flags = a.int32(3)
        let vectors = try hostBuffers([(a[1], try a.length(2))], access: .write)
        let result = try socket.receive(self, into: vectors, nonblocking: nonblocking(file, flags),
                                        peek: flags & Self.messagePeek != 0, waitAll: flags & Self.messageWaitAll != 0)
        if a[4] != 0 && a[5] != 0 { try storeAddress(result.sender, at: a[4], lengthAt: a[5]) }
        return UInt64(flags & Self.messageTruncate != 0 && !socket.isStream ? result.length : result.count)
    }

    func sysSendmsg(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (file, socket) = try socket(a[0])
        let header = try space.read(a[1], count: 56)
        func word(_ offset: Int) -> UInt64 { header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) } }
        let segments = try ioVectors(word(16), count: word(24))
        var bytes: [UInt8] = []
        for (base, length) in segments where bytes.count <= UnixSocket.capacity {
            bytes += try space.read(base, count: min(length, UnixSocket.capacity + 1 - bytes.count))
        }
        var rights: [OpenFile] = []
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
                if level == SOL_SOCKET && type == 1 {  // SCM_RIGHTS
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
        return UInt64(try socket.send(self, bytes, rights: rights, to: destination, nonblocking: nonblocking(file, flags),
                                      noSignal: flags & Self.messageNoSignal != 0))
    }

    func sysRecvmsg(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (file, socket) = try socket(a[0])
        let flags = a.int32(2)
        let header = try space.read(a[1], count: 56)
        func word(_ offset: Int) -> UInt64 { header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) } }
        let vectors = try hostBuffers(try ioVectors(word(16), count: word(24)), access: .write)
        let result = try socket.receive(self, into: vectors, nonblocking: nonblocking(file, flags),
                                        peek: flags & Self.messagePeek != 0, waitAll: flags & Self.messageWaitAll != 0)
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
        if word(0) != 0 {  // msg_name: the sender's name, within msg_namelen
            let name = result.sender.encoded
            let room = Int(UInt32(truncatingIfNeeded: word(8)))
            try space.write(Array(name.prefix(room)), to: word(0))
            try space.store(UInt32(name.count), at: a[1] + 8)
        }
        try space.store(UInt64(min(controlWritten, controlLength)), at: a[1] + 40)
        try space.store(messageFlags, at: a[1] + 48)
        return UInt64(flags & Self.messageTruncate != 0 && !socket.isStream ? result.length : result.count)
    }

    func sysShutdown(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (_, socket) = try socket(a[0])
        switch a.int32(1) {
        case 0: try socket.shutdown(read: true, write: false)
        case 1: try socket.shutdown(read: false, write: true)
        case 2: try socket.shutdown(read: true, write: true)
        default: throw Errno.EINVAL
        }
        return 0
    }

    func sysGetsockopt(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (_, socket) = try socket(a[0])
        guard a.int32(1) == SOL_SOCKET else { throw Errno.ENOPROTOOPT }
        let value: Int32
        switch a.int32(2) {
        case SO_PEERCRED:  // struct ucred
            guard try space.load(UInt32.self, at: a[4]) >= 12 else { throw Errno.EINVAL }
            let credentials = socket.peerCredentials
            try space.storeStruct((credentials.pid, credentials.uid, credentials.gid), at: a[3])
            try space.store(UInt32(12), at: a[4])
            return 0
        case SO_TYPE: value = socket.type
        case SO_ACCEPTCONN: value = socket.isListening ? 1 : 0
        case SO_ERROR: value = 0
        case SO_DOMAIN: value = Self.familyUnix
        case SO_PROTOCOL: value = 0
        case SO_RCVBUF, SO_SNDBUF: value = Int32(UnixSocket.capacity)
        case SO_PASSCRED, SO_KEEPALIVE, SO_REUSEADDR, SO_BROADCAST: value = 0
        default: throw Errno.ENOPROTOOPT
        }
        guard try space.load(UInt32.self, at: a[4]) >= 4 else { throw Errno.EINVAL }
        try space.store(value, at: a[3])
        try space.store(UInt32(4), at: a[4])
        return 0
    }

    /// Options are accepted and have no effect (buffer sizes, credentials passing, timeouts).
    func sysSetsockopt(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        _ = try socket(a[0])
        return 0
    }

    func sysGetsockname(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (_, socket) = try socket(a[0])
        try storeAddress(socket.localAddress ?? .unnamed, at: a[1], lengthAt: a[2])
        return 0
    }

    func sysGetpeername(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (_, socket) = try socket(a[0])
        guard socket.isConnected else { throw Errno.ENOTCONN }
        try storeAddress(socket.peerAddress, at: a[1], lengthAt: a[2])
        return 0
    }

    private func nonblocking(_ file: OpenFile, _ flags: Int32) -> Bool {
        file.statusFlags & O_NONBLOCK != 0 || flags & Self.messageDontWait != 0
    }
}
