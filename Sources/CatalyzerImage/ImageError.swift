import Glibc

/// Everything that can go wrong with images and the store. Each message says what failed, where
/// (store, image, blob, chunk) and what the user can do about it.
public enum ImageError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No image of that name in the store.
    case imageNotFound(name: String, store: String)
    /// The name cannot be used as an image name.
    case invalidName(String)
    /// A blob named by a manifest is not in the store.
    case blobMissing(image: String, digest: Digest, role: String, path: String)
    /// A blob has another size than its descriptor says: it was truncated or appended to.
    case blobSizeMismatch(image: String, digest: Digest, role: String, expected: Int64, actual: Int64)
    /// A blob's content does not hash to its digest.
    case blobCorrupt(image: String, digest: Digest, role: String, actualDigest: Digest)
    /// A blob path holds something other than a regular file (a FIFO, a device, a directory, a
    /// symbolic link). The store only ever writes regular files, so this is tampering; reading
    /// it could block forever or reach outside the store, so it is never opened for reading.
    case blobNotRegular(image: String, digest: Digest, role: String, path: String, kind: String)
    /// A chunk blob hashes correctly but does not decompress to its chunk.
    case chunkUndecodable(image: String, index: Int, digest: Digest, detail: String)
    /// The manifest or config is not something this catalyzer can read.
    case invalidManifest(image: String, detail: String)
    /// The store directory is not an image store (or a damaged one).
    case invalidStore(path: String, detail: String)
    /// The store exists but this user may not read it (it is private to its owner).
    case storeNotReadable(path: String)
    /// The store exists but cannot be written.
    case storeNotWritable(path: String, detail: String)
    /// The disk filled up while writing.
    case noSpace(path: String)
    /// The input to `image create` is unusable.
    case invalidInput(String)
    /// A file of the store's layout (index.json, oci-layout) is not a regular file.
    case notRegularFile(path: String, kind: String)
    /// A system call failed.
    case io(operation: String, path: String, errno: Int32)
    /// A lazily pulled image's blob could not be fetched from its registry (after the retries).
    case remoteFetchFailed(image: String, role: String, digest: Digest, source: String, detail: String)

    public var description: String {
        switch self {
        case let .imageNotFound(name, store):
            return "no image named '\(name)' in the store at \(store) (see `catalyzer image ls`)"
        case let .invalidName(name):
            return "'\(name)' is not a valid image name: use 1-128 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"
        case let .blobMissing(image, digest, role, path):
            return "image '\(image)': \(role) blob \(digest) is missing (\(path)); the store is damaged: re-create or re-pull the image"
        case let .blobSizeMismatch(image, digest, role, expected, actual):
            return "image '\(image)': \(role) blob \(digest) has \(actual) bytes, expected \(expected) (truncated or overwritten); the store is damaged: re-create or re-pull the image"
        case let .blobCorrupt(image, digest, role, actualDigest):
            return "image '\(image)': \(role) blob \(digest) is corrupt (its content hashes to \(actualDigest)); the store is damaged: re-create or re-pull the image"
        case let .blobNotRegular(image, digest, role, path, kind):
            return "image '\(image)': \(role) blob \(digest) is \(kind), not a regular file (\(path)); the store only writes regular files, so something else put it there: remove \(path), then re-create or re-pull the image"
        case let .chunkUndecodable(image, index, digest, detail):
            return "image '\(image)': chunk \(index) (blob \(digest)) does not decompress: \(detail); the image was written wrongly: re-create it"
        case let .invalidManifest(image, detail):
            return "image '\(image)': manifest is not readable by this catalyzer: \(detail)"
        case let .invalidStore(path, detail):
            return "\(path) is not a usable image store: \(detail)"
        case let .storeNotReadable(path):
            return "permission denied on the image store at \(path): it is private to its owner, because images hold function memory (secrets included); run catalyzer as that user (e.g. with sudo)"
        case let .storeNotWritable(path, detail):
            return "the image store at \(path) is not writable (\(detail)); pass a writable --store or set CATALYZER_STORE"
        case let .noSpace(path):
            return "no space left on the device holding \(path); nothing was published: free space, then run `catalyzer image gc`"
        case let .invalidInput(detail):
            return detail
        case let .notRegularFile(path, kind):
            return "\(path) is \(kind), not a regular file; the store only writes regular files, so something else put it there: remove it and restore the file from a backup"
        case let .io(operation, path, code):
            return "\(operation) \(path): \(String(cString: strerror(code)))"
        case let .remoteFetchFailed(image, role, digest, source, detail):
            return "image '\(image)': \(role) blob \(digest) could not be fetched from the registry \(source): \(detail); the image was pulled with --lazy, so its chunks come from there: check that the registry is reachable, or pull the image without --lazy"
        }
    }

    /// Maps an errno from writing into the store to the most helpful error.
    static func writing(_ operation: String, _ path: String, errno code: Int32, store: String) -> ImageError {
        switch code {
        case ENOSPC, EDQUOT: .noSpace(path: store)
        case EROFS, EACCES, EPERM: .storeNotWritable(path: store, detail: "\(operation) \(path): \(String(cString: strerror(code)))")
        default: .io(operation: operation, path: path, errno: code)
        }
    }
}
