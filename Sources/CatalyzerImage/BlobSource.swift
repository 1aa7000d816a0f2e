import Foundation
import Glibc
import Synchronization

/// Where the blobs of an image come from when something reads them (catalyzerfs, on first
/// touch). Two kinds: the store's own `blobs/` (`LocalBlobSource`), and, for an image pulled with
/// `--lazy`, the registry it came from behind a node-wide cache (`LazyBlobSource`). Every source
/// returns bytes verified against the digest; none ever returns wrong bytes.
public protocol BlobSource: Sendable {
    func blob(_ digest: Digest, size: Int64, image: String, role: String) throws(ImageError) -> [UInt8]
}

/// The store's `blobs/` directory.
public struct LocalBlobSource: BlobSource {
    public let store: ImageStore
    public init(store: ImageStore) { self.store = store }

    public func blob(_ digest: Digest, size: Int64, image: String, role: String) throws(ImageError) -> [UInt8] {
        try store.readVerifiedBlob(digest, size: size, image: image, role: role)
    }
}

/// Fetches blobs from a remote (a registry repository). Implementations bound the time a fetch
/// may take, retries included.
public protocol RemoteBlobFetcher: Sendable {
    /// `REGISTRY/REPOSITORY`, for messages.
    var location: String { get }
    /// The blob's bytes (the caller verifies them); throws a sentence saying what failed.
    func fetch(_ digest: Digest, size: Int64, role: String) throws -> [UInt8]
}

/// A lazily pulled image's blobs: the store's when it has them (the pull fetched the state, the
/// rootfs and the working set), else the node-wide cache's, else the registry's, verified and
/// then kept in the cache.
public struct LazyBlobSource: BlobSource {
    public let store: ImageStore
    public let cache: BlobCache
    public let remote: RemoteBlobFetcher

    public init(store: ImageStore, cache: BlobCache, remote: RemoteBlobFetcher) {
        self.store = store
        self.cache = cache
        self.remote = remote
    }

    public func blob(_ digest: Digest, size: Int64, image: String, role: String) throws(ImageError) -> [UInt8] {
        if store.hasBlob(digest, size: size) {
            return try store.readVerifiedBlob(digest, size: size, image: image, role: role)
        }
        if let cached = cache.read(digest, size: size) { return cached }
        let bytes: [UInt8]
        do {
            bytes = try remote.fetch(digest, size: size, role: role)
        } catch {
            throw .remoteFetchFailed(image: image, role: role, digest: digest, source: remote.location, detail: String(describing: error))
        }
        let actual = Digest(of: bytes)
        guard Int64(bytes.count) == size, actual == digest else {
            throw .remoteFetchFailed(image: image, role: role, digest: digest, source: remote.location,
                                     detail: "the registry served \(bytes.count) bytes hashing to \(actual), not the blob (refused)")
        }
        cache.insert(digest, bytes)
        return bytes
    }
}

/// A node-wide, size-bounded cache of blobs fetched from registries, shared by every lazily
/// pulled image: files named by digest in one directory, evicted least recently used first
/// once their total passes the limit. Its contents are verified on every read (a damaged file
/// is dropped and fetched again).
public final class BlobCache: Sendable {
    public let directory: String
    public let limit: Int64

    private struct State {
        var entries: [Digest: (size: Int64, lastUse: UInt64)] = [:]
        var total: Int64 = 0
        var clock: UInt64 = 0
    }
    private let state = Mutex(State())

    /// Opens (creating) the cache at `directory`; files already there count, oldest first.
    public init(directory: String, limit: Int64) throws(ImageError) {
        self.directory = directory
        self.limit = limit
        try FileIO.makeDirectories(directory, mode: 0o700)
        var found: [(Digest, Int64, Int)] = []
        for name in try FileIO.listDirectory(directory) {
            var info = stat()
            guard let digest = Digest("sha256:" + name), lstat(directory + "/" + name, &info) == 0,
                  info.st_mode & S_IFMT == S_IFREG else {
                if name.hasPrefix("tmp-") { unlink(directory + "/" + name) }
                continue
            }
            found.append((digest, Int64(info.st_size), info.st_atim.tv_sec))
        }
        state.withLock { state in
            for (digest, size, _) in found.sorted(by: { $0.2 < $1.2 }) {
                state.clock += 1
                state.entries[digest] = (size, state.clock)
                state.total += size
            }
        }
        evict()
    }

    func path(_ digest: Digest) -> String { directory + "/" + digest.hex }

