import CatalyzerImage
import Glibc
import Synchronization

/// The filesystem's behaviour, in Swift types: what each inode is, its attributes, listings,
/// opens and reads. `LowLevelOperations` turns FUSE requests into calls on it.
///
/// Layout: `/` lists `.stats` and one directory per image; `/NAME` holds `memory`, `state` and
/// `manifest.json`.
final class Filesystem: Sendable {
    let catalog: ImageCatalog
    let statistics: StatisticsRegistry
    let cache: ChunkCache
    let reader: MemoryReader
    let prefetcher: Prefetcher
    /// Image versions with open memory files (running sandboxes), for `gc`.
    let leases = ImageLeases()
    let options: MountOptions
    /// Readahead in bytes: the option, or matched to the chunk size at mount.
    let readahead: Int64
    let log: Log
    /// The session, once created; working-set prefetch needs it to notify the kernel.
    let session = Mutex<SessionHandle?>(nil)
    private let mounted: timespec

    /// How long the kernel may trust what it was told. Names under `/` can change at any time
    /// (images created, replaced, removed), so they are looked up again on every path walk. An
    /// image directory's content and its files' attributes never change (a replaced image gets
    /// new inodes), so they are cached for long.
    static let imageNameTimeout = 0.0
    static let immutableTimeout = 3600.0

    /// Zeros mapped for replies: the largest read the kernel sends by default (256 pages).
    /// Longer zero runs are answered with several pieces pointing at it.
    static let zeroBufferSize = 1 << 20

    init(store: ImageStore, options: MountOptions, log: Log, remote: RemoteFetcherFactory? = nil) throws(FilesystemError) {
        statistics = StatisticsRegistry()
        catalog = ImageCatalog(store: store, registry: statistics, sources: BlobSources(store: store, options: options, remote: remote, log: log))
        cache = ChunkCache(capacity: options.cacheSize)
        guard let zeros = ZeroBuffer(size: Self.zeroBufferSize) else {
            throw .startFailed(detail: "cannot map \(Self.zeroBufferSize) bytes of zeros: \(String(cString: strerror(errno)))")
        }
        reader = MemoryReader(cache: cache, zeros: zeros, log: log)
        prefetcher = Prefetcher(reader: reader, log: log)
        self.options = options
        readahead = options.readahead ?? Readahead.matchingChunkSize(of: store)
        self.log = log
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        mounted = now
    }

    /// What an inode number names.
    enum Node {
        case root
        case stats
        case directory(ImageNode)
        case file(ImageNode, ImageFile)
    }

    func node(_ inode: UInt64) -> Node? {
        switch inode {
        case InodeNumber.root: return .root
        case InodeNumber.stats: return .stats
        default:
            guard let (slot, file) = InodeNumber.decode(inode), let image = catalog.node(slot: slot) else { return nil }
            return file.map { .file(image, $0) } ?? .directory(image)
        }
    }

    // MARK: Attributes

    /// The attributes of `inode` and how long the kernel may cache them.
    func attributes(_ inode: UInt64) -> Result<(attributes: stat, timeout: Double), Errno> {
        guard let node = node(inode) else { return .failure(Errno(code: ENOENT)) }
        return .success((attributes(node, inode: inode), attributeTimeout(node)))
    }

    func attributes(_ node: Node, inode: UInt64) -> stat {
        var attributes = stat()
        attributes.st_ino = UInt(inode)
        attributes.st_blksize = 4096
        attributes.st_mtim = mounted
        attributes.st_ctim = mounted
        attributes.st_atim = mounted
        switch node {
        case .root:
            attributes.st_mode = S_IFDIR | 0o555
            attributes.st_nlink = 2
        case .stats:
            // Size 0, as procfs files have: the content is made at open and differs from one
            // open to the next, so any size given here would be wrong for some reader. Reads
            // bypass the page cache (direct_io) and go on to the end of the content.
            attributes.st_mode = S_IFREG | 0o444
            attributes.st_nlink = 1
        case let .directory(image):
            attributes.st_mode = S_IFDIR | 0o555
            attributes.st_nlink = 2
            attributes.st_mtim = image.firstSeen
            attributes.st_ctim = image.firstSeen
        case let .file(image, file):
            attributes.st_mode = S_IFREG | 0o444
            attributes.st_nlink = 1
            attributes.st_size = Int(image.size(file))
            attributes.st_blocks = (attributes.st_size + 511) / 512
            attributes.st_mtim = image.firstSeen
            attributes.st_ctim = image.firstSeen
        }
        return attributes
    }

    /// Seconds the kernel may cache the attributes of `node`.
    func attributeTimeout(_ node: Node) -> Double {
        switch node {
        case .root: 1
        case .stats: 0
        case .directory, .file: Self.immutableTimeout
        }
    }

    // MARK: Names

    /// The entry `name` in directory `parent`, with how long the kernel may cache the name.
    /// A found image inode is counted as looked up: the caller must reply with it.
    func lookup(parent: UInt64, name: String) -> Result<(inode: UInt64, node: Node, timeout: Double), Errno> {
        switch node(parent) {
        case .root?:
            if name == ".stats" { return .success((InodeNumber.stats, .stats, Self.immutableTimeout)) }
            do {
                guard let image = try catalog.node(named: name) else { return .failure(Errno(code: ENOENT)) }
                catalog.remember(image)
                return .success((image.directoryInode, .directory(image), Self.imageNameTimeout))
            } catch {
                log.write("lookup of image '\(name)' failed: \(error)")
                return .failure(Errno(code: EIO))
            }
        case let .directory(image)?:
            guard let file = ImageFile(name: name) else { return .failure(Errno(code: ENOENT)) }
            catalog.remember(image)
            return .success((image.inode(file), .file(image, file), Self.immutableTimeout))
        case .stats?, .file?:
            return .failure(Errno(code: ENOTDIR))
        case nil:
            return .failure(Errno(code: ENOENT))
        }
    }

