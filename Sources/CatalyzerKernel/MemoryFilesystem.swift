import CatalyzerKVM
import Glibc

/// A file, directory or symbolic link of the in-memory writable filesystem (the guest's `/tmp`
/// and `/dev/shm`).
final class MemoryNode {
    enum Content {
        case file([UInt8])
        case directory([String: MemoryNode])
        /// A symbolic link and its target, as given to symlink(2).
        case symlink(String)
        /// A unix socket's name in the filesystem (bind(2)); connect(2) finds the socket through it.
        case socket(UnixSocketBinding)
    }

    var content: Content
    var mode: UInt32
    let inode: UInt64
    var modified: timespec
    /// Last access (st_atime): set at creation, by utimensat, and by reads as `relatime` does.
    var accessed: timespec
    /// Last status change (st_ctime): writes, chmod, chown, links, renames.
    var changed: timespec
    var owner: UInt32 = 0
    var group: UInt32 = 0
    /// Directory entries naming a file or symlink (hard links); 0 once unlinked. A directory's
    /// count is derived from its subdirectories instead (see `linkCount`).
    var links = 1
    /// While a /tmp file is mapped `MAP_SHARED`, its bytes live here instead of in `content`
    /// (which is then an empty `.file`), so every mapping and read/write see the same pages.
    var shared: SharedFileMemory?
    /// The filesystem whose capacity a file's bytes count against, until the file is gone: unlinked
    /// and no longer open (the node is freed), as on Linux's tmpfs.
    weak var account: MemoryFilesystem?
    /// What the node itself costs the sandbox's memory budget (`MemoryFilesystem.nodeCost`, plus
    /// a symlink's target), given back when it is freed.
    var metadataCharge = 0

    init(content: Content, mode: UInt32, inode: UInt64, modified: timespec? = nil) {
        self.content = content
        self.mode = mode
        self.inode = inode
        let time = modified ?? Self.now()
        self.modified = time
        self.accessed = time
        self.changed = time
    }

    deinit {
        if let account, case .file = content { account.release(size) }
        account?.releaseMetadata(metadataCharge)
    }

    static func now() -> timespec {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return now
    }

    var isDirectory: Bool {
        if case .directory = content { return true }
        return false
    }

    var isSymlink: Bool {
        if case .symlink = content { return true }
        return false
    }

    var symlinkTarget: String? {
        if case .symlink(let target) = content { return target }
        return nil
    }

    var isSocket: Bool {
        if case .socket = content { return true }
        return false
    }

    var size: Int {
        if let shared { return shared.length }
        switch content {
        case .file(let bytes): return bytes.count
        case .directory: return 4096
        case .symlink(let target): return target.utf8.count
        case .socket: return 0
        }
    }

    /// st_nlink: a directory has its own entry, its `.` and each subdirectory's `..`.
    var linkCount: Int {
        guard case .directory(let children) = content else { return links }
        return 2 + children.values.filter(\.isDirectory).count
    }

    /// The bytes of a file (a copy when they live in shared memory), nil for anything else.
    var fileBytes: [UInt8]? {
        if let shared { return shared.bytes }
        if case .file(let bytes) = content { return bytes }
        return nil
    }

    /// Records a change of the data: mtime and ctime.
    func noteModified() {
        modified = Self.now()
        changed = modified
    }

    /// Records a read as Linux's default `relatime` does: atime moves only when it is not newer
    /// than mtime or ctime, or is a day old.
    func noteAccessed() {
        let now = Self.now()
        if accessed.tv_sec <= modified.tv_sec || accessed.tv_sec <= changed.tv_sec || now.tv_sec - accessed.tv_sec >= 86400 {
            accessed = now
        }
    }

