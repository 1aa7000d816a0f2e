import Crypto
import Dispatch
import Foundation
import Glibc

/// The rootfs a checkpointed function ran against, as it travels with the image: OCI layers (one
/// today, the whole tree) that registries and skopeo handle like any container layer.
public struct RootfsConfig: Codable, Sendable, Equatable {
    /// Where the rootfs was on the checkpointing node (a restore there uses it directly).
    public var path: String
    /// The layers, bottom first; each is also a layer of the manifest.
    public var layers: [Descriptor]

    public init(path: String, layers: [Descriptor]) {
        self.path = path
        self.layers = layers
    }

    /// `validationProblem` for the rootfs part of a config.
    func validationProblem() -> String? {
        guard !layers.isEmpty, layers.count <= 128 else { return "the rootfs has \(layers.count) layers (1 to 128 expected)" }
        for layer in layers where !MediaType.rootfsLayers.contains(layer.mediaType) {
            return "rootfs layer \(layer.digest) has media type '\(layer.mediaType)', not an OCI tar layer catalyzer unpacks (\(MediaType.rootfsLayers.sorted().joined(separator: ", ")))"
        }
        if let bad = layers.first(where: { $0.size <= 0 }) { return "rootfs layer \(bad.digest) has size \(bad.size)" }
        return nil
    }
}

/// What packing a rootfs did.
public struct RootfsLayerReport: Sendable, Codable {
    public var descriptor: Descriptor
    public var files: Int
    /// Bytes of the tar stream before compression.
    public var tarBytes: Int64
    /// True when the tree was unchanged since it was last packed into this store: nothing was read.
    public var reused: Bool
    public var seconds: Double
}

/// What making a rootfs available did.
public struct RootfsMaterialization: Sendable {
    public var path: String
    /// False when an earlier restore had unpacked these layers already.
    public var unpacked: Bool
    public var seconds: Double
}

extension ImageStore {
    var rootfsDirectory: String { root + "/rootfs" }
    var rootfsLayerCachePath: String { root + "/rootfs-layers.json" }

    /// The zstd level of rootfs layers: unpacking speed matters more than size (a layer is
    /// unpacked on every node that restores the image), and level 3 decompresses as fast as any.
    public static let rootfsLayerLevel = 3

    /// Packs the tree at `directory` into a tar+zstd layer blob (deterministic: the same tree
    /// gives the same digest, so images of one rootfs share the layer). A tree unchanged since it
    /// was last packed into this store (same paths, inodes, sizes, modes, owners, mtimes and
    /// ctimes) is not read again: its layer is reused.
    public func storeRootfsLayer(from directory: String) throws(ImageError) -> RootfsLayerReport {
        let started = DispatchTime.now()
        try prepareForWriting()
        let gcLock = try StoreLock(path: gcLockPath, mode: .shared, store: root)
        defer { withExtendedLifetime(gcLock) {} }
        let key = try Self.treeKey(directory)
        struct Cached: Codable { var key: String; var descriptor: Descriptor; var files: Int; var tarBytes: Int64 }
        let cached = (try? FileIO.readFile(rootfsLayerCachePath, limit: 16 << 20))
            .flatMap { try? JSONDecoder().decode([Cached].self, from: Data($0)) } ?? []
        if let hit = cached.first(where: { $0.key == key }), hasBlob(hit.descriptor.digest, size: hit.descriptor.size) {
            return RootfsLayerReport(descriptor: hit.descriptor, files: hit.files, tarBytes: hit.tarBytes, reused: true,
                                     seconds: Self.seconds(since: started))
        }

        let blob = try StreamingBlob(store: self)
        let compressor = ZstdCompressor(level: Self.rootfsLayerLevel) { bytes throws(ImageError) in try blob.write(bytes) }
        // The tar writer emits many small pieces (headers, padding); batch them for zstd.
        var staging: [UInt8] = []
        staging.reserveCapacity(1 << 20)
        var tar = TarWriter { bytes throws(ImageError) in
            // What is staged goes first whenever anything bypasses the staging: the stream's order
            // is the tar's (a file's header is staged, its large contents are not).
            if staging.count + bytes.count > (1 << 20) || bytes.count >= (1 << 19) {
                try staging.withUnsafeBytes { raw in Result { () throws(ImageError) in try compressor.write(raw) } }.get()
                staging.removeAll(keepingCapacity: true)
            }
            if bytes.count >= (1 << 19) { try compressor.write(bytes) } else { staging.append(contentsOf: bytes) }
        }
        try tar.writeTree(directory)
        try staging.withUnsafeBytes { raw in Result { () throws(ImageError) in try compressor.write(raw) } }.get()
        try compressor.finish()
        let (digest, size) = try blob.commit()
        let descriptor = Descriptor(mediaType: MediaType.rootfsLayerZstd, digest: digest, size: size)
        let entry = Cached(key: key, descriptor: descriptor, files: tar.entries, tarBytes: tar.bytes)
        try? writeAtomically(Self.encode(Array((cached.filter { $0.key != key } + [entry]).suffix(64))), to: rootfsLayerCachePath)
        return RootfsLayerReport(descriptor: descriptor, files: tar.entries, tarBytes: tar.bytes, reused: false,
                                 seconds: Self.seconds(since: started))
    }

