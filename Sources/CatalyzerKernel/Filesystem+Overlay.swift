import CKVM
import Glibc

/// The writable root (`RootOverlay`): copy-up, whiteouts and merged directory listings. Every
/// path here is canonical (`resolve` follows the lower layer's symlinks too while an overlay is
/// on), so a lower path names no symlink but perhaps its last component.
extension Filesystem {
    /// Turns the read-only rootfs into the lower layer of a writable root.
    func enableWritableRoot() throws(Errno) {
        var status = stat()
        guard fstat(rootFD, &status) == 0 else { throw Errno.lastHostError }
        overlay = RootOverlay(lowerRootMode: status.st_mode)
    }

    static func guestPath(_ components: [String]) -> String { "/" + components.joined(separator: "/") }

    /// lstat of the lower layer's `path`; nil when it has nothing there.
    func lowerStatus(_ path: String) -> stat? {
        guard let fd = try? openHost(path, flags: O_PATH | O_NOFOLLOW) else { return nil }
        defer { close(fd) }
        var status = stat()
        return fstatat(fd, "", &status, AT_EMPTY_PATH) == 0 ? status : nil
    }

    /// The target of the lower layer's symlink at `path`; nil when it is not one.
    func lowerSymlinkTarget(_ path: String) -> String? {
        guard let overlay else { return nil }
        return overlay.lowerLinkTarget(path) { path in
            guard let fd = try? openHost(path, flags: O_PATH | O_NOFOLLOW) else { return nil }
            defer { close(fd) }
            var status = stat()
            guard fstatat(fd, "", &status, AT_EMPTY_PATH) == 0, status.st_mode & S_IFMT == S_IFLNK else { return nil }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = buffer.withUnsafeMutableBytes { readlinkat(fd, "", $0.baseAddress!, 4096) }
            return count > 0 ? String(decoding: buffer.prefix(count), as: UTF8.self) : nil
        }
    }

    /// Whether the lower layer has an entry at `components` that the guest sees.
    func lowerVisible(_ overlay: RootOverlay, _ components: [String]) -> Bool {
        overlay.lowerShowsThrough(components) && lowerStatus(Self.guestPath(components)) != nil
    }

    /// The upper directory at `components`, copying up (empty, with the lower's mode, owners and
    /// times) every directory on the way that is only in the lower layer.
    @discardableResult
    func upperDirectory(_ overlay: RootOverlay, _ components: [String]) throws(Errno) -> MemoryNode {
        var node = overlay.upper
        for index in components.indices {
            guard case .directory(let children) = node.content else { throw Errno.ENOTDIR }
            if let child = children[components[index]] {
                guard child.isDirectory else { throw Errno.ENOTDIR }
                node = child
                continue
            }
            let prefix = Array(components[...index])
            guard overlay.lowerShowsThrough(prefix), let status = lowerStatus(Self.guestPath(prefix)) else { throw Errno.ENOENT }
            guard status.st_mode & S_IFMT == S_IFDIR else { throw Errno.ENOTDIR }
            node = try tmp.create(prefix, content: .directory([:]), mode: status.st_mode & 0o7777, owner: status.st_uid,
                                  group: status.st_gid, in: overlay.upper)
            node.keepTimes(of: status)
        }
        return node
    }

    /// The upper node at `components`, copied up from the lower layer first if it is only there:
    /// a file with its bytes, a symlink with its target, a directory empty (its listing merges).
    /// A device is EACCES (never opened), a FIFO or socket EROFS (not copied).
    @discardableResult
    func copyUp(_ overlay: RootOverlay, _ components: [String]) throws(Errno) -> MemoryNode {
        if overlay.isUpper(components) { return try tmp.lookup(components, in: overlay.upper) }
        let path = Self.guestPath(components)
        guard let status = lowerStatus(path) else {
            try requireExists(path)
            throw Errno.ENOENT
        }
        switch status.st_mode & S_IFMT {
        case S_IFDIR:
            return try upperDirectory(overlay, components)
        case S_IFLNK:
            try upperDirectory(overlay, Array(components.dropLast()))
            guard let target = lowerSymlinkTarget(path) else { throw Errno.EIO }
            let node = try tmp.create(components, content: .symlink(target), mode: 0o777, owner: status.st_uid, group: status.st_gid,
                                      in: overlay.upper)
            node.keepTimes(of: status)
            return node
        case S_IFREG:
            try upperDirectory(overlay, Array(components.dropLast()))
            let source = try openHost(path, flags: O_RDONLY)
            defer { close(source) }
            let node = try tmp.create(components, content: .file([]), mode: status.st_mode & 0o7777, owner: status.st_uid,
                                      group: status.st_gid, in: overlay.upper)
            do throws(Errno) {
                try copyBytes(from: source, into: node)
            } catch {
                try? tmp.remove(components, directory: false, in: overlay.upper)  // no half copy stays
                throw error
            }
            node.keepTimes(of: status)
            return node
        case S_IFCHR, S_IFBLK:
            throw Errno.EACCES
        default:
            throw Errno.EROFS
        }
    }