    /// The cached blob, verified; nil when absent or damaged (a damaged file is removed).
    public func read(_ digest: Digest, size: Int64) -> [UInt8]? {
        guard state.withLock({ $0.entries[digest]?.size == size }) else { return nil }
        guard let bytes = try? FileIO.readFile(path(digest), limit: size), Int64(bytes.count) == size, Digest(of: bytes) == digest else {
            remove(digest)
            return nil
        }
        state.withLock { state in
            state.clock += 1
            state.entries[digest]?.lastUse = state.clock
        }
        return bytes
    }

    /// Stores a verified blob (best effort: a full disk only means it is fetched again).
    public func insert(_ digest: Digest, _ bytes: [UInt8]) {
        let temporary = directory + "/tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        let fd = Glibc.open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let written = bytes.withUnsafeBytes { raw in (try? FileIO.write(fd, raw, path: temporary)) != nil }
        close(fd)
        guard written, rename(temporary, path(digest)) == 0 else {
            unlink(temporary)
            return
        }
        state.withLock { state in
            if let old = state.entries[digest] { state.total -= old.size }
            state.clock += 1
            state.entries[digest] = (Int64(bytes.count), state.clock)
            state.total += Int64(bytes.count)
        }
        evict()
    }

    private func remove(_ digest: Digest) {
        unlink(path(digest))
        state.withLock { state in
            if let old = state.entries.removeValue(forKey: digest) { state.total -= old.size }
        }
    }

    /// Drops least recently used blobs until the total is within the limit.
    private func evict() {
        let victims: [Digest] = state.withLock { state in
            var victims: [Digest] = []
            guard state.total > limit else { return victims }
            for (digest, entry) in state.entries.sorted(by: { $0.value.lastUse < $1.value.lastUse }) {
                guard state.total > limit else { break }
                victims.append(digest)
                state.total -= entry.size
                state.entries[digest] = nil
            }
            return victims
        }
        for digest in victims { unlink(path(digest)) }
    }

    /// Bytes in the cache now.
    public var totalBytes: Int64 { state.withLock { $0.total } }

    /// Whether the cache holds `digest` (no verification).
    public func contains(_ digest: Digest) -> Bool { state.withLock { $0.entries[digest] != nil } }
}

extension ImageStore {
    /// The `index.json` annotation of an image pulled with `--lazy`: its chunks stay in the
    /// registry until touched.
    public static let lazyAnnotation = "dev.catalyzer.lazy"
    /// How to reach the origin registry of a lazy image: plain HTTP, and a CA file.
    public static let originInsecureAnnotation = "dev.catalyzer.origin.insecure"
    public static let originCAFileAnnotation = "dev.catalyzer.origin.ca-file"

    /// The node-wide blob cache's default place: next to the store's blobs.
    public var defaultBlobCacheDirectory: String { root + "/remote-cache" }
}

/// How much of an image is on this node: in the store, or (lazy images) in the blob cache.
public struct ImageLocality: Sendable, Codable, Equatable {
    public var lazy: Bool
    public var origin: String?
    /// Distinct blobs of the image (config, state, rootfs layers, chunks) and their bytes.
    public var blobs: Int
    public var bytes: Int64
    /// Of those, in the store's `blobs/`.
    public var localBlobs: Int
    public var localBytes: Int64
    /// Of those not in the store, in the node-wide cache.
    public var cachedBlobs: Int
    public var cachedBytes: Int64
}

extension ImageStore {
    /// What of `image` is here (the cache looked at is `cacheDirectory`, default
    /// `defaultBlobCacheDirectory`, where catalyzerfs keeps it unless told otherwise).
    public func locality(of image: Image, cacheDirectory: String? = nil) -> ImageLocality {
        let annotations = image.manifestDescriptor.annotations ?? [:]
        let cache = cacheDirectory ?? defaultBlobCacheDirectory
        var report = ImageLocality(lazy: annotations[Self.lazyAnnotation] == "true", origin: annotations[Self.originAnnotation],
                                   blobs: 0, bytes: 0, localBlobs: 0, localBytes: 0, cachedBlobs: 0, cachedBytes: 0)
        var seen: Set<Digest> = []
        for blob in [image.manifest.config] + image.manifest.layers where seen.insert(blob.digest).inserted {
            report.blobs += 1
            report.bytes += blob.size
            if hasBlob(blob.digest, size: blob.size) {
                report.localBlobs += 1
                report.localBytes += blob.size
            } else {
                var info = stat()
                if lstat(cache + "/" + blob.digest.hex, &info) == 0 && Int64(info.st_size) == blob.size {
                    report.cachedBlobs += 1
                    report.cachedBytes += blob.size
                }
            }
        }
        return report
    }
}