    /// The kernel dropped `count` lookups of `inode`.
    func forget(_ inode: UInt64, count: UInt64) {
        if let (slot, _) = InodeNumber.decode(inode) { catalog.forget(slot: slot, count: count) }
    }

    func openDirectory(_ inode: UInt64) -> Result<OpenDirectory, Errno> {
        let dots = [OpenDirectory.Entry(name: ".", inode: inode, isDirectory: true),
                    OpenDirectory.Entry(name: "..", inode: InodeNumber.root, isDirectory: true)]
        switch node(inode) {
        case .root?:
            let images: [(name: String, inode: UInt64?)]
            do { images = try catalog.listing() } catch {
                log.write("listing the store failed: \(error)")
                return .failure(Errno(code: EIO))
            }
            return .success(OpenDirectory(dots + [.init(name: ".stats", inode: InodeNumber.stats, isDirectory: false)]
                + images.map { .init(name: $0.name, inode: $0.inode ?? InodeNumber.notYetAssigned, isDirectory: true) }))
        case let .directory(image)?:
            return .success(OpenDirectory(dots + ImageFile.allCases.map {
                .init(name: $0.name, inode: image.inode($0), isDirectory: false)
            }))
        case .stats?, .file?:
            return .failure(Errno(code: ENOTDIR))
        case nil:
            return .failure(Errno(code: ENOENT))
        }
    }

    // MARK: Files

    func open(_ inode: UInt64) -> Result<OpenFile, Errno> {
        switch node(inode) {
        case .stats?:
            return .success(OpenFile(.bytes(renderStatistics()), keepCache: false))
        case let .file(image, .memory)?:
            if options.prefetch, let session = session.withLock({ $0 }) {
                prefetcher.start(image, session: session)
            }
            return .success(OpenFile(.memory(image), keepCache: true, lease: leases.lease(image.image)))
        case let .file(image, .manifest)?:
            return .success(OpenFile(.bytes(image.image.manifestBytes), keepCache: true))
        case let .file(image, .state)?:
            return openBlob(image, "state", kept: image.stateBlob) { () throws(ImageError) in try image.image.readState() }
        case let .file(image, .workingSet)?:
            let opened = openBlob(image, "working set", kept: image.workingSetBlob) { () throws(ImageError) in try image.image.readPageWorkingSet() ?? [] }
            guard case let .success(file) = opened, case let .bytes(blob) = file.content, !blob.isEmpty,
                  let session = session.withLock({ $0 }) else { return opened }
            image.workingSetStored.withLock { stored in
                guard !stored else { return }
                switch WorkingSetStore.store(blob, node: image, session: session) {
                case .stored:
                    stored = true
                case .memoryNotOpen:
                    break
                case let .failed(problem):
                    // The restore still gets every page, through FUSE reads: slower, never wrong.
                    log.write("image '\(image.image.name)': working set not put into the page cache: \(problem)")
                    stored = true
                }
            }
            return opened
        case .root?, .directory?:
            return .failure(Errno(code: EISDIR))
        case nil:
            return .failure(Errno(code: ENOENT))
        }
    }

    /// A whole blob file (state, working set): read from the store and verified against its
    /// digest on the first open in this mount, then kept in `kept` for every later open (each
    /// restore opens both; reading and hashing them again would cost a warm restore more than
    /// its guest run). The kernel keeps the bytes in the page cache too.
    private func openBlob(_ image: ImageNode, _ what: String, kept: borrowing Mutex<[UInt8]?>,
                          read: () throws(ImageError) -> [UInt8]) -> Result<OpenFile, Errno> {
        if let bytes = kept.withLock({ $0 }) { return .success(OpenFile(.bytes(bytes), keepCache: true)) }
        do {
            let bytes = try read()
            image.statistics.bytesFetched.add(UInt64(bytes.count), ordering: .relaxed)
            image.statistics.blobsFetched.add(1, ordering: .relaxed)
            kept.withLock { $0 = bytes }
            return .success(OpenFile(.bytes(bytes), keepCache: true))
        } catch {
            image.statistics.errors.add(1, ordering: .relaxed)
            log.write("open of image '\(image.image.name)' \(what) failed: \(error)")
            return .failure(Errno(code: EIO))
        }
    }

    /// Reads memory through the chunk path; counts the read for `/.stats`.
    func readMemory(_ image: ImageNode, offset: Int64, size: Int) -> Result<MemoryReader.Reply, Errno> {
        image.statistics.readsServed.add(1, ordering: .relaxed)
        do {
            let reply = try reader.read(image, offset: offset, size: size)
            image.statistics.bytesReturned.add(UInt64(reply.byteCount), ordering: .relaxed)
            return .success(reply)
        } catch {
            return .failure(Errno(code: EIO))
        }
    }

    func renderStatistics() -> [UInt8] {
        statistics.render(cache: cache.usage, inUse: leases.manifestsInUse)
    }
}
