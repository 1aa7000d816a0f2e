import Foundation
import Glibc

/// An image opened from a store: its manifest and config, read and checked once, and verified
/// access to its chunks and state. Safe to share between threads; reads take no lock.
public final class Image: Sendable {
    public let store: ImageStore
    public let name: String
    /// The descriptor of the manifest in `index.json`.
    public let manifestDescriptor: Descriptor
    public let manifest: OCIManifest
    /// The manifest exactly as stored (what catalyzerfs serves as `manifest.json`).
    public let manifestBytes: [UInt8]
    public let config: ImageConfig

    /// Manifests and configs are small; a multi-megabyte one is damage or an attack.
    static let metadataLimit: Int64 = 64 << 20

    init(store: ImageStore, name: String, manifestDescriptor: Descriptor) throws(ImageError) {
        self.store = store
        self.name = name
        self.manifestDescriptor = manifestDescriptor
        guard manifestDescriptor.mediaType == MediaType.ociManifest else {
            throw .invalidManifest(image: name, detail: "index.json names a '\(manifestDescriptor.mediaType)', expected an OCI image manifest (\(MediaType.ociManifest))")
        }
        guard manifestDescriptor.size <= Self.metadataLimit else {
            throw .invalidManifest(image: name, detail: "manifest is \(manifestDescriptor.size) bytes, larger than any catalyzer manifest")
        }
        manifestBytes = try store.readVerifiedBlob(manifestDescriptor.digest, size: manifestDescriptor.size, image: name, role: "manifest")
        do {
            manifest = try JSONDecoder().decode(OCIManifest.self, from: Data(manifestBytes))
        } catch {
            throw .invalidManifest(image: name, detail: "manifest \(manifestDescriptor.digest) does not parse: \(DecodingProblem(error))")
        }
        if let mediaType = manifest.mediaType, mediaType != MediaType.ociManifest {
            throw .invalidManifest(image: name, detail: "manifest has media type '\(mediaType)', expected '\(MediaType.ociManifest)'")
        }
        guard manifest.config.mediaType == MediaType.imageConfig else {
            throw .invalidManifest(image: name, detail: "config has media type '\(manifest.config.mediaType)', expected '\(MediaType.imageConfig)': this is not a catalyzer image")
        }
        guard manifest.config.size <= Self.metadataLimit else {
            throw .invalidManifest(image: name, detail: "config is \(manifest.config.size) bytes, larger than any catalyzer config")
        }
        let configBytes = try store.readVerifiedBlob(manifest.config.digest, size: manifest.config.size, image: name, role: "config")
        config = try Self.checkedConfig(configBytes, manifest: manifest, image: name)
    }

    /// Decodes a config and checks it against itself and its manifest: everything opening an
    /// image trusts about it. The bytes are hostile input (this is what the fuzz tests drive).
    static func checkedConfig(_ bytes: [UInt8], manifest: OCIManifest, image: String) throws(ImageError) -> ImageConfig {
        let config = try decodeConfig(bytes, image: image)
        if let problem = config.validationProblem() {
            throw .invalidManifest(image: image, detail: problem + "; the image is damaged or was not written by catalyzer: remove it (`catalyzer image rm \(image)`) and re-create or re-pull it")
        }
        let layers = Set(manifest.layers.map(\.digest))
        if let unlisted = config.chunks.first(where: { !layers.contains($0.digest) }) {
            throw .invalidManifest(image: image, detail: "chunk \(unlisted.index) blob \(unlisted.digest) is not a layer of the manifest")
        }
        guard layers.contains(config.state.digest) else {
            throw .invalidManifest(image: image, detail: "state blob \(config.state.digest) is not a layer of the manifest")
        }
        if let pages = config.pageWorkingSet, !manifest.layers.contains(pages.blob) {
            throw .invalidManifest(image: image, detail: "working-set blob \(pages.blob.digest) is not a layer of the manifest")
        }
        if let unlisted = config.rootfs?.layers.first(where: { layer in !manifest.layers.contains(layer) }) {
            throw .invalidManifest(image: image, detail: "rootfs layer \(unlisted.digest) is not a layer of the manifest")
        }
        return config
    }

