import CKVM
import Glibc

/// Symbolic and hard links in the in-memory filesystem, and path resolution through them.
///
/// Rootfs paths are still resolved by the host, confined by `openat2(RESOLVE_IN_ROOT)`. Under
/// /tmp and /dev/shm the monitor walks the path itself: a symlink's target replaces the link
/// (from `/` when absolute, from the link's directory when relative), and where it leads decides
/// which filesystem serves the rest: a /tmp link to `/usr/lib` continues in the rootfs, through
/// the same confined host lookup. `..` steps back over what was resolved so far, so it cannot go
/// above `/`, and no path ever names a host file outside the rootfs.
extension Filesystem {
    /// Linux's limit on symlinks followed in one lookup (`MAXSYMLINKS`).
    static let symlinkLimit = 40

    /// `absolutePath` with every /tmp symlink on it followed (the last component only when
    /// `followFinal`, or when a trailing slash asks for a directory), `.` and `..` resolved: the
    /// canonical guest path `locate` classifies. ELOOP after `symlinkLimit` links.
    func resolve(_ absolutePath: String, followFinal: Bool = true) throws(Errno) -> String {
        var pending = Array(absolutePath.split(separator: "/", omittingEmptySubsequences: true).reversed().map(String.init))
        let followLast = followFinal || absolutePath.hasSuffix("/")
        var resolved: [String] = []
        var followed = 0
        while let name = pending.popLast() {
            switch name {
            case ".": continue
            case "..":
                _ = resolved.popLast()
                continue
            default:
                resolved.append(name)
            }
            if pending.isEmpty && !followLast { break }
            let location = locate(components: resolved)
            let target: String
            if let (root, components) = location.memoryNode, !components.isEmpty,
               let node = try? tmp.lookup(components, in: root), case .symlink(let link) = node.content {
                target = link
            } else if overlay != nil, case .rootfs(let path) = location, let link = lowerSymlinkTarget(path) {
                // With a writable root the monitor must know every path's layer, so it follows
                // the rootfs's symlinks itself too (the host would, for a read-only root).
                target = link
            } else {
                continue
            }
            followed += 1
            guard followed <= Self.symlinkLimit else { throw Errno.ELOOP }
            resolved.removeLast()
            if target.hasPrefix("/") { resolved.removeAll() }
            pending += target.split(separator: "/", omittingEmptySubsequences: true).reversed().map(String.init)
        }
        return "/" + resolved.joined(separator: "/")
    }

    /// symlink(2): a link at `absolutePath` holding `target` verbatim.
    func makeSymlink(_ absolutePath: String, target: String, owner: Credentials) throws(Errno) {
        guard !target.isEmpty else { throw Errno.ENOENT }
        guard target.utf8.count < 4096 else { throw Errno.ENAMETOOLONG }
        let location = locate(try resolve(absolutePath, followFinal: false))
        if let overlay, case .rootfs(let path) = location {
            let components = GuestPath.components(path)
            try prepareCreate(overlay, components)
            _ = try tmp.create(components, content: .symlink(target), mode: 0o777, owner: owner.uid, group: owner.gid, in: overlay.upper)
            return
        }
        switch location {
        case .memory(let root, let components):
            _ = try tmp.create(components, content: .symlink(target), mode: 0o777, owner: owner.uid, group: owner.gid, in: root)
        case .rootfs(let path):
            if (try? requireExists(path)) != nil { throw Errno.EEXIST }
            throw Errno.EROFS
        case .executableLink, .hostDevice: throw Errno.EEXIST
        case .generated: throw Errno.ENOENT
        }
    }