    /// The node's attributes in the layout of Linux x86-64 `struct stat`.
    func status(device: UInt64) -> stat {
        var status = stat()
        status.st_dev = UInt(device)
        status.st_ino = UInt(inode)
        let type: UInt32 = switch content {
        case .file: S_IFREG
        case .directory: S_IFDIR
        case .symlink: S_IFLNK
        case .socket: S_IFSOCK
        }
        status.st_mode = type | (mode & 0o7777)
        status.st_nlink = UInt(linkCount)
        status.st_uid = owner
        status.st_gid = group
        status.st_size = Int(size)
        status.st_blksize = 4096
        status.st_blocks = isSymlink ? 0 : (size + 511) / 512
        status.st_mtim = modified
        status.st_ctim = changed
        status.st_atim = accessed
        return status
    }
}

/// The writable in-memory filesystem mounted at the guest's `/tmp`, with a second root directory
/// for `/dev/shm` (like a bind mount of one tmpfs: same device, one capacity). It lives only as
/// long as the sandbox and never touches host storage. Its file bytes live in monitor memory, so
/// like a tmpfs it has a size limit (`capacity`); beyond it writes fail with ENOSPC.
///
/// A tmpfs's pages are RAM: every file byte is also charged to the sandbox's `MemoryAccount`
/// (`account`), the budget guest RAM, pipes and sockets draw from, so /tmp and guest memory
/// together stay within `--memory`; a write the account cannot take is ENOSPC as well. So that
/// what is charged is what the host holds, a small file's bytes are an array grown by an eighth
/// at a time, and a file past `MemoryNode.sharedThreshold` moves into a memfd (as a `MAP_SHARED`
/// mapping makes it), whose pages are allocated as written and freed (hole-punched) on truncate.
/// Nodes and names cost the budget too (`nodeCost`, `entryCost`, a symlink's target): a tree of
/// empty files or symlinks cannot grow past it either (ENOSPC), though it is not counted in
/// `bytesUsed` (statfs's blocks), as tmpfs counts inodes apart.
final class MemoryFilesystem {
    /// Host memory one node takes beside its data (the object, its times and owners), roughly.
    static let nodeCost = 256
    /// Host memory a directory entry takes: its share of the table plus its name.
    static func entryCost(_ name: String) -> Int { 64 + name.utf8.count }
    /// A device number no host filesystem uses, so `st_dev` tells /tmp apart from the rootfs.
    static let device: UInt64 = 0xCA7A
    /// The inode of `/dev/shm`'s root (`/tmp` is 1; created nodes start at 3).
    static let sharedMemoryInode: UInt64 = 2
    let root: MemoryNode
    /// The directory mounted at `/dev/shm`.
    let sharedMemoryRoot: MemoryNode
    let capacity: Int
    private(set) var bytesUsed = 0
    /// What nodes, names and symlink targets cost the memory budget (see `nodeCost`).
    private(set) var metadataBytes = 0
    /// The sandbox's memory budget; what is already stored is charged to it when it is set.
    var account: MemoryAccount? {
        didSet {
            oldValue?.release(bytesUsed + metadataBytes)
            account?.forceCharge(bytesUsed + metadataBytes)
        }
    }

    /// Charges `bytes` of nodes and names; ENOSPC when the budget cannot take them.
    func chargeMetadata(_ bytes: Int) throws(Errno) {
        if let account, !account.charge(bytes) { throw Errno.ENOSPC }
        metadataBytes += bytes
    }

    fileprivate func releaseMetadata(_ bytes: Int) {
        let released = min(bytes, metadataBytes)
        metadataBytes -= released
        account?.release(released)
    }

    /// What a restored tree costs (it was within the budget when checkpointed): every node's
    /// charge is set and the total recorded, to be charged when `account` is set.
    func noteRestoredMetadata(nodes: [MemoryNode]) {
        for node in nodes where node !== root && node !== sharedMemoryRoot {
            node.metadataCharge = Self.nodeCost + (node.symlinkTarget?.utf8.count ?? 0)
            metadataBytes += node.metadataCharge
        }
        for node in nodes {
            guard case .directory(let children) = node.content else { continue }
            metadataBytes += children.keys.reduce(0) { $0 + Self.entryCost($1) }
        }
    }
    private(set) var nextInode: UInt64 = 2

