import Glibc

/// The writable root of a sandbox that asks for one (`SandboxConfiguration.writableRoot`, an OCI
/// bundle with `root.readonly: false`): the read-only rootfs stays below, untouched, and an
/// in-memory directory tree above takes every change, as an overlayfs with a tmpfs upper would.
///
/// - A lower file is copied up (bytes, mode, owners, times) into the upper tree when it is
///   first opened for writing or its attributes change; its directories are copied up first,
///   empty (their listing merges both layers).
/// - A removed lower entry becomes a whiteout; a directory made where a whiteout was is opaque
///   (nothing of the lower directory shows through it).
/// - Renaming a lower directory (or a merged one) is EXDEV, as on overlayfs without
///   `redirect_dir`: `mv` then copies it.
///
/// The upper tree's nodes belong to the sandbox's /tmp filesystem (`MemoryFilesystem`): their
/// bytes and names count against its capacity and the sandbox's memory budget, so a guest
/// writing its root cannot grow the monitor past `--memory`.
///
/// Invariant the lookups rely on: a whiteout, or an upper entry, is only ever made inside a
/// directory that exists in the upper tree; and paths reaching here are canonical (every
/// symlink of both layers followed by `Filesystem.resolve`).
final class RootOverlay {
    /// The upper layer's `/`.
    let upper: MemoryNode
    /// Lower paths removed in the guest's view.
    private(set) var whiteouts: Set<[String]> = []
    /// Upper directories that hide the lower directory of the same path.
    private(set) var opaque: Set<[String]> = []
    /// Symlink targets of lower paths (nil: not a symlink, or absent), by canonical path. The
    /// lower layer never changes under a sandbox, so an answer holds; the table is dropped when
    /// it grows past `linkCacheLimit`, so a guest walking many paths cannot grow it unbounded.
    private var lowerLinks: [String: String?] = [:]
    private static let linkCacheLimit = 16_384
    /// Inode of the upper `/`, apart from /tmp's and the configured mounts'.
    static let upperRootInode: UInt64 = 0x6F76_6C00 << 32

    init(lowerRootMode: UInt32) {
        upper = MemoryNode(content: .directory([:]), mode: lowerRootMode & 0o7777, inode: Self.upperRootInode)
    }

    /// A checkpoint's upper layer.
    init(upper: MemoryNode, whiteouts: Set<[String]>, opaque: Set<[String]>) {
        self.upper = upper
        self.whiteouts = whiteouts
        self.opaque = opaque
    }

    /// Where `components` is served from: the upper tree (`true`, with the lookup there deciding
    /// ENOENT, ENOTDIR or the node) or the lower rootfs (`false`).
    func isUpper(_ components: [String]) -> Bool {
        var node = upper
        var belowOpaque = false
        for index in components.indices {
            guard case .directory(let children) = node.content else { return true }  // ENOTDIR from the upper lookup
            let parent = Array(components[..<index])
            if !belowOpaque && opaque.contains(parent) { belowOpaque = true }
            guard let child = children[components[index]] else {
                // Not in the upper tree: hidden (so the upper tree answers ENOENT, or takes a
                // creation) when whited out or below an opaque directory, the lower's otherwise.
                return belowOpaque || whiteouts.contains(parent + [components[index]])
            }
            node = child
        }
        return true
    }

    /// Whether the lower layer's entry at `components` shows through (nothing above it hides it).
    /// It may still not exist there: callers check.
    func lowerShowsThrough(_ components: [String]) -> Bool {
        for count in 1..<(components.count + 1) {
            let prefix = Array(components.prefix(count))
            if whiteouts.contains(prefix) { return false }
            if count < components.count && opaque.contains(prefix) { return false }
        }
        return true
    }

    /// Records that the guest removed the lower entry at `components` (and so all below it).
    func addWhiteout(_ components: [String]) {
        forget(below: components)
        whiteouts.insert(components)
    }

    /// A directory was made at `components` where a whiteout was: the lower directory of that
    /// name, if any, stays hidden below it.
    func directoryCreated(_ components: [String]) {
        guard whiteouts.remove(components) != nil else { return }
        forget(below: components)
        opaque.insert(components)
    }

    /// An upper directory at `components` is gone (removed, or renamed away).
    func directoryRemoved(_ components: [String]) {
        opaque.remove(components)
        forget(below: components)
    }

    /// An upper directory that hides whatever the lower layer has at `components` (a directory
    /// renamed over a lower one).
    func makeOpaque(_ components: [String]) {
        whiteouts.remove(components)
        forget(below: components)
        opaque.insert(components)
    }

    /// Drops whiteouts and opaque marks strictly below `components`: they described a tree that
    /// is gone from the guest's view.
    private func forget(below components: [String]) {
        whiteouts = whiteouts.filter { !($0.count > components.count && $0.starts(with: components)) }
        opaque = opaque.filter { !($0.count > components.count && $0.starts(with: components)) }
    }

    /// The cached symlink target of the lower path `path`, computed by `lookUp` on a miss.
    func lowerLinkTarget(_ path: String, lookUp: (String) -> String?) -> String? {
        if let cached = lowerLinks[path] { return cached }
        let target = lookUp(path)
        if lowerLinks.count >= Self.linkCacheLimit { lowerLinks.removeAll(keepingCapacity: true) }
        lowerLinks[path] = .some(target)
        return target
    }
}