    /// link(2): another name for an existing /tmp file. Links between the rootfs and /tmp are
    /// EXDEV (two filesystems); within the rootfs EROFS.
    func makeHardLink(from source: String, to destination: String, followSymlinks: Bool) throws(Errno) {
        let from = locate(try resolve(source, followFinal: followSymlinks))
        let to = locate(try resolve(destination, followFinal: false))
        if let overlay {
            switch (writableRootComponents(from), writableRootComponents(to)) {
            case (let source?, let destination?): return try linkInRoot(overlay, source, to: destination)
            case (_?, nil), (nil, _?):
                if case .generated = from { throw Errno.EPERM }
                if case .generated = to { throw Errno.EPERM }
                throw Errno.EXDEV
            case (nil, nil): break
            }
        }
        switch (from, to) {
        case (.generated, _), (_, .generated): throw Errno.EPERM
        case (.memory(let sourceRoot, let sourceComponents), .memory(let destinationRoot, let destinationComponents)):
            let node = try tmp.lookup(sourceComponents, in: sourceRoot)
            try tmp.link(node, at: destinationComponents, in: destinationRoot)
        case (.memory(let root, let components), _):
            _ = try tmp.lookup(components, in: root)
            throw Errno.EXDEV
        case (.rootfs(let path), .memory):
            try requireExists(path)
            throw Errno.EXDEV
        case (.rootfs(let path), _):
            try requireExists(path)
            throw Errno.EROFS
        default:
            throw Errno.EXDEV
        }
    }

    /// Sets a /tmp file's size, charging the difference to the filesystem.
    func truncateFile(_ node: MemoryNode, length: Int) throws(Errno) {
        let old = node.size
        try tmp.charge(length - old, for: node)
        do throws(Errno) {
            try node.resizeFile(to: length)
        } catch {
            try? tmp.charge(old - length, for: node)
            throw error
        }
        node.noteModified()
    }

    /// A host memfd holding `bytes`, for the ELF loader to read a /tmp executable from.
    static func memfdCopy(of bytes: [UInt8]) throws(Errno) -> Int32 {
        let fd = ckvm_memfd_create("catalyzer-exec")
        guard fd >= 0 else { throw Errno.ENOMEM }
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + written, $0.count - written, off_t(written)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                close(fd)
                throw Errno.ENOMEM
            }
            written += count
        }
        return fd
    }
}

/// Names of unix sockets: bind(2) creates a socket file, connect(2) and sendto(2) find the socket
/// through it. Only /tmp and /dev/shm are writable, so only there can sockets be bound by path.
extension Filesystem {
    /// Creates the socket file at `absolutePath` (EADDRINUSE when the name exists, as on Linux).
    func bindSocket(_ absolutePath: String, _ binding: UnixSocketBinding, mode: UInt32, owner: Credentials) throws(Errno) {
        var location = locate(try resolve(absolutePath, followFinal: false))
        if let overlay, case .rootfs(let path) = location {
            let components = GuestPath.components(path)
            do throws(Errno) {
                try prepareCreate(overlay, components)
            } catch {
                throw error == Errno.EEXIST ? Errno.EADDRINUSE : error
            }
            location = .memory(overlay.upper, components)
        }
        switch location {
        case .memory(let root, let components):
            do throws(Errno) {
                _ = try tmp.create(components, content: .socket(binding), mode: mode & 0o7777, owner: owner.uid,
                                   group: owner.gid, in: root)
            } catch {
                throw error == Errno.EEXIST ? Errno.EADDRINUSE : error
            }
        case .rootfs(let path):
            if (try? requireExists(path)) != nil { throw Errno.EADDRINUSE }
            throw Errno.EROFS
        case .executableLink, .hostDevice: throw Errno.EADDRINUSE
        case .generated: throw Errno.EACCES
        }
    }

    /// The socket listening at `absolutePath`: ENOENT when there is no such name, ECONNREFUSED
    /// when it is not a socket file or nothing is bound to it any more.
    func boundSocket(at absolutePath: String) throws(Errno) -> SandboxSocket {
        switch locate(try resolve(absolutePath)) {
        case .memory(let root, let components):
            guard case .socket(let binding) = try tmp.lookup(components, in: root).content,
                  let socket = binding.socket else { throw Errno.ECONNREFUSED }
            return socket
        case .rootfs(let path):
            try requireExists(path, followSymlinks: true)
            throw Errno.ECONNREFUSED
        case .generated(let root, let components):
            _ = try tmp.lookup(components, in: root)
            throw Errno.ECONNREFUSED
        case .executableLink, .hostDevice: throw Errno.ECONNREFUSED
        }
    }
}
