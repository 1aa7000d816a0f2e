import CKVM
import Glibc

/// The guest's view of files: a read-only host directory as `/` (writable through an in-memory
/// upper layer when configured, see `RootOverlay`), confined by the host kernel with
/// `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` so no `..`, symlink or `/proc` magic link
/// reaches outside it, plus the in-memory writable `/tmp`. `/proc/self/exe` is synthesized, and
/// the stateless host devices `/dev/null`, `/dev/zero`, `/dev/random` and `/dev/urandom` are passed
/// through (they hold no host data).
final class Filesystem {
    let rootFD: Int32
    /// The host directory that is the guest's `/`.
    let rootDirectory: String
    /// The in-memory upper layer that makes `/` writable, when the configuration asks for it
    /// (`enableWritableRoot`); nil for the read-only root functions run on.
    var overlay: RootOverlay?
    let tmp: MemoryFilesystem
    /// The guest path of the running executable, for `/proc/self/exe`.
    var executablePath = "/"
    /// Set while a program runs to its ready point: every rootfs file it opens is recorded.
    var dependencies: RootfsDependencies?
    /// Advisory locks (fcntl, flock) of all the sandbox's processes.
    let locks = FileLockTable()
    /// The task whose syscall is being served, for /proc (set per slice, like `executablePath`).
    weak var callingTask: Task?
    /// A directory holding the `resolv.conf` the guest sees in place of the rootfs's, when the
    /// network policy names a resolver (`--dns`); nil otherwise.
    var networkFiles: MemoryNode?
    /// Mounts added by the sandbox's configuration (`SandboxMount`): in-memory directories by their
    /// components, and read-only files by their components, each a directory holding the file.
    private(set) var memoryMounts: [(components: [String], root: MemoryNode)] = []
    private(set) var fileMounts: [[String]: MemoryNode] = [:]
    var hasConfiguredMounts: Bool { !memoryMounts.isEmpty || !fileMounts.isEmpty }
    /// Inode numbers of configured mounts: apart from /tmp's, /proc's and the resolver's.
    private static let mountInodeBase: UInt64 = 0x6D6E_7400 << 32

    /// Adds the configuration's mounts. Paths are normalized; mounts on or under the built-in
    /// /tmp, /dev/shm and /proc are left out (those already are what a tmpfs or proc mount asks).
    func addMounts(_ mounts: [SandboxMount]) {
        for mount in mounts {
            let components = GuestPath.components(GuestPath.normalize(mount.path))
            let builtIn = components.first == "tmp" || components.first == "proc" || components.starts(with: ["dev", "shm"])
            guard !components.isEmpty, !builtIn else { continue }
            let inode = Self.mountInodeBase + UInt64(2 * (memoryMounts.count + fileMounts.count))
            switch mount {
            case .memory:
                memoryMounts.removeAll { $0.components == components }
                memoryMounts.append((components, MemoryNode(content: .directory([:]), mode: 0o1777, inode: inode)))
                memoryMounts.sort { $0.components.count > $1.components.count }  // the deepest mount wins
            case .file(_, let contents):
                let file = MemoryNode(content: .file(contents), mode: 0o444, inode: inode)
                fileMounts[components] = MemoryNode(content: .directory([components.last!: file]), mode: 0o555, inode: inode + 1)
            }
        }
    }

    /// A checkpoint's in-memory mounts, by their components.
    func restoreMemoryMounts(_ mounts: [(components: [String], root: MemoryNode)]) {
        memoryMounts = mounts.sorted { $0.components.count > $1.components.count }
    }

    /// The /proc tree built for one syscall of one task, reused by the lookups of that syscall.
    private var procCache: (syscall: Int, task: ObjectIdentifier, root: MemoryNode)?

    /// `tmpCapacity` bounds the bytes the guest can store in /tmp.
    convenience init(rootDirectory: String, tmpCapacity: Int) throws(Errno) {
        try self.init(rootDirectory: rootDirectory, tmp: MemoryFilesystem(capacity: tmpCapacity))
    }

