import CKVM
import Glibc

/// File I/O syscalls: open, close (and close_range), read and write in their variants, lseek, stat, ioctl, fcntl, dup.
extension Task {
    /// Upper bound on bytes moved by one read/write call; larger requests complete partially, as
    /// Linux allows, so one call never pins unbounded monitor memory.
    static let maximumTransfer = 16 << 20

    func sysOpen(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try openFile(dirfd: AT_FDCWD, pathAddress: a[0], flags: a.int32(1), mode: a.uint32(2))
    }

    func sysOpenat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try openFile(dirfd: a.int32(0), pathAddress: a[1], flags: a.int32(2), mode: a.uint32(3))
    }

    private func openFile(dirfd: Int32, pathAddress: UInt64, flags: Int32, mode: UInt32) throws(Errno) -> UInt64 {
        let path = try space.readCString(pathAddress)
        guard !path.isEmpty else { throw Errno.ENOENT }
        let file = try filesystem.open(try absolutePath(path, relativeTo: dirfd), flags: flags,
                                       mode: mode & ~fileCreationMask, owner: credentials.fileOwner)
        return UInt64(try files.install(file, closeOnExec: flags & O_CLOEXEC != 0))
    }

    func sysClose(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        if let file = try? files.file(a.int32(0)) { releasePOSIXLocks(file) }
        try files.close(a.int32(0))
        return 0
    }

    /// close_range(2). CLOSE_RANGE_UNSHARE needs nothing: each process has its own fd table.
    func sysCloseRange(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let unshare: UInt32 = 2, closeOnExec: UInt32 = 4
        let first = a.uint32(0), last = a.uint32(1), flags = a.uint32(2)
        guard flags & ~(unshare | closeOnExec) == 0, first <= last else { throw Errno.EINVAL }
        guard first < UInt32(FileTable.limit) else { return 0 }
        files.closeRange(Int32(first), Int32(min(last, UInt32(FileTable.limit - 1))), markCloseOnExec: flags & closeOnExec != 0)
        return 0
    }

    func sysRead(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a[0])
        return UInt64(try read(file, into: [(a[1], try a.length(2))], at: nil))
    }

    func sysPread(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a[0])
        guard a.signed(3) >= 0 else { throw Errno.EINVAL }
        return UInt64(try read(file, into: [(a[1], try a.length(2))], at: a.signed(3)))
    }

    func sysReadv(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a[0])
        return UInt64(try read(file, into: try ioVectors(a[1], count: a[2]), at: nil))
    }

    func sysWrite(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a[0])
        defer { noteOutput(to: file) }
        return UInt64(try write(file, from: [(a[1], try a.length(2))], at: nil))
    }

    func sysPwrite(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a[0])
        guard a.signed(3) >= 0 else { throw Errno.EINVAL }
        return UInt64(try write(file, from: [(a[1], try a.length(2))], at: a.signed(3)))
    }

    func sysWritev(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a[0])
        defer { noteOutput(to: file) }
        return UInt64(try write(file, from: try ioVectors(a[1], count: a[2]), at: nil))
    }

    /// Records the first write to stdout: for a function, its first response.
    private func noteOutput(to file: OpenFile) {
        if file.standardStream == 1 && milestones.firstStandardOutput == nil {
            milestones.firstStandardOutput = Sandbox.monotonicNanoseconds()
        }
    }

    /// Reads a guest `struct iovec` array.
    func ioVectors(_ address: UInt64, count: UInt64) throws(Errno) -> [(UInt64, Int)] {
        guard count <= 1024 else { throw Errno.EINVAL }
        let bytes = try space.read(address, count: Int(count) * 16)
        return (0..<Int(count)).map { index in
            let base = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: index * 16, as: UInt64.self) }
            let length = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: index * 16 + 8, as: UInt64.self) }
            return (base, Int(clamping: min(length, UInt64(Self.maximumTransfer))))
        }
    }

    /// Host buffers behind guest segments, trimmed to `maximumTransfer` bytes in total.
    func hostBuffers(_ segments: [(UInt64, Int)], access: AddressSpace.Access) throws(Errno) -> [iovec] {
        var remaining = Self.maximumTransfer
        var vectors: [iovec] = []
        for (address, length) in segments where remaining > 0 && length > 0 {
            let take = min(length, remaining)
            for buffer in try space.hostBuffers(address, length: take, access: access) {
                vectors.append(iovec(iov_base: buffer.baseAddress, iov_len: buffer.count))
            }
            remaining -= take
        }
        return vectors
    }

    /// Reads into guest memory; `access` is `.loader` when filling a private file mapping, whose
    /// pages may be read-only to the program.
    func read(_ file: OpenFile, into segments: [(UInt64, Int)], at offset: Int64?,
              access: AddressSpace.Access = .write) throws(Errno) -> Int {
        guard file.isReadable else { throw Errno.EBADF }
        return try read(file, into: try hostBuffers(segments, access: access), at: offset)
    }

    func write(_ file: OpenFile, from segments: [(UInt64, Int)], at offset: Int64?) throws(Errno) -> Int {
        guard file.isWritable else { throw Errno.EBADF }
        return try write(file, from: try hostBuffers(segments, access: .read), at: offset)
    }

    /// Reads into host buffers (guest memory already translated, or a bounce buffer).
    func read(_ file: OpenFile, into vectors: [iovec], at offset: Int64?) throws(Errno) -> Int {
        guard !vectors.isEmpty else { return 0 }
        switch file.backing {
        case .host(let fd, _):
            try waitUntilHostReady(file, fd: fd, events: Int16(POLLIN), action: "read from")
            return try retryingHostCall {
                vectors.withUnsafeBufferPointer { buffer in
                    // At most IOV_MAX buffers per host call (scattered guest pages): a short read.
                    offset.map { preadv(fd, buffer.baseAddress, Int32(min(buffer.count, Self.maximumIOVectors)), off_t($0)) }
                        ?? readv(fd, buffer.baseAddress, Int32(min(buffer.count, Self.maximumIOVectors)))
                }
            }
        case .memory(let node):
            guard !node.isDirectory else { throw Errno.EISDIR }
            guard !node.isSymlink else { throw Errno.EBADF }  // an O_PATH descriptor
            let total = node.readFile(into: vectors, at: offset.map(Int.init) ?? file.position)
            if offset == nil { file.position += total }
            node.noteAccessed()
            return total
        case .pipe(let pipe):
            guard offset == nil else { throw Errno.ESPIPE }
            if pipe.isEmpty {
                guard pipe.hasWriter else { return 0 }  // end of file
                guard file.statusFlags & O_NONBLOCK == 0 else { throw Errno.EAGAIN }
                try block(Wait(queues: [pipe.changed], reason: "read from \(file.guestPath)"))
            }
            return vectors.reduce(0) { total, vector in
                total + pipe.read(into: UnsafeMutableRawBufferPointer(start: vector.iov_base, count: vector.iov_len))
            }
        default:
            return try readSpecial(file, into: vectors)
        }
    }

    /// Parks the task until a host stream (a pipe or terminal behind stdio) is ready, so a wait
    /// for the invoker never stalls the sandbox's other tasks. Regular files are always ready.
    private func waitUntilHostReady(_ file: OpenFile, fd: Int32, events: Int16, action: String) throws(Errno) {
        guard file.isHostStream else { return }
        var entry = pollfd(fd: fd, events: events, revents: 0)
        guard Glibc.poll(&entry, 1, 0) == 0 else { return }
        guard file.statusFlags & O_NONBLOCK == 0 else { throw Errno.EAGAIN }
        try block(Wait(hostDescriptors: [pollfd(fd: fd, events: events, revents: 0)],
                       reason: "\(action) \(file.standardStream.map { ["stdin", "stdout", "stderr"][Int($0)] } ?? file.guestPath)"))
    }

    func write(_ file: OpenFile, from vectors: [iovec], at offset: Int64?) throws(Errno) -> Int {
        guard !vectors.isEmpty else { return 0 }
        switch file.backing {
        case .host(let fd, _):
            if file.discardsWrites { return Buffers.totalLength(vectors) }
            try waitUntilHostReady(file, fd: fd, events: Int16(POLLOUT), action: "write to")
            return try retryingHostCall {
                vectors.withUnsafeBufferPointer { buffer in
                    offset.map { pwritev(fd, buffer.baseAddress, Int32(min(buffer.count, Self.maximumIOVectors)), off_t($0)) }
                        ?? writev(fd, buffer.baseAddress, Int32(min(buffer.count, Self.maximumIOVectors)))
                }
            }
        case .memory(let node):
            guard !node.isDirectory else { throw Errno.EISDIR }
            guard !node.isSymlink else { throw Errno.EBADF }  // an O_PATH descriptor
            let size = node.size
            let position = offset.map(Int.init) ?? (file.statusFlags & O_APPEND != 0 ? size : file.position)
            let length = vectors.reduce(0) { $0 + $1.iov_len }
            guard position <= Int.max - length else { throw Errno.EFBIG }
            try filesystem.tmp.charge(max(0, position + length - size), for: node)
            let total: Int
            do throws(Errno) {
                total = try node.writeFile(from: vectors, at: position)
            } catch {
                try? filesystem.tmp.charge(-max(0, position + length - size), for: node)
                throw error
            }
            if offset == nil { file.position = position + total }
            node.noteModified()
            return total
        case .pipe(let pipe):
            guard offset == nil else { throw Errno.ESPIPE }
            guard pipe.hasReader else {
                var info = SignalInformation(signal: SIGPIPE)
                info.code = SignalInformation.kernelCode
                sandbox.send(info, toTask: self)
                throw Errno.EPIPE
            }
            let length = vectors.reduce(0) { $0 + $1.iov_len }
            // Writes up to PIPE_BUF go in whole; a larger blocking write goes in pieces as room
            // appears, the bytes already written kept in `transferred` across the waits.
            let needed = length <= Pipe.atomicWriteSize ? length : 1
            // An empty pipe that cannot get a page: the sandbox's memory is used up.
            if pipe.isOutOfMemory { if transferred > 0 { return transferred } else { throw Errno.ENOMEM } }
            if pipe.room < needed {
                guard file.statusFlags & O_NONBLOCK == 0 else {
                    if transferred > 0 { return transferred }
                    throw Errno.EAGAIN
                }
                try blockKeepingProgress(Wait(queues: [pipe.changed], reason: "write to \(file.guestPath)"))
            }
            var skip = transferred
            for vector in vectors {
                if skip >= vector.iov_len {
                    skip -= vector.iov_len
                    continue
                }
                let count = vector.iov_len - skip
                let written = pipe.write(UnsafeRawBufferPointer(start: vector.iov_base! + skip, count: count))
                skip = 0
                transferred += written
                if written < count { break }
            }
            if transferred < length && file.statusFlags & O_NONBLOCK == 0 {
                try blockKeepingProgress(Wait(queues: [pipe.changed], reason: "write to \(file.guestPath)"))
            }
            return transferred
        default:
            return try writeSpecial(file, from: vectors)
        }
    }

    /// Runs a blocking host call for the guest; EINTR is retried unless the sandbox is being stopped.
    func retryingHostCall(_ call: () -> Int) throws(Errno) -> Int {
        while true {
            let result = call()
            if result >= 0 { return result }
            if errno == EINTR && !exitRequester.isExitRequested { continue }
            throw Errno.lastHostError
        }
    }

    func sysLseek(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a[0])
        let offset = a.signed(1), whence = a.int32(2)
        switch file.backing {
        case .host(let fd, _):
            let result = lseek(fd, off_t(offset), whence)
            guard result >= 0 else { throw Errno.lastHostError }
            return UInt64(result)
        case .pipe, .special:
            throw Errno.ESPIPE
        case .memory(let node):
            let base: Int64
            switch whence {
            case SEEK_SET: base = 0
            case SEEK_CUR: base = Int64(file.position)
            case SEEK_END: base = Int64(node.size)
            default: throw Errno.EINVAL
            }
            let (position, overflow) = base.addingReportingOverflow(offset)
            guard !overflow, position >= 0 else { throw Errno.EINVAL }
            file.position = Int(position)
            return UInt64(position)
        }
    }

    func sysFstat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try space.storeStruct(try status(of: try files.file(a[0])), at: a[1])
        return 0
    }

    func sysStat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try statPath(dirfd: AT_FDCWD, pathAddress: a[0], buffer: a[1], flags: 0)
    }

    func sysLstat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try statPath(dirfd: AT_FDCWD, pathAddress: a[0], buffer: a[1], flags: AT_SYMLINK_NOFOLLOW)
    }

    func sysNewfstatat(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try statPath(dirfd: a.int32(0), pathAddress: a[1], buffer: a[2], flags: a.int32(3))
    }

    private func statPath(dirfd: Int32, pathAddress: UInt64, buffer: UInt64, flags: Int32) throws(Errno) -> UInt64 {
        try space.storeStruct(try status(dirfd: dirfd, pathAddress: pathAddress, flags: flags), at: buffer)
        return 0
    }

    /// The `*at` lookup shared by newfstatat and statx (AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW).
    func status(dirfd: Int32, pathAddress: UInt64, flags: Int32) throws(Errno) -> stat {
        let path = try space.readCString(pathAddress)
        if path.isEmpty {
            guard flags & AT_EMPTY_PATH != 0 else { throw Errno.ENOENT }
            return dirfd == AT_FDCWD
                ? try filesystem.status(workingDirectory, followSymlinks: true)
                : try status(of: try files.file(dirfd))
        }
        return try filesystem.status(try absolutePath(path, relativeTo: dirfd),
                                     followSymlinks: flags & AT_SYMLINK_NOFOLLOW == 0)
    }

    /// statx(2): the same attributes as stat, in `struct statx` (no birth time).
    func sysStatx(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let result = try status(dirfd: a.int32(0), pathAddress: a[1], flags: a.int32(2))
        var bytes = [UInt8](repeating: 0, count: 256)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<offset + $0.count, with: $0) }
        }
        func device(_ dev: UInt) -> (UInt32, UInt32) {
            (UInt32(truncatingIfNeeded: ((dev >> 8) & 0xFFF) | ((dev >> 32) & ~0xFFF)),
             UInt32(truncatingIfNeeded: (dev & 0xFF) | ((dev >> 12) & ~0xFF)))
        }
        put(UInt32(0x7FF), 0)  // STATX_BASIC_STATS
        put(UInt32(truncatingIfNeeded: result.st_blksize), 4)
        put(UInt32(truncatingIfNeeded: result.st_nlink), 16)
        put(result.st_uid, 20)
        put(result.st_gid, 24)
        put(UInt16(truncatingIfNeeded: result.st_mode), 28)
        put(UInt64(result.st_ino), 32)
        put(Int64(result.st_size), 40)
        put(Int64(result.st_blocks), 48)
        for (time, offset) in [(result.st_atim, 64), (result.st_ctim, 96), (result.st_mtim, 112)] {
            put(Int64(time.tv_sec), offset)
            put(UInt32(truncatingIfNeeded: time.tv_nsec), offset + 8)
        }
        let (rdevMajor, rdevMinor) = device(result.st_rdev), (devMajor, devMinor) = device(result.st_dev)
        put(rdevMajor, 128)
        put(rdevMinor, 132)
        put(devMajor, 136)
        put(devMinor, 140)
        try space.write(bytes, to: a[4])
        return 0
    }

    func status(of file: OpenFile) throws(Errno) -> stat {
        switch file.backing {
        case .host(let fd, _):
            var result = stat()
            guard fstat(fd, &result) == 0 else { throw Errno.lastHostError }
            return result
        case .memory(let node):
            return node.status(device: MemoryFilesystem.device)
        case .pipe(let pipe):
            var result = stat()
            result.st_mode = S_IFIFO | 0o600
            result.st_nlink = 1
            result.st_ino = UInt(pipe.inode)
            result.st_blksize = 4096
            return result
        case .special(let object):
            var result = stat()
            result.st_mode = object.fileType | 0o600
            result.st_nlink = 1
            result.st_ino = UInt(bitPattern: ObjectIdentifier(object).hashValue)
            result.st_blksize = 4096
            return result
        }
    }

    func sysIoctl(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a[0])
        let request = UInt(truncatingIfNeeded: a[1])
        if let result = try fileIoctl(file, fd: a.int32(0), request: request, argument: a[2]) { return result }
        guard case .host(let fd, _) = file.backing, isatty(fd) == 1 else { throw Errno.ENOTTY }
        return try terminalIoctl(hostFD: fd, request: request, argument: a[2])
    }

    /// A terminal's requests, on a host terminal the sandbox was given as stdio (the user's, or
    /// a container's pty). Only these pass to the host: reading and setting the line discipline's
    /// modes and the window size, and flushing. Requests that would reach beyond the terminal's
    /// own settings (TIOCSTI pushing input the host's shell would read, TIOCCONS, modem lines)
    /// are ENOTTY. Job control stays inside the sandbox: the foreground group is the caller's
    /// own and setting it is accepted, as the sandbox's processes share the terminal alone.
    private func terminalIoctl(hostFD fd: Int32, request: UInt, argument: UInt64) throws(Errno) -> UInt64 {
        // Request → (bytes the guest passes in, bytes it gets back): kernel struct termios is 36.
        let passed: [UInt: (input: Int, output: Int)] = [
            0x5401: (0, 36),   // TCGETS
            0x5402: (36, 0),   // TCSETS
            0x5403: (36, 0),   // TCSETSW
            0x5404: (36, 0),   // TCSETSF
            0x5413: (0, 8),    // TIOCGWINSZ
            0x5414: (8, 0),    // TIOCSWINSZ
        ]
        switch request {
        case 0x540F:  // TIOCGPGRP
            try space.store(group.pid, at: argument)
            return 0
        case 0x5410:  // TIOCSPGRP
            _ = try space.load(Int32.self, at: argument)
            return 0
        case 0x5429:  // TIOCGSID
            try space.store(sandbox.initialGroup.pid, at: argument)
            return 0
        case 0x540E, 0x5422:  // TIOCSCTTY, TIOCNOTTY
            return 0
        case 0x540B, 0x5409:  // TCFLSH, TCSBRK (tcdrain when the argument is nonzero): a value, not a pointer
            guard Glibc.ioctl(fd, request, CInt(truncatingIfNeeded: argument)) == 0 else { throw Errno.lastHostError }
            return 0
        default:
            break
        }
        guard let sizes = passed[request] else { throw Errno.ENOTTY }
        var buffer = [UInt8](repeating: 0, count: 64)
        if sizes.input > 0 { buffer.replaceSubrange(0..<sizes.input, with: try space.read(argument, count: sizes.input)) }
        let result = buffer.withUnsafeMutableBytes { Glibc.ioctl(fd, request, $0.baseAddress!) }
        guard result == 0 else { throw Errno.lastHostError }
        if sizes.output > 0 { try space.write(Array(buffer.prefix(sizes.output)), to: argument) }
        return 0
    }

    func sysFcntl(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let fd = a.int32(0)
        let file = try files.file(fd)
        switch a.int32(1) {
        case F_DUPFD, F_DUPFD_CLOEXEC:
            guard a.int32(2) >= 0 else { throw Errno.EINVAL }
            return UInt64(try files.install(file, minimum: a.int32(2), closeOnExec: a.int32(1) == F_DUPFD_CLOEXEC))
        case F_GETFD:
            return files.closeOnExec(fd) ? UInt64(FD_CLOEXEC) : 0
        case F_SETFD:
            try files.setCloseOnExec(fd, a.int32(2) & FD_CLOEXEC != 0)
            return 0
        case F_GETFL:
            return UInt64(UInt32(bitPattern: file.statusFlags))
        case F_SETFL:
            let changeable = O_APPEND | O_NONBLOCK
            file.statusFlags = (file.statusFlags & ~changeable) | (a.int32(2) & changeable)
            return 0
        case let command where Self.lockCommands.contains(command):
            return try recordLock(file, command: command, address: a[2])
        case Self.setPipeSize, Self.getPipeSize:
            return try pipeSize(file, set: a.int32(1) == Self.setPipeSize ? a.int32(2) : nil)
        default:
            throw Errno.EINVAL
        }
    }

    private static let setPipeSize: Int32 = 1031, getPipeSize: Int32 = 1032

    /// F_GETPIPE_SZ, and F_SETPIPE_SZ up to `Pipe.maximumCapacity` (Linux's pipe-max-size; EPERM
    /// beyond, as for an unprivileged caller, so a guest cannot make the host buffer more). A
    /// host pipe (the sandbox's stdio) reports its size and is resized within the same bound.
    private func pipeSize(_ file: OpenFile, set requested: Int32?) throws(Errno) -> UInt64 {
        switch file.backing {
        case .pipe(let pipe):
            guard let requested else { return UInt64(pipe.capacity) }
            guard requested >= 0 else { throw Errno.EINVAL }
            guard Int(requested) <= Pipe.maximumCapacity else { throw Errno.EPERM }
            guard let size = pipe.resize(to: Int(requested)) else { throw Errno.EBUSY }
            return UInt64(size)
        case .host(let fd, _):
            var status = stat()
            guard fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFIFO else { throw Errno.EBADF }
            if let requested {
                guard requested >= 0 else { throw Errno.EINVAL }
                guard Int(requested) <= Pipe.maximumCapacity else { throw Errno.EPERM }
                let result = fcntl(fd, Self.setPipeSize, requested)
                guard result >= 0 else { throw Errno.lastHostError }
                return UInt64(result)
            }
            let result = fcntl(fd, Self.getPipeSize)
            guard result >= 0 else { throw Errno.lastHostError }
            return UInt64(result)
        case .memory, .special:
            throw Errno.EBADF
        }
    }

    func sysDup(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        UInt64(try files.install(try files.file(a.int32(0))))
    }

    func sysDup2(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a.int32(0))
        if a.int32(0) != a.int32(1) { try files.install(file, at: a.int32(1), closeOnExec: false) }
        return UInt64(a.int32(1))
    }

    func sysDup3(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a.int32(0) != a.int32(1), a.int32(2) & ~O_CLOEXEC == 0 else { throw Errno.EINVAL }
        try files.install(try files.file(a.int32(0)), at: a.int32(1), closeOnExec: a.int32(2) & O_CLOEXEC != 0)
        return UInt64(a.int32(1))
    }

    func sysSendfile(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let output = try files.file(a.int32(0)), input = try files.file(a.int32(1))
        return try copyBytes(from: input, offsetAt: a[2], to: output, offsetAt: 0, count: try a.length(3))
    }

    /// Bytes one sendfile, splice or copy_file_range call moves at most (a short count is allowed).
    static let maximumCopy = 1 << 20

    /// sendfile, splice and copy_file_range: moves up to `count` bytes from `input` to `output`
    /// through a monitor buffer. A guest `loff_t` at a nonzero `offsetAt` address gives that
    /// side's position (and is advanced); otherwise the file's own position moves. A pipe
    /// destination is waited for before anything is read, and at most its room is read, so a
    /// wait never drops bytes already taken from the input.
    func copyBytes(from input: OpenFile, offsetAt inputAddress: UInt64, to output: OpenFile, offsetAt outputAddress: UInt64,
                   count requested: Int) throws(Errno) -> UInt64 {
        guard output.isWritable, input.isReadable else { throw Errno.EBADF }
        let inputOffset: Int64? = inputAddress == 0 ? nil : try space.load(Int64.self, at: inputAddress)
        let outputOffset: Int64? = outputAddress == 0 ? nil : try space.load(Int64.self, at: outputAddress)
        if (inputOffset ?? 0) < 0 || (outputOffset ?? 0) < 0 { throw Errno.EINVAL }
        var count = min(requested, Self.maximumCopy)
        if case .pipe(let pipe) = output.backing, pipe.hasReader {
            if pipe.isOutOfMemory && count > 0 { throw Errno.ENOMEM }
            if pipe.room == 0 && count > 0 {
                guard output.statusFlags & O_NONBLOCK == 0 else { throw Errno.EAGAIN }
                try block(Wait(queues: [pipe.changed], reason: "write to \(output.guestPath)"))
            }
            count = min(count, pipe.room)
        }
        if case .special(let object) = output.backing,
           let room = try object.waitForWriteRoom(self, nonblocking: output.statusFlags & O_NONBLOCK != 0) {
            count = min(count, room)
        }
        guard count > 0 else { return 0 }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
        defer { buffer.deallocate() }
        let got = try read(input, into: [iovec(iov_base: buffer.baseAddress, iov_len: count)], at: inputOffset)
        var written = 0
        while written < got {
            let position = outputOffset.map { $0 + Int64(written) }
            written += try write(output, from: [iovec(iov_base: buffer.baseAddress! + written, iov_len: got - written)], at: position)
        }
        if let inputOffset { try space.store(inputOffset + Int64(got), at: inputAddress) }
        if let outputOffset { try space.store(outputOffset + Int64(got), at: outputAddress) }
        return UInt64(got)
    }
}
