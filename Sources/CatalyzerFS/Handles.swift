/// An errno for a FUSE reply.
struct Errno: Error, Sendable {
    let code: Int32
}

/// A file handle: what `open` found, held until `release`.
final class OpenFile: Sendable {
    enum Content: Sendable {
        /// An image's memory, read chunk by chunk.
        case memory(ImageNode)
        /// Small content read whole at open (state, manifest, `/.stats` snapshot).
        case bytes([UInt8])
    }

    let content: Content
    /// Keep the page cache across opens (image files never change). `/.stats` changes on every
    /// read, so it bypasses the page cache instead.
    let keepCache: Bool
    /// For a memory file: marks its image version in use while the handle lives.
    private let lease: ImageLeases.Lease?

    init(_ content: Content, keepCache: Bool, lease: ImageLeases.Lease? = nil) {
        self.content = content
        self.keepCache = keepCache
        self.lease = lease
    }
}

/// A directory handle: the listing taken at `opendir`, so offsets stay stable while the store changes.
final class OpenDirectory: Sendable {
    struct Entry: Sendable {
        var name: String
        var inode: UInt64
        var isDirectory: Bool
    }

    let entries: [Entry]

    init(_ entries: [Entry]) { self.entries = entries }
}