    /// Decodes a config, checking the format version before anything else so that a newer
    /// image gets "unsupported version", not a confusing complaint about some field.
    static func decodeConfig(_ bytes: [UInt8], image: String) throws(ImageError) -> ImageConfig {
        struct VersionOnly: Decodable { var formatVersion: Int }
        let data = Data(bytes)
        guard let version = try? JSONDecoder().decode(VersionOnly.self, from: data) else {
            throw .invalidManifest(image: image, detail: "config has no formatVersion: not a catalyzer image config")
        }
        guard ImageConfig.readableFormatVersions.contains(version.formatVersion) else {
            throw .invalidManifest(image: image, detail: "format version \(version.formatVersion) is not supported (this catalyzer reads versions \(ImageConfig.readableFormatVersions.lowerBound) to \(ImageConfig.readableFormatVersions.upperBound)); use a catalyzer that reads it, or re-create the image")
        }
        do {
            return try JSONDecoder().decode(ImageConfig.self, from: data)
        } catch {
            throw .invalidManifest(image: image, detail: "config does not parse: \(DecodingProblem(error))")
        }
    }

    /// The stored chunk at `index`, or nil when that chunk is all zero.
    public func chunk(at index: Int) -> ChunkEntry? {
        config.entryPosition(ofChunk: index).map { config.chunks[$0] }
    }

    /// Fills `buffer` (exactly `config.chunkLength(index)` bytes) with chunk `index`: zeros for
    /// an elided chunk, else the blob, verified against its digest and decompressed. On any
    /// error the buffer's content is unspecified and must not be used.
    public func readChunk(_ index: Int, into buffer: UnsafeMutableRawBufferPointer) throws(ImageError) {
        precondition(index >= 0 && index < config.chunkCount && buffer.count == config.chunkLength(index))
        guard let entry = chunk(at: index) else {
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        let blob = try store.readVerifiedBlob(entry.digest, size: entry.size, image: name, role: "chunk \(index)")
        try Self.decode(blob, entry: entry, into: buffer, image: name)
    }

    static func decode(_ blob: [UInt8], entry: ChunkEntry, into buffer: UnsafeMutableRawBufferPointer, image: String) throws(ImageError) {
        let result = blob.withUnsafeBytes { raw in
            Result { () throws(CodecError) in try entry.codec.decompress(raw, into: buffer) }
        }
        if case let .failure(error) = result {
            throw .chunkUndecodable(image: image, index: entry.index, digest: entry.digest, detail: error.description)
        }
    }

    /// The monitor's state blob, verified.
    public func readState() throws(ImageError) -> [UInt8] {
        try store.readVerifiedBlob(config.state.digest, size: config.state.size, image: name, role: "state")
    }

    /// The page working-set blob, verified; nil when the image has none.
    public func readPageWorkingSet() throws(ImageError) -> [UInt8]? {
        guard let pages = config.pageWorkingSet else { return nil }
        return try store.readVerifiedBlob(pages.blob.digest, size: pages.blob.size, image: name, role: "working set")
    }

    /// The config blob as stored (verified when the image was opened).
    public func readConfigBytes() throws(ImageError) -> [UInt8] {
        try store.readVerifiedBlob(manifest.config.digest, size: manifest.config.size, image: name, role: "config")
    }

    /// Writes the whole guest memory, zeros included, to `path`: a sparse file where chunks are
    /// zero, or, for `-` or a path that is not a regular file (a pipe), a plain stream. Every
    /// chunk is verified; on error a partial regular file is removed.
    public func export(to path: String) throws(ImageError) {
        let toStandardOutput = path == "-"
        let fd = toStandardOutput ? STDOUT_FILENO : Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(operation: "create", path: path, errno: errno) }
        var info = stat()
        let regular = fstat(fd, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
        var failure: ImageError?
        do throws(ImageError) {
            if regular { try exportSparse(fd, path: path) } else { try exportStream(fd, path: path) }
        } catch {
            failure = error
        }
        if !toStandardOutput && close(fd) != 0 && failure == nil { failure = .io(operation: "close", path: path, errno: errno) }
        if let failure {
            if regular && !toStandardOutput { unlink(path) }
            throw failure
        }
    }

    private func exportSparse(_ fd: Int32, path: String) throws(ImageError) {
        guard ftruncate(fd, off_t(config.memorySize)) == 0 else {
            throw .io(operation: "truncate", path: path, errno: errno)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: config.chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        for entry in config.chunks {
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<config.chunkLength(entry.index)])
            try readChunk(entry.index, into: chunk)
            try FileIO.pwrite(fd, UnsafeRawBufferPointer(chunk), at: Int64(entry.index) * Int64(config.chunkSize), path: path)
        }
    }

    private func exportStream(_ fd: Int32, path: String) throws(ImageError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: config.chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        for index in 0..<config.chunkCount {
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<config.chunkLength(index)])
            try readChunk(index, into: chunk)
            try FileIO.write(fd, UnsafeRawBufferPointer(chunk), path: path)
        }
    }
}