    init(rootDirectory: String, tmp: MemoryFilesystem) throws(Errno) {
        self.tmp = tmp
        self.rootDirectory = rootDirectory
        let fd = Glibc.open(rootDirectory, O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno.lastHostError }
        rootFD = fd
    }

    deinit { close(rootFD) }

    /// Where a guest path lives after lexical normalization.
    enum Location {
        case rootfs(path: String)
        /// Under /tmp or /dev/shm: the mount's root directory and the components below it.
        case memory(MemoryNode, [String])
        case executableLink
        case hostDevice(path: String)
        /// Under /proc: the tree built for the calling task, and the components below /proc.
        case generated(MemoryNode, [String])

        /// The in-memory root and components of a /tmp, /dev/shm or /proc path.
        var memoryNode: (root: MemoryNode, components: [String])? {
            switch self {
            case .memory(let root, let components), .generated(let root, let components): (root, components)
            default: nil
            }
        }
    }

    static let passedThroughDevices: Set<String> = ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"]

    func locate(_ absolutePath: String) -> Location {
        locate(components: GuestPath.components(absolutePath))
    }

    /// `locate` for a path already split into components without `.` or `..`.
    func locate(components: [String]) -> Location {
        if components.first == "tmp" { return .memory(tmp.root, Array(components.dropFirst())) }
        if components.count >= 2 && components[0] == "dev" && components[1] == "shm" {
            return .memory(tmp.sharedMemoryRoot, Array(components.dropFirst(2)))
        }
        if components == ["proc", "self", "exe"] { return .executableLink }
        if hasConfiguredMounts {
            if let directory = fileMounts[components] { return .generated(directory, [components.last!]) }
            for mount in memoryMounts where components.starts(with: mount.components) {
                return .memory(mount.root, Array(components.dropFirst(mount.components.count)))
            }
        }
        if components == ["etc", "resolv.conf"], let networkFiles { return .generated(networkFiles, ["resolv.conf"]) }
        if components.first == "proc", let root = procRoot() { return .generated(root, Array(components.dropFirst())) }
        let normalized = "/" + components.joined(separator: "/")
        if Self.passedThroughDevices.contains(normalized) { return .hostDevice(path: normalized) }
        if let overlay, overlay.isUpper(components) { return .memory(overlay.upper, components) }
        return .rootfs(path: normalized)
    }

    /// The components of a location in the writable root (either layer); nil elsewhere or
    /// without an overlay.
    func writableRootComponents(_ location: Location) -> [String]? {
        guard let overlay else { return nil }
        switch location {
        case .rootfs(let path): return GuestPath.components(path)
        case .memory(let root, let components) where root === overlay.upper: return components
        default: return nil
        }
    }