    init(capacity: Int) {
        self.capacity = capacity
        root = MemoryNode(content: .directory([:]), mode: 0o1777, inode: 1)
        sharedMemoryRoot = MemoryNode(content: .directory([:]), mode: 0o1777, inode: Self.sharedMemoryInode)
    }

    /// A checkpoint's /tmp: `root` and the nodes under it, with the inode counter where it was.
    init(capacity: Int, root: MemoryNode, sharedMemoryRoot: MemoryNode? = nil, nextInode: UInt64, bytesUsed: Int) {
        self.capacity = capacity
        self.root = root
        self.sharedMemoryRoot = sharedMemoryRoot
            ?? MemoryNode(content: .directory([:]), mode: 0o1777, inode: Self.sharedMemoryInode)
        self.nextInode = nextInode
        self.bytesUsed = bytesUsed
    }

    /// Accounts for a file growing (positive) or shrinking (negative) by `delta` bytes.
    func charge(_ delta: Int) throws(Errno) {
        guard delta <= capacity - bytesUsed else { throw Errno.ENOSPC }
        if delta > 0, let account, !account.charge(delta) { throw Errno.ENOSPC }
        if delta < 0 { account?.release(-delta) }
        bytesUsed += delta
    }

    /// Bytes a write may still add: the capacity left, within the sandbox's memory budget.
    var bytesFree: Int { min(capacity - bytesUsed, account?.available ?? Int.max) }

    /// `charge` for a change of `node`'s size.
    func charge(_ delta: Int, for node: MemoryNode) throws(Errno) {
        try charge(delta)
    }

    /// The bytes of a file that no longer exists (see `MemoryNode.account`).
    fileprivate func release(_ bytes: Int) {
        bytesUsed -= bytes
        account?.release(bytes)
    }

    /// The node at `components` below `root` (the /tmp root by default), or ENOENT/ENOTDIR.
    /// Symlinks are not followed here: `Filesystem.resolve` does that for whole paths.
    func lookup(_ components: [String], in root: MemoryNode? = nil) throws(Errno) -> MemoryNode {
        var node = root ?? self.root
        for name in components {
            guard case .directory(let children) = node.content else { throw Errno.ENOTDIR }
            guard let child = children[name] else { throw Errno.ENOENT }
            node = child
        }
        return node
    }

    /// A new node that is in no directory (memfd_create), charged like a /tmp file.
    func makeUnlinkedFile(mode: UInt32) throws(Errno) -> MemoryNode {
        try chargeMetadata(Self.nodeCost)
        nextInode += 1
        let node = MemoryNode(content: .file([]), mode: mode, inode: nextInode)
        node.links = 0
        node.account = self
        node.metadataCharge = Self.nodeCost
        return node
    }

    /// Creates `name` in the directory at `parent`; EEXIST if it is already there.
    func create(_ components: [String], directory: Bool, mode: UInt32, in root: MemoryNode? = nil) throws(Errno) -> MemoryNode {
        try create(components, content: directory ? .directory([:]) : .file([]), mode: mode, in: root)
    }

    /// Creates a file, directory or symlink at `components`; EEXIST if the name is taken.
    func create(_ components: [String], content: MemoryNode.Content, mode: UInt32, owner: UInt32 = 0, group: UInt32 = 0,
                in root: MemoryNode? = nil) throws(Errno) -> MemoryNode {
        guard let name = components.last else { throw Errno.EEXIST }
        let parent = try lookup(Array(components.dropLast()), in: root)
        guard case .directory(var children) = parent.content else { throw Errno.ENOTDIR }
        guard children[name] == nil else { throw Errno.EEXIST }
        guard name.utf8.count <= 255 else { throw Errno.ENAMETOOLONG }
        var nodeCharge = Self.nodeCost
        if case .symlink(let target) = content { nodeCharge += target.utf8.count }
        try chargeMetadata(nodeCharge + Self.entryCost(name))
        nextInode += 1
        let node = MemoryNode(content: content, mode: mode, inode: nextInode)
        node.account = self
        node.metadataCharge = nodeCharge
        node.owner = owner
        node.group = group
        children[name] = node
        parent.content = .directory(children)
        parent.noteModified()
        return node
    }

