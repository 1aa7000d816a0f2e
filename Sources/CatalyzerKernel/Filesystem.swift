import CKVM
import Glibc

/// The guest's view of files: a read-only host directory as `/`, confined by the host kernel with
/// `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` so no `..`, symlink or `/proc` magic link
/// reaches outside it, plus the in-memory writable `/tmp`. `/proc/self/exe` is synthesized, and
/// the stateless host devices `/dev/null`, `/dev/zero`, `/dev/random` and `/dev/urandom` are passed
/// through (they hold no host data).
final class Filesystem {
    private let rootFD: Int32
    /// The host directory that is the guest's `/`.
    let rootDirectory: String
    let tmp: MemoryFilesystem
    /// The guest path of the running executable, for `/proc/self/exe`.
    var executablePath = "/"
    /// Set while a program runs to its ready point: every rootfs file it opens is recorded.
    var dependencies: RootfsDependencies?

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
        case memory([String])
        case executableLink
        case hostDevice(path: String)
    }

    private static let passedThroughDevices: Set<String> = ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"]

    func locate(_ absolutePath: String) -> Location {
        let components = GuestPath.components(absolutePath)
        if components.first == "tmp" { return .memory(Array(components.dropFirst())) }
        if components == ["proc", "self", "exe"] { return .executableLink }
        let normalized = "/" + components.joined(separator: "/")
        if Self.passedThroughDevices.contains(normalized) { return .hostDevice(path: normalized) }
        return .rootfs(path: normalized)
    }

    /// Opens a rootfs path on the host; only read-only opens are ever requested.
    func openHost(_ path: String, flags: Int32) throws(Errno) -> Int32 {
        let resolve = UInt64(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        let fd = path.withCString { chost_openat2(rootFD, $0, UInt64(UInt32(bitPattern: flags | O_CLOEXEC)), 0, resolve) }
        guard fd >= 0 else { throw Errno.lastHostError }
        dependencies?.record(path: path, flags: flags, fd: fd)
        return fd
    }

    /// Opens `absolutePath` for the guest with its open(2) `flags` and `mode`.
    func open(_ absolutePath: String, flags: Int32, mode: UInt32) throws(Errno) -> OpenFile {
        let wantsWrite = flags & O_ACCMODE != O_RDONLY || flags & (O_CREAT | O_TRUNC) != 0
        switch locate(absolutePath) {
        case .executableLink:
            return try open(executablePath, flags: flags, mode: mode)
        case .hostDevice(let path):
            let fd = Glibc.open(path, (flags & (O_ACCMODE | O_NONBLOCK)) | O_CLOEXEC)
            guard fd >= 0 else { throw Errno.lastHostError }
            return OpenFile(backing: .host(fd: fd, owned: true), guestPath: path, statusFlags: flags & ~O_CLOEXEC)
        case .rootfs(let path):
            if wantsWrite {
                // Report ENOENT for a missing parent like Linux would, EROFS otherwise.
                if flags & O_CREAT == 0 { try requireExists(path, followSymlinks: true) }
                throw Errno.EROFS
            }
            let fd = try openHost(path, flags: O_RDONLY | (flags & Self.rootfsOpenFlags))
            return OpenFile(backing: .host(fd: fd, owned: true), guestPath: GuestPath.normalize(absolutePath),
                            statusFlags: flags & ~O_CLOEXEC)
        case .memory(let components):
            let node: MemoryNode
            do throws(Errno) {
                node = try tmp.lookup(components)
            } catch {
                guard error == Errno.ENOENT && flags & O_CREAT != 0 else { throw error }
                node = try tmp.create(components, directory: false, mode: mode & 0o7777)
                return OpenFile(backing: .memory(node), guestPath: GuestPath.normalize(absolutePath),
                                statusFlags: flags & ~O_CLOEXEC)
            }
            if flags & (O_CREAT | O_EXCL) == (O_CREAT | O_EXCL) { throw Errno.EEXIST }
            if node.isDirectory && wantsWrite { throw Errno.EISDIR }
            if !node.isDirectory && flags & O_DIRECTORY != 0 { throw Errno.ENOTDIR }
            if flags & O_TRUNC != 0, case .file(let data) = node.content {
                try tmp.charge(-data.count)
                node.content = .file([])
            }
            return OpenFile(backing: .memory(node), guestPath: GuestPath.normalize(absolutePath),
                            statusFlags: flags & ~O_CLOEXEC)
        }
    }

    /// The open(2) flags passed through to the host for a rootfs file (which is only ever read).
    static let rootfsOpenFlags = O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_PATH | O_NOATIME

    /// A host fd to load an executable from; only rootfs files can be executed.
    func openExecutable(_ absolutePath: String) throws(Errno) -> Int32 {
        switch locate(absolutePath) {
        case .executableLink: return try openExecutable(executablePath)
        case .rootfs(let path): return try openHost(path, flags: O_RDONLY)
        case .memory, .hostDevice: throw Errno.EACCES
        }
    }

    /// stat/lstat of a path.
    func status(_ absolutePath: String, followSymlinks: Bool) throws(Errno) -> stat {
        switch locate(absolutePath) {
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
        case .memory(let components):
            return try tmp.lookup(components).status(device: MemoryFilesystem.device)
        }
    }

    func readLink(_ absolutePath: String) throws(Errno) -> String {
        switch locate(absolutePath) {
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
        case .memory(let components):
            _ = try tmp.lookup(components)
            throw Errno.EINVAL  // /tmp has no symlinks
        }
    }

    func makeDirectory(_ absolutePath: String, mode: UInt32) throws(Errno) {
        switch locate(absolutePath) {
        case .memory(let components): _ = try tmp.create(components, directory: true, mode: mode & 0o7777)
        case .rootfs(let path):
            // Like Linux, an existing path is EEXIST even on a read-only filesystem (mkdir -p relies on it).
            if (try? requireExists(path)) != nil { throw Errno.EEXIST }
            throw Errno.EROFS
        case .executableLink, .hostDevice: throw Errno.EEXIST
        }
    }

    func remove(_ absolutePath: String, directory: Bool) throws(Errno) {
        switch locate(absolutePath) {
        case .memory(let components): try tmp.remove(components, directory: directory)
        case .rootfs(let path):
            try requireExists(path)
            throw Errno.EROFS
        case .executableLink, .hostDevice: throw Errno.EROFS
        }
    }

    func rename(_ source: String, to destination: String) throws(Errno) {
        switch (locate(source), locate(destination)) {
        case (.memory(let from), .memory(let to)): try tmp.rename(from, to: to)
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
        switch locate(absolutePath) {
        case .memory(let components): return try tmp.lookup(components)
        case .rootfs(let path):
            try requireExists(path, followSymlinks: followSymlinks)
            throw Errno.EROFS
        case .executableLink, .hostDevice: throw Errno.EROFS
        }
    }

    /// Succeeds if the rootfs path exists (ENOENT, ENOTDIR, ELOOP... otherwise).
    private func requireExists(_ path: String, followSymlinks: Bool = false) throws(Errno) {
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