    /// Reads host file `fd` into `node`, a piece at a time, each charged before it is stored:
    /// a file larger than the sandbox can hold is ENOSPC, not monitor memory.
    private func copyBytes(from fd: Int32, into node: MemoryNode) throws(Errno) {
        let pieceSize = 1 << 20
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: pieceSize, alignment: 16)
        defer { buffer.deallocate() }
        var offset = 0
        while true {
            let count = pread(fd, buffer, pieceSize, off_t(offset))
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw Errno.lastHostError }
            if count == 0 { return }
            try tmp.charge(count, for: node)
            _ = try node.writeFile(from: [iovec(iov_base: buffer, iov_len: count)], at: offset)
            offset += count
        }
    }

    /// The lower entries an upper directory at `components` lists beside its own `names`: those
    /// of the lower directory of that path, less `names` and whiteouts; none when the upper
    /// directory is opaque or the lower layer has no visible directory there.
    func lowerEntries(_ overlay: RootOverlay, of components: [String], excluding names: Set<String>)
        -> [(name: String, inode: UInt64, type: UInt8)] {
        guard !overlay.opaque.contains(components), overlay.lowerShowsThrough(components),
              let fd = try? openHost(Self.guestPath(components), flags: O_RDONLY | O_DIRECTORY) else { return [] }
        defer { close(fd) }
        var entries: [(name: String, inode: UInt64, type: UInt8)] = []
        var buffer = [UInt8](repeating: 0, count: 32 << 10)
        while true {
            let count = buffer.withUnsafeMutableBytes { chost_getdents64(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            var offset = 0
            while offset + 19 <= count {
                let length = Int(buffer[offset + 16]) | Int(buffer[offset + 17]) << 8
                guard length >= 19, offset + length <= count else { break }
                let inode = buffer[offset..<offset + 8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) }
                let nameBytes = buffer[(offset + 19)..<(offset + length)].prefix { $0 != 0 }
                let name = String(decoding: nameBytes, as: UTF8.self)
                if name != "." && name != "..", !names.contains(name), !overlay.whiteouts.contains(components + [name]) {
                    entries.append((name, inode, buffer[offset + 18]))
                }
                offset += length
            }
        }
        return entries.sorted { $0.name < $1.name }
    }

    /// Whether the directory at `components` (upper or lower) lists nothing the guest sees.
    func isEmptyDirectory(_ overlay: RootOverlay, _ components: [String]) throws(Errno) -> Bool {
        var upperNames: Set<String> = []
        if overlay.isUpper(components) {
            guard case .directory(let children) = try tmp.lookup(components, in: overlay.upper).content else { throw Errno.ENOTDIR }
            guard children.isEmpty else { return false }
            upperNames = Set(children.keys)
        }
        return lowerEntries(overlay, of: components, excluding: upperNames).isEmpty
    }

    // MARK: Operations on the writable root, called by `Filesystem`'s when an overlay is on.

    /// open(2) for writing of a path the lower layer serves: the file copied up, or its parent
    /// directories for a new one; the open itself then happens in the upper tree.
    func prepareWrite(_ overlay: RootOverlay, _ components: [String], flags: Int32) throws(Errno) {
        let path = Self.guestPath(components)
        if let status = lowerStatus(path) {
            if flags & (O_CREAT | O_EXCL) == (O_CREAT | O_EXCL) { throw Errno.EEXIST }
            switch status.st_mode & S_IFMT {
            case S_IFDIR: throw Errno.EISDIR
            case S_IFLNK: throw Errno.ELOOP  // only reached with O_NOFOLLOW: resolve followed it otherwise
            default: try copyUp(overlay, components)
            }
        } else {
            if flags & O_CREAT == 0 {
                try requireExists(path, followSymlinks: true)
                throw Errno.ENOENT
            }
            try upperDirectory(overlay, Array(components.dropLast()))
        }
    }

    /// mkdir, symlink and bind of a new name the lower layer would serve: EEXIST when it has one,
    /// else the parent directories are copied up for the creation in the upper tree.
    func prepareCreate(_ overlay: RootOverlay, _ components: [String]) throws(Errno) {
        if lowerStatus(Self.guestPath(components)) != nil { throw Errno.EEXIST }
        try upperDirectory(overlay, Array(components.dropLast()))
    }

    /// unlink/rmdir of an entry in the writable root.
    func removeFromRoot(_ overlay: RootOverlay, _ components: [String], directory: Bool) throws(Errno) {
        let visibleBelow = lowerVisible(overlay, components)
        if overlay.isUpper(components) {
            let node = try tmp.lookup(components, in: overlay.upper)
            if node.isDirectory && directory, try !isEmptyDirectory(overlay, components) { throw Errno.ENOTEMPTY }
            try tmp.remove(components, directory: directory, in: overlay.upper)
            if node.isDirectory { overlay.directoryRemoved(components) }
        } else {
            let path = Self.guestPath(components)
            guard let status = lowerStatus(path) else {
                try requireExists(path)
                throw Errno.ENOENT
            }
            if status.st_mode & S_IFMT == S_IFDIR {
                guard directory else { throw Errno.EISDIR }
                guard try isEmptyDirectory(overlay, components) else { throw Errno.ENOTEMPTY }
            } else if directory {
                throw Errno.ENOTDIR
            }
            try upperDirectory(overlay, Array(components.dropLast()))
        }
        if visibleBelow { overlay.addWhiteout(components) }
    }

    /// rename(2) within the writable root: the source copied up (a lower or merged directory is
    /// EXDEV), the destination's parents copied up, the move made in the upper tree, and the
    /// source whited out where the lower layer still has it.
    func renameInRoot(_ overlay: RootOverlay, _ source: [String], to destination: [String]) throws(Errno) {
        let sourceBelow = lowerVisible(overlay, source)
        let node: MemoryNode
        if overlay.isUpper(source) {
            node = try tmp.lookup(source, in: overlay.upper)
            if node.isDirectory && sourceBelow && !overlay.opaque.contains(source) { throw Errno.EXDEV }
        } else {
            guard let status = lowerStatus(Self.guestPath(source)) else {
                try requireExists(Self.guestPath(source))
                throw Errno.ENOENT
            }
            if status.st_mode & S_IFMT == S_IFDIR { throw Errno.EXDEV }
            node = try copyUp(overlay, source)
        }
        if source == destination { return }
        if node.isDirectory && destination.starts(with: source) { throw Errno.EINVAL }
        let destinationBelow = lowerStatus(Self.guestPath(destination))
        if overlay.lowerShowsThrough(destination), let below = destinationBelow, !overlay.isUpper(destination) {
            // The destination is only in the lower layer: what rename(2) checks against it.
            if below.st_mode & S_IFMT == S_IFDIR {
                guard node.isDirectory else { throw Errno.EISDIR }
                guard try isEmptyDirectory(overlay, destination) else { throw Errno.ENOTEMPTY }
            } else if node.isDirectory {
                throw Errno.ENOTDIR
            }
        } else if overlay.isUpper(destination), let existing = try? tmp.lookup(destination, in: overlay.upper), existing.isDirectory,
                  node.isDirectory, try !isEmptyDirectory(overlay, destination) {
            throw Errno.ENOTEMPTY
        }
        try upperDirectory(overlay, Array(destination.dropLast()))
        try tmp.rename(source, to: destination, sourceRoot: overlay.upper, destinationRoot: overlay.upper)
        if node.isDirectory {
            overlay.directoryRemoved(source)
            if destinationBelow != nil { overlay.makeOpaque(destination) }  // nothing of a lower directory there shows through
        }
        if sourceBelow { overlay.addWhiteout(source) }
    }

    /// link(2) within the writable root: the source copied up, the link made in the upper tree.
    func linkInRoot(_ overlay: RootOverlay, _ source: [String], to destination: [String]) throws(Errno) {
        let node = try copyUp(overlay, source)
        guard !node.isDirectory else { throw Errno.EPERM }
        if !overlay.isUpper(destination) { try prepareCreate(overlay, destination) }
        try tmp.link(node, at: destination, in: overlay.upper)
    }
}

extension MemoryNode {
    /// Takes a copied-up file's times from the lower layer's, as overlayfs keeps them.
    func keepTimes(of status: stat) {
        modified = status.st_mtim
        accessed = status.st_atim
        changed = status.st_ctim
    }
}