    /// A digest of the tree's listing with every file's identity and metadata (no contents).
    static func treeKey(_ directory: String) throws(ImageError) -> String {
        var hasher = SHA256()
        hasher.update(data: Array(directory.utf8) + [0])
        func visit(_ fd: Int32, _ relative: String) throws(ImageError) {
            for name in try TarWriter.sortedNames(fd, path: directory + relative) {
                var info = stat()
                guard fstatat(fd, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { throw .io(operation: "stat", path: directory + relative + "/" + name, errno: errno) }
                hasher.update(data: Array((relative + "/" + name).utf8) + [0])
                // Widened to one type: a tuple of mixed widths has padding bytes of no fixed value.
                let fields: [Int64] = [Int64(bitPattern: UInt64(info.st_ino)), Int64(info.st_mode), Int64(info.st_uid), Int64(info.st_gid),
                                       Int64(info.st_size), Int64(info.st_mtim.tv_sec), Int64(info.st_mtim.tv_nsec),
                                       Int64(info.st_ctim.tv_sec), Int64(info.st_ctim.tv_nsec)]
                fields.withUnsafeBytes { hasher.update(bufferPointer: $0) }
                if info.st_mode & S_IFMT == S_IFDIR {
                    let child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    guard child >= 0 else { throw .io(operation: "open", path: directory + relative + "/" + name, errno: errno) }
                    defer { close(child) }
                    try visit(child, relative + "/" + name)
                }
            }
        }
        let fd = try FileIO.open(directory, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        var info = stat()
        fstat(fd, &info)
        let fields: [Int64] = [Int64(bitPattern: UInt64(info.st_ino)), Int64(info.st_mode), Int64(info.st_mtim.tv_sec), Int64(info.st_mtim.tv_nsec)]
        fields.withUnsafeBytes { hasher.update(bufferPointer: $0) }
        try visit(fd, "")
        return Digest(finalizing: hasher).hex
    }

    /// Where `layers` are (or will be) unpacked: `STORE/rootfs/<digest hex>` for one layer,
    /// `STORE/rootfs/chain-<digest of the digests>` for several.
    public func rootfsPath(for layers: [Descriptor]) -> String {
        if layers.count == 1 { return rootfsDirectory + "/" + layers[0].digest.hex }
        return rootfsDirectory + "/chain-" + Digest(of: Array(layers.map(\.digest.description).joined(separator: "\n").utf8)).hex
    }

    /// Makes `layers` available as a directory: unpacked once per layer digest under the store
    /// (later restores, of this image or any other with the same layers, find it there). Each
    /// layer blob is verified against its digest while it is unpacked; the directory appears
    /// (by rename) only complete, so a failed or concurrent unpack is never seen half done.
    public func materializeRootfs(_ layers: [Descriptor], image: String) throws(ImageError) -> RootfsMaterialization {
        let started = DispatchTime.now()
        let target = rootfsPath(for: layers)
        if Self.isDirectory(target) { return RootfsMaterialization(path: target, unpacked: false, seconds: Self.seconds(since: started)) }
        try prepareForWriting()
        // gc removes unpack leftovers; it must not take those of an unpack in progress.
        let gcLock = try StoreLock(path: gcLockPath, mode: .shared, store: root)
        defer { withExtendedLifetime(gcLock) {} }
        if mkdir(rootfsDirectory, 0o700) != 0 && errno != EEXIST { throw ImageError.writing("mkdir", rootfsDirectory, errno: errno, store: root) }
        let lock = try StoreLock(path: rootfsDirectory + "/.lock", mode: .exclusive, store: root)
        defer { withExtendedLifetime(lock) {} }
        if Self.isDirectory(target) { return RootfsMaterialization(path: target, unpacked: false, seconds: Self.seconds(since: started)) }

        let temporary = rootfsDirectory + "/.tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        guard mkdir(temporary, 0o700) == 0 else { throw ImageError.writing("mkdir", temporary, errno: errno, store: root) }
        do throws(ImageError) {
            let directory = try FileIO.open(temporary, O_RDONLY | O_DIRECTORY)
            defer { close(directory) }
            for layer in layers {
                try unpack(layer, into: directory, image: image)
            }
            guard rename(temporary, target) == 0 else { throw ImageError.writing("rename", target, errno: errno, store: root) }
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
        return RootfsMaterialization(path: target, unpacked: true, seconds: Self.seconds(since: started))
    }

    private func unpack(_ layer: Descriptor, into directory: Int32, image: String) throws(ImageError) {
        let path = blobPath(layer.digest)
        let fd: Int32, size: Int64
        do { (fd, size) = try FileIO.openRegular(path) } catch {
            switch error {
            case let .notRegular(kind): throw .blobNotRegular(image: image, digest: layer.digest, role: "rootfs layer", path: path, kind: kind)
            case let .io(.io(_, _, code)) where code == ENOENT: throw .blobMissing(image: image, digest: layer.digest, role: "rootfs layer", path: path)
            case let .io(failure): throw failure
            }
        }
        defer { close(fd) }
        guard size == layer.size else {
            throw .blobSizeMismatch(image: image, digest: layer.digest, role: "rootfs layer", expected: layer.size, actual: size)
        }
        // Hash what is read as it is read; the unpacked tree is thrown away unless it matches.
        let hashing = HashingReader(fd: fd, path: path)
        let source: (UnsafeMutableRawBufferPointer) throws(ImageError) -> Int
        switch layer.mediaType {
        case MediaType.rootfsLayerZstd:
            let zstd = ZstdFileReader(read: { buffer throws(ImageError) in try hashing.read(into: buffer) }, path: path)
            source = { buffer throws(ImageError) in try zstd.read(into: buffer) }
        case MediaType.rootfsLayerTar:
            source = { buffer throws(ImageError) in try hashing.read(into: buffer) }
        default:
            throw .invalidManifest(image: image, detail: "rootfs layer \(layer.digest) has media type '\(layer.mediaType)', which catalyzer does not unpack (it writes \(MediaType.rootfsLayerZstd))")
        }
        var extractor = TarExtractor(root: directory, label: "\(layer.digest.short) of image '\(image)'", source: source)
        try extractor.extract()
        try hashing.drain()
        let actual = Digest(finalizing: hashing.hasher)
        guard actual == layer.digest else {
            throw .blobCorrupt(image: image, digest: layer.digest, role: "rootfs layer", actualDigest: actual)
        }
    }

    static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }

    static func seconds(since start: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    }
}

/// Reads a file, hashing every byte read.
final class HashingReader {
    let fd: Int32
    let path: String
    var hasher = SHA256()

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(ImageError) -> Int {
        let count = try FileIO.read(fd, into: buffer, path: path)
        hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        return count
    }

    /// Reads (and hashes) whatever the consumer left, so the digest covers the whole file.
    func drain() throws(ImageError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
        defer { buffer.deallocate() }
        while try read(into: buffer) > 0 {}
    }
}

/// A blob written as a stream whose digest is known only at the end: hashed as it is written to
/// `ingest/`, renamed into `blobs/` by `commit`.
final class StreamingBlob {
    private let store: ImageStore
    private let temporary: String
    private var fd: Int32
    private var hasher = SHA256()
    private var size: Int64 = 0

    init(store: ImageStore) throws(ImageError) {
        self.store = store
        temporary = store.ingestDirectory + "/layer-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        fd = Glibc.open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, ImageStore.fileMode)
        guard fd >= 0 else { throw ImageError.writing("create", temporary, errno: errno, store: store.root) }
    }

    deinit {
        if fd >= 0 {
            close(fd)
            unlink(temporary)
        }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(ImageError) {
        hasher.update(bufferPointer: bytes)
        do { try FileIO.write(fd, bytes, path: temporary) } catch {
            if case let .io(op, path, code) = error { throw ImageError.writing(op, path, errno: code, store: store.root) }
            throw error
        }
        size += Int64(bytes.count)
    }

    func commit() throws(ImageError) -> (Digest, Int64) {
        let digest = Digest(finalizing: hasher)
        let closed = close(fd)
        fd = -1
        guard closed == 0 else {
            unlink(temporary)
            throw ImageError.writing("close", temporary, errno: errno, store: store.root)
        }
        if store.hasBlob(digest, size: size) {
            unlink(temporary)
        } else if rename(temporary, store.blobPath(digest)) != 0 {
            let code = errno
            unlink(temporary)
            throw ImageError.writing("rename", store.blobPath(digest), errno: code, store: store.root)
        }
        return (digest, size)
    }
}
