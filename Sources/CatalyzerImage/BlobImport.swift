import Crypto
import Foundation
import Glibc

/// Writing an image whose blobs arrive from elsewhere (a registry pull), with the same guarantees
/// as `createImage`: every blob is verified against its digest before it gets its name in
/// `blobs/`, blobs are complete files or absent, and the image's name is published last, only
/// once every blob it refers to is stored and the filesystem is synced.
///
/// An import holds the store's gc lock shared for its whole life (like `createImage`), so `image
/// gc` never deletes blobs a pull has stored but not named yet. Blobs stored by an import that
/// failed stay in the store: a rerun finds them and transfers only what is missing (`gc` removes
/// them if the image is abandoned).
public final class ImageImport: Sendable {
    public let store: ImageStore
    private let gcLock: SendableLock

    init(store: ImageStore) throws(ImageError) {
        self.store = store
        try store.prepareForWriting()
        gcLock = SendableLock(try StoreLock(path: store.gcLockPath, mode: .shared, store: store.root))
    }

    /// A writer for one blob that is expected to hash to `digest` and have `size` bytes.
    public func makeBlobWriter(expecting digest: Digest, size: Int64) throws(ImageError) -> BlobWriter {
        try BlobWriter(store: store, expected: digest, size: size)
    }

    /// Stores small blobs received whole (a manifest, a config), verified: throws
    /// `BlobWriter.Mismatch` for bytes that are not `digest`'s, else `ImageError`.
    @discardableResult
    public func storeBlob(_ bytes: [UInt8], expecting digest: Digest) throws -> BlobWriter.Outcome {
        let writer = try makeBlobWriter(expecting: digest, size: Int64(bytes.count))
        try bytes.withUnsafeBytes { raw in Result { () throws(ImageError) in try writer.write(raw) } }.get()
        return try writer.finish()
    }

    /// Checks a config received from elsewhere the way opening the image will, before any of its
    /// chunks are transferred: a hostile or foreign config is refused up front.
    public func checkConfig(_ bytes: [UInt8], manifest: OCIManifest, image: String) throws(ImageError) -> ImageConfig {
        try Image.checkedConfig(bytes, manifest: manifest, image: image)
    }

    /// Publishes `name` for the manifest `manifestBytes` (stored here first): opens the image
    /// (which re-reads and verifies manifest and config), checks that every layer blob is stored
    /// with its size, syncs the filesystem, and only then names it. `annotations` are recorded on
    /// the name's entry in `index.json` (e.g. where the image was pulled from).
    /// `remoteBlobs` (a lazy pull) may be missing: they are fetched on first touch.
    public func publish(name: String, manifestBytes: [UInt8], annotations: [String: String] = [:], remoteBlobs: Set<Digest> = []) throws -> Image {
        guard ImageStore.isValidName(name) else { throw ImageError.invalidName(name) }
        let digest = Digest(of: manifestBytes)
        try storeBlob(manifestBytes, expecting: digest)
        let descriptor = Descriptor(mediaType: MediaType.ociManifest, digest: digest, size: Int64(manifestBytes.count),
                                    annotations: annotations.isEmpty ? nil : annotations)
        let image = try Image(store: store, name: name, manifestDescriptor: descriptor)
        for layer in image.manifest.layers where !remoteBlobs.contains(layer.digest) && !store.hasBlob(layer.digest, size: layer.size) {
            throw ImageError.blobMissing(image: name, digest: layer.digest, role: "layer", path: store.blobPath(layer.digest))
        }
        try store.syncAll()
        try store.publish(name: name, manifest: descriptor)
        return try store.open(name)
    }
}

/// Receives one blob as a stream, hashing it as it is written to a temporary file in `ingest/`;
/// `finish` renames it into `blobs/` only if its size and digest are the expected ones.
/// Used by one task at a time.
public final class BlobWriter: @unchecked Sendable {
    public let expected: Digest
    public let size: Int64
    private let store: ImageStore
    private let temporary: String
    private var fd: Int32
    private var hasher = SHA256()
    public private(set) var written: Int64 = 0

