import Glibc

/// An open file description: what an fd refers to, shared by `dup`ed fds.
final class OpenFile {
    enum Backing {
        /// A host fd: a rootfs file or directory opened read-only, or one of the sandbox's stdio
        /// streams. `owned` fds are closed when the description goes away.
        case host(fd: Int32, owned: Bool)
        case memory(MemoryNode)
        /// One end of a pipe; which end is given by the access mode in `statusFlags`.
        case pipe(Pipe)
        /// An object the monitor serves: eventfd, timerfd, a socket, an epoll instance.
        case special(SpecialFile)
    }

    /// What the description refers to. A restored rootfs file or device holds a closed
    /// placeholder here until `reconnectIfNeeded()` reopens it; `FileTable.file(_:)`, the way every
    /// syscall reaches a file, does that first.
    private(set) var backing: Backing
    /// The guest path it was opened by (for `*at` lookups relative to a directory fd, and fchdir).
    let guestPath: String
    /// `O_ACCMODE`, `O_APPEND`, `O_NONBLOCK` and the like, as given to open or F_SETFL.
    var statusFlags: Int32
    /// Position in a memory file, or index of the next entry of a memory directory.
    var position = 0
    /// 0, 1 or 2 for the sandbox's stdin, stdout and stderr: a restore binds these to the
    /// invocation's streams.
    let standardStream: Int32?
    /// How to reopen a restored host file on first use (on-demand I/O reconnection): restoring
    /// does no file I/O, and files the program never touches again are never reopened.
    private(set) var reconnection: Reconnection?

    struct Reconnection {
        enum Target {
            case rootfs(path: String, offset: Int64)
            case hostDevice(path: String)
        }
        let target: Target
        let filesystem: Filesystem
    }

    init(backing: Backing, guestPath: String, statusFlags: Int32, standardStream: Int32? = nil) {
        self.backing = backing
        self.guestPath = guestPath
        self.statusFlags = statusFlags
        self.standardStream = standardStream
    }

    /// Puts `object` behind this description in place of the socket it was (a guest socket that
    /// leaves the sandbox becomes a `HostSocket`): every fd sharing the description sees it.
    func replaceSpecial(with object: SpecialFile) {
        guard case .special = backing else { return }
        backing = .special(object)
    }

    /// A restored host file, reopened when first used.
    init(reconnecting reconnection: Reconnection, guestPath: String, statusFlags: Int32) {
        backing = .host(fd: -1, owned: false)
        self.guestPath = guestPath
        self.statusFlags = statusFlags
        self.standardStream = nil
        self.reconnection = reconnection
    }

    /// Reopens a restored host file at its checkpointed offset. Fails with EIO if it cannot be
    /// reopened (the rootfs fingerprint makes that unlikely): the program sees an I/O error on
    /// that fd, as it would if the file's device went away.
    func reconnectIfNeeded() throws(Errno) {
        guard let reconnection else { return }
        let fd: Int32
        do throws(Errno) {
            switch reconnection.target {
            case .rootfs(let path, let offset):
                fd = try reconnection.filesystem.openHost(path, flags: O_RDONLY | (statusFlags & Filesystem.rootfsOpenFlags))
                if offset > 0 && lseek(fd, off_t(offset), SEEK_SET) < 0 {
                    close(fd)
                    throw Errno.lastHostError
                }
            case .hostDevice(let path):
                fd = Filesystem.openDevice(path, flags: statusFlags)
                guard fd >= 0 else { throw Errno.lastHostError }
            }
        } catch {
            throw Errno.EIO
        }
        backing = .host(fd: fd, owned: true)
        self.reconnection = nil
    }

    deinit {
        switch backing {
        case .host(let fd, true): close(fd)
        case .pipe(let pipe): pipe.close(writeEnd: isWritable)
        case .special(let object): object.lastDescriptionClosed()
        default: break
        }
    }

    /// Whether this is a host pipe, terminal or socket (stdio), whose reads and writes can block;
    /// host regular files and directories never do. Asked once per description.
    var isHostStream: Bool {
        if let cached = hostStream { return cached }
        guard case .host(let fd, _) = backing else { return false }
        var status = stat()
        let kind = fstat(fd, &status) == 0 ? status.st_mode & S_IFMT : S_IFREG
        let stream = kind == S_IFIFO || kind == S_IFSOCK || kind == S_IFCHR
        hostStream = stream
        return stream
    }
    private var hostStream: Bool?

