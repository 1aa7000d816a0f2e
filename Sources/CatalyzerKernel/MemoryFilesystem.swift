import Glibc

/// A file or directory of the in-memory writable filesystem (the guest's `/tmp`).
final class MemoryNode {
    enum Content {
        case file([UInt8])
        case directory([String: MemoryNode])
    }

    var content: Content
    var mode: UInt32
    let inode: UInt64
    var modified: timespec

    init(content: Content, mode: UInt32, inode: UInt64, modified: timespec? = nil) {
        self.content = content
        self.mode = mode
        self.inode = inode
        if let modified {
            self.modified = modified
        } else {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            self.modified = now
        }
    }

    var isDirectory: Bool {
        if case .directory = content { return true }
        return false
    }

    var size: Int {
        switch content {
        case .file(let bytes): return bytes.count
        case .directory: return 4096
        }
    }

    /// The node's attributes in the layout of Linux x86-64 `struct stat`.
    func status(device: UInt64) -> stat {
        var status = stat()
        status.st_dev = UInt(device)
        status.st_ino = UInt(inode)
        status.st_mode = (isDirectory ? S_IFDIR : S_IFREG) | (mode & 0o7777)
        status.st_nlink = isDirectory ? 2 : 1
        status.st_size = Int(size)
        status.st_blksize = 4096
        status.st_blocks = (size + 511) / 512
        status.st_mtim = modified
        status.st_ctim = modified
        status.st_atim = modified
        return status
    }
}

/// The writable in-memory filesystem mounted at the guest's `/tmp`. It lives only as long as the
/// sandbox and never touches host storage. Its file bytes live in monitor memory, so like a tmpfs
/// it has a size limit (`capacity`); beyond it writes fail with ENOSPC.
final class MemoryFilesystem {
    /// A device number no host filesystem uses, so `st_dev` tells /tmp apart from the rootfs.
    static let device: UInt64 = 0xCA7A
    let root: MemoryNode
    let capacity: Int
    private(set) var bytesUsed = 0
    private(set) var nextInode: UInt64 = 2

    init(capacity: Int) {
        self.capacity = capacity
        root = MemoryNode(content: .directory([:]), mode: 0o1777, inode: 1)
    }

    /// A checkpoint's /tmp: `root` and the nodes under it, with the inode counter where it was.
    init(capacity: Int, root: MemoryNode, nextInode: UInt64, bytesUsed: Int) {
        self.capacity = capacity
        self.root = root
        self.nextInode = nextInode
        self.bytesUsed = bytesUsed
    }

    /// Accounts for a file growing (positive) or shrinking (negative) by `delta` bytes.
    func charge(_ delta: Int) throws(Errno) {
        guard delta <= capacity - bytesUsed else { throw Errno.ENOSPC }
        bytesUsed += delta
    }

    /// The node at `components` below the root, or ENOENT/ENOTDIR.
    func lookup(_ components: [String]) throws(Errno) -> MemoryNode {
        var node = root
        for name in components {
            guard case .directory(let children) = node.content else { throw Errno.ENOTDIR }
            guard let child = children[name] else { throw Errno.ENOENT }
            node = child
        }
        return node
    }

    /// Creates `name` in the directory at `parent`; EEXIST if it is already there.
    func create(_ components: [String], directory: Bool, mode: UInt32) throws(Errno) -> MemoryNode {
        guard let name = components.last else { throw Errno.EEXIST }
        let parent = try lookup(Array(components.dropLast()))
        guard case .directory(var children) = parent.content else { throw Errno.ENOTDIR }
        guard children[name] == nil else { throw Errno.EEXIST }
        nextInode += 1
        let node = MemoryNode(content: directory ? .directory([:]) : .file([]), mode: mode, inode: nextInode)
        children[name] = node
        parent.content = .directory(children)
        return node
    }

    /// Moves a node, replacing a file (or empty directory) at the destination, as rename(2) does.
    func rename(_ source: [String], to destination: [String]) throws(Errno) {
        guard let sourceName = source.last, let destinationName = destination.last else { throw Errno.EBUSY }
        let sourceParent = try lookup(Array(source.dropLast()))
        let destinationParent = try lookup(Array(destination.dropLast()))
        guard case .directory(var sourceChildren) = sourceParent.content else { throw Errno.ENOTDIR }
        guard let node = sourceChildren[sourceName] else { throw Errno.ENOENT }
        guard case .directory(var destinationChildren) = destinationParent.content else { throw Errno.ENOTDIR }
        if destination.starts(with: source) && destination.count > source.count { throw Errno.EINVAL }
        if let existing = destinationChildren[destinationName], existing !== node {
            if case .directory(let grandchildren) = existing.content {
                guard node.isDirectory else { throw Errno.EISDIR }
                guard grandchildren.isEmpty else { throw Errno.ENOTEMPTY }
            } else if node.isDirectory {
                throw Errno.ENOTDIR
            }
        }
        sourceChildren[sourceName] = nil
        sourceParent.content = .directory(sourceChildren)
        if sourceParent === destinationParent { destinationChildren = sourceChildren }
        destinationChildren[destinationName] = node
        destinationParent.content = .directory(destinationChildren)
    }

    /// Removes `name`; directories must be empty and are removed only when `directory` is true.
    func remove(_ components: [String], directory: Bool) throws(Errno) {
        guard let name = components.last else { throw Errno.EINVAL }
        let parent = try lookup(Array(components.dropLast()))
        guard case .directory(var children) = parent.content else { throw Errno.ENOTDIR }
        guard let node = children[name] else { throw Errno.ENOENT }
        if case .directory(let grandchildren) = node.content {
            guard directory else { throw Errno.EISDIR }
            guard grandchildren.isEmpty else { throw Errno.ENOTEMPTY }
        } else if directory {
            throw Errno.ENOTDIR
        }
        children[name] = nil
        parent.content = .directory(children)
        if !node.isDirectory { bytesUsed -= node.size }
    }
}