    /// What `finish` did.
    public enum Outcome: Sendable, Equatable {
        /// The blob was verified and stored.
        case stored
        /// The store had the blob already (the bytes written were verified and dropped).
        case alreadyStored
    }

    /// The bytes did not match the descriptor they were fetched for.
    public struct Mismatch: Error, Sendable, Equatable {
        public var expected: Digest
        public var actual: Digest?
        public var expectedSize: Int64
        public var actualSize: Int64
    }

    init(store: ImageStore, expected: Digest, size: Int64) throws(ImageError) {
        self.store = store
        self.expected = expected
        self.size = size
        temporary = store.ingestDirectory + "/pull-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        let fd = Glibc.open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, ImageStore.fileMode)
        guard fd >= 0 else { throw ImageError.writing("create", temporary, errno: errno, store: store.root) }
        self.fd = fd
    }

    deinit { abandon() }

    /// Appends bytes. More bytes than the descriptor's size is a mismatch, found here rather than
    /// after filling the disk with whatever a server sends.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(ImageError) {
        precondition(fd >= 0, "write after finish or abandon")
        guard written + Int64(bytes.count) <= size else {
            written += Int64(bytes.count)
            throw .blobSizeMismatch(image: "-", digest: expected, role: "received", expected: size, actual: written)
        }
        hasher.update(bufferPointer: bytes)
        do { try FileIO.write(fd, bytes, path: temporary) } catch {
            if case let .io(op, path, code) = error { throw ImageError.writing(op, path, errno: code, store: store.root) }
            throw error
        }
        written += Int64(bytes.count)
    }

    /// Whether more bytes than expected were offered to `write`.
    public var overflowed: Bool { written > size }

    /// Verifies and stores the blob. Throws `Mismatch` when the bytes are not the expected ones
    /// (nothing is stored then), `ImageError` when the store cannot be written.
    public func finish() throws -> Outcome {
        precondition(fd >= 0, "finish after finish or abandon")
        let actual = Digest(finalizing: hasher)
        guard written == size, actual == expected else {
            abandon()
            throw Mismatch(expected: expected, actual: written == size ? actual : nil, expectedSize: size, actualSize: written)
        }
        let closed = close(fd)
        fd = -1
        guard closed == 0 else {
            let code = errno
            unlink(temporary)
            throw ImageError.writing("close", temporary, errno: code, store: store.root)
        }
        if store.hasBlob(expected, size: size) {
            unlink(temporary)
            return .alreadyStored
        }
        guard rename(temporary, store.blobPath(expected)) == 0 else {
            let code = errno
            unlink(temporary)
            throw ImageError.writing("rename", store.blobPath(expected), errno: code, store: store.root)
        }
        return .stored
    }

    /// Drops the temporary file (idempotent).
    public func abandon() {
        guard fd >= 0 else { return }
        close(fd)
        fd = -1
        unlink(temporary)
    }
}

/// A `StoreLock` held by a `Sendable` owner; only its lifetime matters.
final class SendableLock: @unchecked Sendable {
    let lock: StoreLock
    init(_ lock: StoreLock) { self.lock = lock }
}

extension ImageStore {
    /// Starts writing an image whose blobs come from elsewhere (see `ImageImport`).
    public func beginImport() throws(ImageError) -> ImageImport {
        try ImageImport(store: self)
    }

    /// Whether the store holds blob `digest` as a regular file of `size` bytes (the check
    /// `createImage` uses for deduplication; content is verified whenever a blob is read).
    public func hasBlob(_ digest: Digest, size: Int64) -> Bool {
        var info = stat()
        return lstat(blobPath(digest), &info) == 0 && info.st_mode & S_IFMT == S_IFREG && Int64(info.st_size) == size
    }

    /// Reads blob `digest` whole, verified against its digest and size.
    public func readBlob(_ digest: Digest, size: Int64, image: String, role: String) throws(ImageError) -> [UInt8] {
        try readVerifiedBlob(digest, size: size, image: image, role: role)
    }
}
