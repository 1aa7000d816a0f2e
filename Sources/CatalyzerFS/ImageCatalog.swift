import CatalyzerImage
import Glibc
import Synchronization

/// The images of the store as the mount sees them, kept current without remounting.
///
/// Every lookup and directory listing first checks whether `index.json` changed, with one
/// `stat`: the store replaces the index by rename on every create and remove, so a change of
/// inode, size or mtime means new names. Only then is the index read again. Images are opened
/// (manifest and config read and verified) on first lookup, once per version.
///
/// A version stays while the kernel holds any of its inodes (its lookup count, kept as FUSE
/// defines it: +1 per entry replied, -n per forget) or while it is the current one of its name;
/// a replaced or removed version is dropped once the kernel forgets it. Open files keep their
/// version alive by reference, so reads never depend on the table.
final class ImageCatalog: Sendable {
    let store: ImageStore
    private let registry: StatisticsRegistry

    /// What identifies a version of `index.json` without reading it.
    private struct IndexSignature: Equatable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var modified: timespec

        static func == (a: Self, b: Self) -> Bool {
            a.device == b.device && a.inode == b.inode && a.size == b.size
                && a.modified.tv_sec == b.modified.tv_sec && a.modified.tv_nsec == b.modified.tv_nsec
        }
    }

    private struct Version: Hashable {
        var name: String
        var digest: Digest
        init(name: String, digest: Digest) {
            self.name = name
            self.digest = digest
        }
        init(_ node: ImageNode) {
            self.init(name: node.image.name, digest: node.image.manifestDescriptor.digest)
        }
    }

    private struct State {
        var signature: IndexSignature?
        var loaded = false
        /// Name → manifest digest, as the index last said.
        var current: [String: Digest] = [:]
        var nodes: [Version: ImageNode] = [:]
        /// The opened versions by inode slot, and the kernel's lookup count of each.
        var slots: [Int: ImageNode] = [:]
        var lookups: [Int: UInt64] = [:]
        var nextSlot = 0

        func isCurrent(_ node: ImageNode) -> Bool {
            current[node.image.name] == node.image.manifestDescriptor.digest
        }

        /// Drops `slot` if it is neither current nor known to the kernel.
        mutating func dropIfUnused(_ slot: Int) {
            guard let node = slots[slot], lookups[slot, default: 0] == 0, !isCurrent(node) else { return }
            slots[slot] = nil
            lookups[slot] = nil
            nodes[Version(node)] = nil
        }
    }

    private let state = Mutex(State())

    init(store: ImageStore, registry: StatisticsRegistry, sources: BlobSources? = nil) {
        self.store = store
        self.registry = registry
        self.sources = sources ?? BlobSources(store: store, options: MountOptions(), remote: nil, log: nil)
    }

    let sources: BlobSources

    /// Re-reads the index if it changed since the last call.
    func refresh() throws(ImageError) {
        var info = stat()
        let signature: IndexSignature?
        if stat(store.root + "/index.json", &info) == 0 {
            signature = IndexSignature(device: UInt64(info.st_dev), inode: UInt64(info.st_ino),
                                       size: Int64(info.st_size), modified: info.st_mtim)
        } else if errno == ENOENT {
            signature = nil
        } else {
            throw .io(operation: "stat", path: store.root + "/index.json", errno: errno)
        }
        let unchanged = state.withLock { $0.loaded && $0.signature == signature }
        if unchanged { return }
        var current: [String: Digest] = [:]
        // No index.json yet: an empty store, whose first image will appear on a later refresh.
        let manifests = signature == nil ? [] : try store.index().manifests
        for descriptor in manifests {
            if let name = descriptor.annotations?[OCIIndex.refNameAnnotation], ImageStore.isValidName(name) {
                current[name] = descriptor.digest
            }
        }
        state.withLock { state in
            state.signature = signature
            state.current = current
            state.loaded = true
            for slot in Array(state.slots.keys) { state.dropIfUnused(slot) }
        }
    }

    /// The image names, sorted, each with its directory's inode if the mount has opened the
    /// current version (listing does not open images: that would read every config).
    func listing() throws(ImageError) -> [(name: String, inode: UInt64?)] {
        try refresh()
        return state.withLock { state in
            state.current.sorted { $0.key < $1.key }.map { name, digest in
                (name, state.nodes[Version(name: name, digest: digest)]?.directoryInode)
            }
        }
    }

    /// The current version of image `name`, opened on first use; nil when there is no such image.
    func node(named name: String) throws(ImageError) -> ImageNode? {
        try refresh()
        let known: (listed: Bool, node: ImageNode?) = state.withLock { state in
            guard let digest = state.current[name] else { return (false, nil) }
            return (true, state.nodes[Version(name: name, digest: digest)])
        }
        guard known.listed else { return nil }
        if let node = known.node { return node }
        // Opening reads and verifies the manifest and config: done outside the lock.
        let image: Image
        do {
            image = try store.open(name)
        } catch .imageNotFound {
            return nil
        }
        let opened = Version(name: name, digest: image.manifestDescriptor.digest)
        return state.withLock { state in
            if let raced = state.nodes[opened] { return raced }
            let node = ImageNode(image: image, source: sources.source(for: image), slot: state.nextSlot, statistics: registry.statistics(for: name))
            state.nextSlot += 1
            state.slots[node.slot] = node
            state.nodes[opened] = node
            return node
        }
    }

    /// The version with inode slot `slot`, if the mount has it.
    func node(slot: Int) -> ImageNode? {
        state.withLock { $0.slots[slot] }
    }

    /// Counts an entry of `node` about to be replied to the kernel. Puts the node back if a
    /// concurrent refresh dropped it since it was found.
    func remember(_ node: ImageNode) {
        state.withLock { state in
            state.slots[node.slot] = node
            state.lookups[node.slot, default: 0] += 1
        }
    }

    /// The kernel forgot `count` lookups of an inode of `slot`.
    func forget(slot: Int, count: UInt64) {
        state.withLock { state in
            guard let held = state.lookups[slot] else { return }
            state.lookups[slot] = held - min(held, count)
            state.dropIfUnused(slot)
        }
    }
}