    /// /dev/random or /dev/urandom: writes are accepted and dropped by the monitor (the host
    /// fd is read-only), as the guest must not feed the host's entropy pool.
    var discardsWrites: Bool {
        if case .host = backing { return Filesystem.isRandomDevice(guestPath) }
        return false
    }

    var isReadable: Bool { statusFlags & O_ACCMODE != O_WRONLY }
    var isWritable: Bool { statusFlags & O_ACCMODE != O_RDONLY }

    var isDirectory: Bool {
        switch backing {
        case .memory(let node): return node.isDirectory
        case .pipe, .special: return false
        case .host(let fd, _):
            var status = stat()
            return fstat(fd, &status) == 0 && status.st_mode & S_IFMT == S_IFDIR
        }
    }
}

/// The process's fd table: small integers to open file descriptions, plus close-on-exec bits.
final class FileTable {
    static let limit: Int32 = 1024
    private var entries: [Int32: (file: OpenFile, closeOnExec: Bool)] = [:]

    init() {}

    /// A child's table: the same open file descriptions under the same numbers (fork).
    init(copying other: FileTable) {
        entries = other.entries
    }

    /// The sandbox's stdin, stdout and stderr as fds 0-2; a closed host stream stays closed.
    func installStandardStreams(_ hostFDs: [Int32], owned: Bool = false) throws(Errno) {
        for (guestFD, hostFD) in hostFDs.prefix(3).enumerated() {
            let flags = fcntl(hostFD, F_GETFL)
            guard flags >= 0 else { continue }
            let file = OpenFile(backing: .host(fd: hostFD, owned: owned), guestPath: "/dev/stdio", statusFlags: flags,
                                standardStream: Int32(guestFD))
            try install(file, at: Int32(guestFD), closeOnExec: false)
        }
    }

    /// Drops every fd (a thread or process that exited).
    func closeAll() { entries.removeAll() }

    /// Closes the fds marked close-on-exec (execve).
    func closeOnExecFiles() {
        entries = entries.filter { !$0.value.closeOnExec }
    }

    func file(_ fd: Int32) throws(Errno) -> OpenFile {
        guard let entry = entries[fd] else { throw Errno.EBADF }
        try entry.file.reconnectIfNeeded()
        return entry.file
    }

    /// Every open fd with its description, without reconnecting anything (checkpoints).
    var allEntries: [(fd: Int32, file: OpenFile, closeOnExec: Bool)] {
        entries.map { ($0.key, $0.value.file, $0.value.closeOnExec) }.sorted { $0.fd < $1.fd }
    }

    func file(_ fd: UInt64) throws(Errno) -> OpenFile {
        guard fd <= UInt64(Int32.max) else { throw Errno.EBADF }
        return try file(Int32(fd))
    }

    func closeOnExec(_ fd: Int32) -> Bool { entries[fd]?.closeOnExec ?? false }

    func setCloseOnExec(_ fd: Int32, _ value: Bool) throws(Errno) {
        guard let entry = entries[fd] else { throw Errno.EBADF }
        entries[fd] = (entry.file, value)
    }

    /// Installs `file` at the lowest free fd that is at least `minimum`.
    func install(_ file: OpenFile, minimum: Int32 = 0, closeOnExec: Bool = false) throws(Errno) -> Int32 {
        var fd = minimum
        while entries[fd] != nil { fd += 1 }
        guard fd < Self.limit else { throw Errno.EMFILE }
        entries[fd] = (file, closeOnExec)
        return fd
    }

    /// Installs `file` at exactly `fd`, closing what was there (dup2 semantics).
    func install(_ file: OpenFile, at fd: Int32, closeOnExec: Bool) throws(Errno) {
        guard fd >= 0, fd < Self.limit else { throw Errno.EBADF }
        entries[fd] = (file, closeOnExec)
    }

    /// Closes every open fd in `first...last`, or marks them close-on-exec (close_range).
    func closeRange(_ first: Int32, _ last: Int32, markCloseOnExec: Bool) {
        for fd in entries.keys where fd >= first && fd <= last {
            if markCloseOnExec { entries[fd]?.closeOnExec = true } else { entries[fd] = nil }
        }
    }

    func close(_ fd: Int32) throws(Errno) {
        guard entries.removeValue(forKey: fd) != nil else { throw Errno.EBADF }
    }
}