    /// Opens a rootfs path on the host; only read-only opens are ever requested.
    ///
    /// A device node in the rootfs is never opened: it would be the host's device of that
    /// number (a char node 10,232 is the host's /dev/kvm), whatever the operator meant. So the
    /// path is first resolved to an `O_PATH` handle, which opens nothing, and its type checked;
    /// anything but a device is then opened through that handle, so what was checked is what is
    /// opened. The sandbox's devices are the monitor's own (`passedThroughDevices`).
    func openHost(_ path: String, flags: Int32) throws(Errno) -> Int32 {
        let resolve = UInt64(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        if flags & O_PATH != 0 {
            let fd = path.withCString { chost_openat2(rootFD, $0, UInt64(UInt32(bitPattern: flags | O_CLOEXEC)), 0, resolve) }
            guard fd >= 0 else { throw Errno.lastHostError }
            dependencies?.record(path: path, flags: flags, fd: fd)
            return fd
        }
        let handleFlags = O_PATH | O_CLOEXEC | (flags & (O_NOFOLLOW | O_DIRECTORY))
        let handle = path.withCString { chost_openat2(rootFD, $0, UInt64(UInt32(bitPattern: handleFlags)), 0, resolve) }
        guard handle >= 0 else { throw Errno.lastHostError }
        defer { close(handle) }
        var status = stat()
        guard fstat(handle, &status) == 0 else { throw Errno.lastHostError }
        switch status.st_mode & S_IFMT {
        case S_IFCHR, S_IFBLK: throw Errno.EACCES
        case S_IFLNK: throw Errno.ELOOP  // O_NOFOLLOW on a symlink, as openat2 itself would say
        default: break
        }
        let fd = Glibc.open("/proc/self/fd/\(handle)", (flags & ~(O_NOFOLLOW | O_CREAT | O_EXCL | O_TRUNC)) | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else { throw Errno.lastHostError }
        dependencies?.record(path: path, flags: flags, fd: fd)
        return fd
    }

    /// Opens one of the monitor's own devices for the guest. The random devices are opened
    /// read-only whatever the guest asked: Linux lets any process write to them (mixing bytes
    /// into the pool), and here such writes are accepted and discarded (see `OpenFile`), never
    /// passed to the host's pool.
    static func openDevice(_ path: String, flags: Int32) -> Int32 {
        let access = isRandomDevice(path) ? O_RDONLY : flags & O_ACCMODE
        return Glibc.open(path, access | (flags & O_NONBLOCK) | O_CLOEXEC)
    }

    static func isRandomDevice(_ path: String) -> Bool { path == "/dev/urandom" || path == "/dev/random" }

    /// The /proc tree for the calling task, built once per syscall.
    private func procRoot() -> MemoryNode? {
        guard let task = callingTask else { return nil }
        let syscall = task.sandbox.syscallCount
        if let procCache, procCache.syscall == syscall, procCache.task == ObjectIdentifier(task) { return procCache.root }
        let root = ProcFilesystem.root(for: task)
        procCache = (syscall, ObjectIdentifier(task), root)
        return root
    }

    /// Opens `absolutePath` for the guest with its open(2) `flags` and `mode`.
    func open(_ absolutePath: String, flags: Int32, mode: UInt32, owner: Credentials = Credentials()) throws(Errno) -> OpenFile {
        let wantsWrite = flags & O_ACCMODE != O_RDONLY || flags & (O_CREAT | O_TRUNC) != 0
        // Linux refuses to create "name/" before looking at what is there.
        if flags & O_CREAT != 0 && absolutePath.hasSuffix("/") { throw Errno.EISDIR }
        let exclusive = flags & (O_CREAT | O_EXCL) == (O_CREAT | O_EXCL)
        let canonicalPath = try resolve(absolutePath, followFinal: !exclusive && flags & O_NOFOLLOW == 0)
        switch locate(canonicalPath) {
        case .executableLink:
            return try open(executablePath, flags: flags, mode: mode, owner: owner)
        case .hostDevice(let path):
            let fd = Self.openDevice(path, flags: flags)
            guard fd >= 0 else { throw Errno.lastHostError }
            return OpenFile(backing: .host(fd: fd, owned: true), guestPath: path, statusFlags: flags & ~O_CLOEXEC)
        case .rootfs(let path):
            if wantsWrite, let overlay {
                let components = GuestPath.components(canonicalPath)
                try prepareWrite(overlay, components, flags: flags)
                return try openMemory(overlay.upper, components, canonicalPath: canonicalPath, absolutePath: absolutePath,
                                      flags: flags, mode: mode, owner: owner)
            }
            if wantsWrite {
                // Report ENOENT for a missing parent like Linux would, EROFS otherwise; a device
                // node is EACCES whatever the access (the read-only rootfs is not what stops it).
                if flags & O_CREAT == 0 { try requireExists(path, followSymlinks: true) }
                if let handle = try? openHost(path, flags: O_PATH | (flags & O_NOFOLLOW)) {
                    var status = stat()
                    let isDevice = fstat(handle, &status) == 0 && [S_IFCHR, S_IFBLK].contains(status.st_mode & S_IFMT)
                    close(handle)
                    if isDevice { throw Errno.EACCES }
                }
                throw Errno.EROFS
            }
            let fd = try openHost(path + (absolutePath.hasSuffix("/") ? "/" : ""), flags: O_RDONLY | (flags & Self.rootfsOpenFlags))
            return OpenFile(backing: .host(fd: fd, owned: true), guestPath: canonicalPath,
                            statusFlags: flags & ~O_CLOEXEC)
        case .generated(let root, let components):
            let node = try tmp.lookup(components, in: root)
            if wantsWrite { throw node.isDirectory ? Errno.EISDIR : Errno.EACCES }
            if exclusive { throw Errno.EEXIST }
            if node.isSymlink { guard flags & O_PATH != 0 else { throw Errno.ELOOP } }
            if !node.isDirectory && (flags & O_DIRECTORY != 0 || absolutePath.hasSuffix("/")) { throw Errno.ENOTDIR }
            return OpenFile(backing: .memory(node), guestPath: canonicalPath, statusFlags: flags & ~O_CLOEXEC)
        case .memory(let root, let components):
            return try openMemory(root, components, canonicalPath: canonicalPath, absolutePath: absolutePath, flags: flags,
                                  mode: mode, owner: owner)
        }
    }

    /// open(2) of an in-memory path: /tmp, /dev/shm, a tmpfs mount or the writable root's upper layer.
    private func openMemory(_ root: MemoryNode, _ components: [String], canonicalPath: String, absolutePath: String, flags: Int32,
                            mode: UInt32, owner: Credentials) throws(Errno) -> OpenFile {
        let wantsWrite = flags & O_ACCMODE != O_RDONLY || flags & (O_CREAT | O_TRUNC) != 0
        let exclusive = flags & (O_CREAT | O_EXCL) == (O_CREAT | O_EXCL)
        let node: MemoryNode
        do throws(Errno) {
            node = try tmp.lookup(components, in: root)
        } catch {
            guard error == Errno.ENOENT && flags & O_CREAT != 0 else { throw error }
            node = try tmp.create(components, content: .file([]), mode: mode & 0o7777, owner: owner.uid, group: owner.gid, in: root)
            return OpenFile(backing: .memory(node), guestPath: canonicalPath,
                            statusFlags: flags & ~O_CLOEXEC)
        }
        if exclusive { throw Errno.EEXIST }
        if node.isSymlink {
            // Only reached with O_NOFOLLOW: O_PATH opens the link itself, anything else is ELOOP.
            guard flags & O_PATH != 0 else { throw Errno.ELOOP }
        } else if node.isSocket {
            guard flags & O_PATH != 0 else { throw Errno.ENXIO }  // a socket is connected to, not opened
        } else {
            if node.isDirectory && wantsWrite { throw Errno.EISDIR }
            if !node.isDirectory && (flags & O_DIRECTORY != 0 || absolutePath.hasSuffix("/")) { throw Errno.ENOTDIR }
        }
        if flags & O_TRUNC != 0 && node.size > 0, !node.isDirectory {
            try truncateFile(node, length: 0)
        }
        return OpenFile(backing: .memory(node), guestPath: canonicalPath,
                        statusFlags: flags & ~O_CLOEXEC)
    }

    /// The open(2) flags passed through to the host for a rootfs file (which is only ever read).
    static let rootfsOpenFlags = O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_PATH | O_NOATIME

    /// A host fd to load an executable from: the rootfs file itself, or for a /tmp file with an
    /// execute bit a memfd holding a copy of its bytes (the loader only reads it); a large /tmp
    /// file already in a memfd is read from that memfd, not copied (the copy would be host memory
    /// outside the sandbox's budget).
    func openExecutable(_ absolutePath: String) throws(Errno) -> Int32 {
        switch locate(try resolve(absolutePath)) {
        case .executableLink: return try openExecutable(executablePath)
        case .rootfs(let path): return try openHost(path, flags: O_RDONLY)
        case .memory(let root, let components):
            let node = try tmp.lookup(components, in: root)
            guard node.mode & 0o111 != 0 else { throw Errno.EACCES }
            if let shared = node.shared {
                let fd = fcntl(shared.fd, F_DUPFD_CLOEXEC, 0)
                guard fd >= 0 else { throw Errno.lastHostError }
                return fd
            }
            guard let bytes = node.fileBytes else { throw Errno.EACCES }
            return try Self.memfdCopy(of: bytes)
        case .hostDevice, .generated: throw Errno.EACCES
        }
    }

    /// stat/lstat of a path.
    func status(_ absolutePath: String, followSymlinks: Bool) throws(Errno) -> stat {
        switch locate(try resolve(absolutePath, followFinal: followSymlinks)) {
        case .executableLink:
            return followSymlinks ? try status(executablePath, followSymlinks: true) : Self.symlinkStatus(executablePath)
        case .hostDevice(let path):
            var status = stat()
            guard stat(path, &status) == 0 else { throw Errno.lastHostError }
            return status
        case .rootfs(let path):
            let fd = try openHost(path, flags: O_PATH | (followSymlinks ? 0 : O_NOFOLLOW))
            defer { close(fd) }
            var status = stat()
            guard fstatat(fd, "", &status, AT_EMPTY_PATH) == 0 else { throw Errno.lastHostError }
            return status
        case .memory(let root, let components):
            let node = try tmp.lookup(components, in: root)
            if absolutePath.hasSuffix("/") && !node.isDirectory { throw Errno.ENOTDIR }
            return node.status(device: MemoryFilesystem.device)
        case .generated(let root, let components):
            let node = try tmp.lookup(components, in: root)
            if absolutePath.hasSuffix("/") && !node.isDirectory { throw Errno.ENOTDIR }
            return node.status(device: ProcFilesystem.device)
        }
    }

    func readLink(_ absolutePath: String) throws(Errno) -> String {
        switch locate(try resolve(absolutePath, followFinal: false)) {
        case .executableLink:
            return executablePath
        case .hostDevice:
            throw Errno.EINVAL
        case .rootfs(let path):
            let fd = try openHost(path, flags: O_PATH | O_NOFOLLOW)
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = buffer.withUnsafeMutableBytes { readlinkat(fd, "", $0.baseAddress!, 4096) }
            guard count >= 0 else { throw errno == ENOENT ? Errno.EINVAL : Errno.lastHostError }
            return String(decoding: buffer.prefix(count), as: UTF8.self)
        case .memory(let root, let components), .generated(let root, let components):
            guard case .symlink(let target) = try tmp.lookup(components, in: root).content else { throw Errno.EINVAL }
            return target
        }
    }

    func makeDirectory(_ absolutePath: String, mode: UInt32, owner: Credentials = Credentials()) throws(Errno) {
        switch locate(try resolve(absolutePath, followFinal: false)) {
        case .memory(let root, let components):
            _ = try tmp.create(components, content: .directory([:]), mode: mode & 0o7777, owner: owner.uid, group: owner.gid, in: root)
            if let overlay, root === overlay.upper { overlay.directoryCreated(components) }
        case .rootfs(let path):
            if let overlay {
                let components = GuestPath.components(path)
                try prepareCreate(overlay, components)
                _ = try tmp.create(components, content: .directory([:]), mode: mode & 0o7777, owner: owner.uid, group: owner.gid,
                                   in: overlay.upper)
                return
            }
            // Like Linux, an existing path is EEXIST even on a read-only filesystem (mkdir -p relies on it).
            if (try? requireExists(path)) != nil { throw Errno.EEXIST }
            throw Errno.EROFS
        case .executableLink, .hostDevice: throw Errno.EEXIST
        case .generated(let root, let components):
            // procfs has no creation: a new name is ENOENT there, as on Linux.
            if (try? tmp.lookup(components, in: root)) != nil { throw Errno.EEXIST }
            throw Errno.ENOENT
        }
    }

    func remove(_ absolutePath: String, directory: Bool) throws(Errno) {
        let location = locate(try resolve(absolutePath, followFinal: false))
        if let overlay, let components = writableRootComponents(location) {
            return try removeFromRoot(overlay, components, directory: directory)
        }
        switch location {
        case .memory(let root, let components): try tmp.remove(components, directory: directory, in: root)
        case .rootfs(let path):
            try requireExists(path)
            throw Errno.EROFS
        case .executableLink, .hostDevice: throw Errno.EROFS
        case .generated(let root, let components):
            _ = try tmp.lookup(components, in: root)
            throw Errno.EPERM
        }
    }

    func rename(_ source: String, to destination: String) throws(Errno) {
        let from = locate(try resolve(source, followFinal: false)), to = locate(try resolve(destination, followFinal: false))
        if overlay != nil {
            switch (writableRootComponents(from), writableRootComponents(to)) {
            case (let source?, let destination?): return try renameInRoot(overlay!, source, to: destination)
            case (_?, nil), (nil, _?):
                if case .generated = from { throw Errno.EPERM }
                if case .generated = to { throw Errno.EPERM }
                throw Errno.EXDEV  // the root and /tmp are two filesystems
            case (nil, nil): break
            }
        }
        switch (from, to) {
        case (.memory(let sourceRoot, let from), .memory(let destinationRoot, let to)):
            try tmp.rename(from, to: to, sourceRoot: sourceRoot, destinationRoot: destinationRoot)
        case (.generated, _), (_, .generated): throw Errno.EPERM
        case (.memory, _), (_, .memory): throw Errno.EXDEV
        case (.rootfs(let path), _):
            try requireExists(path)
            throw Errno.EROFS
        default: throw Errno.EROFS
        }
    }

    /// For calls that modify an existing path (utimes, chmod, chown, truncate): the memory node under
    /// /tmp, or ENOENT/EROFS for the read-only rootfs.
    func modifiableNode(_ absolutePath: String, followSymlinks: Bool = true) throws(Errno) -> MemoryNode {
        let location = locate(try resolve(absolutePath, followFinal: followSymlinks))
        if let overlay, let components = writableRootComponents(location) { return try copyUp(overlay, components) }
        switch location {
        case .memory(let root, let components): return try tmp.lookup(components, in: root)
        case .rootfs(let path):
            try requireExists(path, followSymlinks: followSymlinks)
            throw Errno.EROFS
        case .executableLink, .hostDevice: throw Errno.EROFS
        case .generated(let root, let components):
            _ = try tmp.lookup(components, in: root)
            throw Errno.EPERM
        }
    }

    /// The guest path of a rootfs file with every symlink on it resolved, as the host resolves
    /// it inside the rootfs (what /proc/PID/exe shows); nil when it cannot be opened.
    func resolvedRootfsPath(_ absolutePath: String) -> String? {
        guard case .rootfs(let path) = locate(absolutePath), let fd = try? openHost(path, flags: O_PATH) else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { readlink("/proc/self/fd/\(fd)", $0.baseAddress!, 4096) }
        guard count > 0 else { return nil }
        let hostPath = String(decoding: buffer.prefix(count), as: UTF8.self)
        guard let resolvedRoot = realpath(rootDirectory, nil) else { return nil }
        defer { free(resolvedRoot) }
        let root = String(cString: resolvedRoot) == "/" ? "" : String(cString: resolvedRoot)
        guard hostPath.hasPrefix(root + "/") else { return nil }
        return String(hostPath.dropFirst(root.count))
    }

    /// Succeeds if the rootfs path exists (ENOENT, ENOTDIR, ELOOP... otherwise).
    func requireExists(_ path: String, followSymlinks: Bool = false) throws(Errno) {
        close(try openHost(path, flags: O_PATH | (followSymlinks ? 0 : O_NOFOLLOW)))
    }

    private static func symlinkStatus(_ target: String) -> stat {
        var status = stat()
        status.st_mode = S_IFLNK | 0o777
        status.st_nlink = 1
        status.st_size = target.utf8.count
        return status
    }
}