    /// Adds another name for `node` (link(2)); directories cannot be linked.
    func link(_ node: MemoryNode, at components: [String], in root: MemoryNode? = nil) throws(Errno) {
        guard !node.isDirectory else { throw Errno.EPERM }
        guard let name = components.last else { throw Errno.EEXIST }
        let parent = try lookup(Array(components.dropLast()), in: root)
        guard case .directory(var children) = parent.content else { throw Errno.ENOTDIR }
        guard children[name] == nil else { throw Errno.EEXIST }
        guard node.links > 0 else { throw Errno.ENOENT }  // an unlinked (open) file cannot regain a name
        try chargeMetadata(Self.entryCost(name))
        children[name] = node
        parent.content = .directory(children)
        parent.noteModified()
        node.links += 1
        node.changed = MemoryNode.now()
    }

    /// Moves a node, replacing a file (or empty directory) at the destination, as rename(2) does.
    func rename(_ source: [String], to destination: [String], sourceRoot: MemoryNode? = nil,
                destinationRoot: MemoryNode? = nil) throws(Errno) {
        guard let sourceName = source.last, let destinationName = destination.last else { throw Errno.EBUSY }
        let sourceParent = try lookup(Array(source.dropLast()), in: sourceRoot)
        let destinationParent = try lookup(Array(destination.dropLast()), in: destinationRoot)
        guard case .directory(var sourceChildren) = sourceParent.content else { throw Errno.ENOTDIR }
        guard let node = sourceChildren[sourceName] else { throw Errno.ENOENT }
        guard case .directory(var destinationChildren) = destinationParent.content else { throw Errno.ENOTDIR }
        if (sourceRoot ?? root) === (destinationRoot ?? root),
           destination.starts(with: source) && destination.count > source.count { throw Errno.EINVAL }
        let replaced = destinationChildren[destinationName]
        if let existing = replaced, existing !== node {
            if case .directory(let grandchildren) = existing.content {
                guard node.isDirectory else { throw Errno.EISDIR }
                guard grandchildren.isEmpty else { throw Errno.ENOTEMPTY }
            } else if node.isDirectory {
                throw Errno.ENOTDIR
            }
        }
        if replaced === node { return }  // two names of one file: nothing happens
        // The entry moves under its new name; a replaced entry is gone.
        try chargeMetadata(Self.entryCost(destinationName))
        releaseMetadata(Self.entryCost(sourceName) + (replaced == nil ? 0 : Self.entryCost(destinationName)))
        sourceChildren[sourceName] = nil
        sourceParent.content = .directory(sourceChildren)
        if sourceParent === destinationParent { destinationChildren = sourceChildren }
        destinationChildren[destinationName] = node
        destinationParent.content = .directory(destinationChildren)
        if let replaced { dropLink(replaced) }
        sourceParent.noteModified()
        destinationParent.noteModified()
        node.changed = MemoryNode.now()
    }

    /// Removes `name`; directories must be empty and are removed only when `directory` is true.
    func remove(_ components: [String], directory: Bool, in root: MemoryNode? = nil) throws(Errno) {
        guard let name = components.last else { throw Errno.EINVAL }
        let parent = try lookup(Array(components.dropLast()), in: root)
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
        parent.noteModified()
        releaseMetadata(Self.entryCost(name))
        dropLink(node)
    }

    /// One directory entry for `node` went away. Its bytes are freed when the node is (its last
    /// name gone and its last open file closed).
    private func dropLink(_ node: MemoryNode) {
        guard !node.isDirectory else { return }
        node.links = max(0, node.links - 1)
        node.changed = MemoryNode.now()
    }
}
