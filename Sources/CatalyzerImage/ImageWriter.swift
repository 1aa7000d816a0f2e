import Dispatch
import Foundation
import Glibc

/// How `ImageStore.createImage` writes an image.
public struct ImageCreateOptions: Sendable {
    public var codec: Codec = .zstd
    public var compressionLevel: Int = Codec.defaultZstdLevel
    public var chunkSize: Int = ChunkSize.default
    /// The monitor's state; empty for a plain memory image.
    public var state: [UInt8] = []
    public var workingSet: [Int]?
    public var annotations: [String: String]?
    /// The rootfs layers (already stored, see `storeRootfsLayer`) the image carries.
    public var rootfs: RootfsConfig?
    /// Chunks compressed at once; bounds memory to `batchChunks * chunkSize` plus their output.
    public var batchChunks: Int = max(4, ProcessInfo.processInfo.activeProcessorCount * 4)

    public init() {}
}

/// What `createImage` did.
public struct ImageCreateReport: Sendable, Codable {
    public var name: String
    public var manifestDigest: Digest
    public var memorySize: Int64
    public var chunkSize: Int
    public var codec: Codec
    public var chunkCount: Int
    public var storedChunks: Int
    public var zeroChunks: Int
    /// Bytes of the chunk table's blobs (what a full pull transfers for memory).
    public var storedBytes: Int64
    /// Bytes this create added to the store; the rest were already there (deduplicated).
    public var newBytes: Int64
    public var seconds: Double
}

extension ImageStore {
    /// Creates an image named `name` from the file at `path` (or standard input for `-`).
    public func createImage(named name: String, fromFile path: String, options: ImageCreateOptions = .init()) throws(ImageError) -> ImageCreateReport {
        if path == "-" {
            return try createImage(named: name, from: STDIN_FILENO, sourceName: "standard input", options: options)
        }
        let fd = try FileIO.open(path, O_RDONLY)
        defer { close(fd) }
        var options = options
        options.annotations = (options.annotations ?? [:]).merging(["dev.catalyzer.source": path]) { old, _ in old }
        return try createImage(named: name, from: fd, sourceName: path, options: options)
    }

    /// Creates an image from everything readable from `fd` (a file, memfd or pipe), streaming:
    /// at most one batch of chunks is in memory at a time, and each batch is compressed on all
    /// cores. Blobs are written as they are made; the name is published last, so on any error
    /// the store has at most some unreferenced blobs (removed by `gc`) and no new name.
    public func createImage(named name: String, from fd: Int32, sourceName: String, options: ImageCreateOptions = .init()) throws(ImageError) -> ImageCreateReport {
        guard Self.isValidName(name) else { throw .invalidName(name) }
        guard ChunkSize.isValid(options.chunkSize) else {
            throw .invalidInput("chunk size \(options.chunkSize) must be a power of two between \(ChunkSize.minimum) and \(ChunkSize.maximum) bytes")
        }
        if options.codec == .zstd && !(1...22).contains(options.compressionLevel) {
            throw .invalidInput("zstd level \(options.compressionLevel) must be between 1 and 22")
        }
        let started = DispatchTime.now()
        try prepareForWriting()
        let gcLock = try StoreLock(path: gcLockPath, mode: .shared, store: root)
        defer { withExtendedLifetime(gcLock) {} }

        var chunks: [ChunkEntry] = []
        var newBytes: Int64 = 0
        var memorySize: Int64 = 0
        let batch = UnsafeMutableRawBufferPointer.allocate(byteCount: options.batchChunks * options.chunkSize, alignment: 4096)
        defer { batch.deallocate() }
        while true {
            let count = try FileIO.read(fd, into: batch, path: sourceName)
            if count == 0 { break }
            let firstIndex = Int(memorySize / Int64(options.chunkSize))
            let results = try compressBatch(UnsafeRawBufferPointer(rebasing: batch[0..<count]), firstIndex: firstIndex, options: options)
            for result in results {
                chunks.append(result.entry)
                if result.written { newBytes += result.entry.size }
            }
            memorySize += Int64(count)
            if count < batch.count { break }
        }
        guard memorySize > 0 else { throw .invalidInput("\(sourceName) is empty: an image needs at least one byte of memory") }

        let state = try storeBlob(options.state)
        if state.written { newBytes += Int64(options.state.count) }
        let stateDescriptor = Descriptor(mediaType: MediaType.state, digest: state.digest, size: Int64(options.state.count))
        let config = ImageConfig(
            memorySize: memorySize, chunkSize: options.chunkSize, codec: options.codec,
            compressionLevel: options.codec == .zstd ? options.compressionLevel : nil,
            chunks: chunks, state: stateDescriptor,
            created: Date().ISO8601Format(), creator: "catalyzer \(CatalyzerVersion.current)",
            workingSet: options.workingSet, annotations: options.annotations, rootfs: options.rootfs)
        let configBytes = Self.encode(config)
        let configDigest = try storeBlob(configBytes).digest

        var layers = [stateDescriptor]
        var seen: Set<Digest> = [state.digest]
        for layer in options.rootfs?.layers ?? [] where seen.insert(layer.digest).inserted { layers.append(layer) }
        for chunk in chunks where seen.insert(chunk.digest).inserted {
            layers.append(Descriptor(mediaType: MediaType.chunk(chunk.codec), digest: chunk.digest, size: chunk.size))
        }
        let manifest = OCIManifest(
            artifactType: MediaType.imageArtifact,
            config: Descriptor(mediaType: MediaType.imageConfig, digest: configDigest, size: Int64(configBytes.count)),
            layers: layers)
        let manifestBytes = Self.encode(manifest)
        let manifestDigest = try storeBlob(manifestBytes).digest

        try syncAll()
        try publish(name: name, manifest: Descriptor(mediaType: MediaType.ociManifest, digest: manifestDigest, size: Int64(manifestBytes.count)))

        return ImageCreateReport(
            name: name, manifestDigest: manifestDigest, memorySize: memorySize, chunkSize: options.chunkSize,
            codec: options.codec, chunkCount: config.chunkCount, storedChunks: chunks.count,
            zeroChunks: config.chunkCount - chunks.count, storedBytes: config.storedChunkBytes, newBytes: newBytes,
            seconds: Double(DispatchTime.now().uptimeNanoseconds - started.uptimeNanoseconds) / 1e9)
    }

    private struct ChunkResult { var entry: ChunkEntry; var written: Bool }

    /// Compresses, hashes and stores the chunks of one batch in parallel. All-zero chunks are
    /// skipped; a chunk that does not shrink is stored raw (`none`).
    private func compressBatch(_ bytes: UnsafeRawBufferPointer, firstIndex: Int, options: ImageCreateOptions) throws(ImageError) -> [ChunkResult] {
        let count = (bytes.count + options.chunkSize - 1) / options.chunkSize
        let results = UnsafeMutableBufferPointer<Result<ChunkResult?, ImageError>>.allocate(capacity: count)
        results.initialize(repeating: .success(nil))
        defer { results.deinitialize(); results.deallocate() }
        // Each iteration reads its own slice of `bytes` and writes only its own slot of `results`.
        let shared = UncheckedSendable((bytes, results))
        DispatchQueue.concurrentPerform(iterations: count) { position in
            let (bytes, results) = shared.value
            let start = position * options.chunkSize
            let chunk = UnsafeRawBufferPointer(rebasing: bytes[start..<min(start + options.chunkSize, bytes.count)])
            results[position] = Result { () throws(ImageError) -> ChunkResult? in
                if FileIO.isAllZero(chunk) { return nil }
                var codec = options.codec
                var blob: [UInt8]
                do { blob = try codec.compress(chunk, level: options.compressionLevel) } catch {
                    throw .invalidInput("compressing chunk \(firstIndex + position) failed: \(error)")
                }
                if blob.count >= chunk.count {
                    codec = .none
                    blob = Array(chunk)
                }
                let stored = try storeBlob(blob)
                return ChunkResult(entry: ChunkEntry(index: firstIndex + position, digest: stored.digest, codec: codec, size: Int64(blob.count)),
                                   written: stored.written)
            }
        }
        var out: [ChunkResult] = []
        for result in results {
            if let chunk = try result.get() { out.append(chunk) }
        }
        return out
    }
}

/// Hands buffers to `concurrentPerform` workers that touch disjoint parts of them.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

extension ImageStore {
    /// Records the chunks the first invocation after a restore touched, in touch order, so that
    /// catalyzerfs prefetches them on later restores. The image is immutable: this publishes a
    /// new config and manifest that share every blob with the old one, under the same name.
    @discardableResult
    public func setWorkingSet(_ name: String, chunks workingSet: [Int]) throws(ImageError) -> Digest {
        try prepareForWriting()
        let gcLock = try StoreLock(path: gcLockPath, mode: .shared, store: root)
        defer { withExtendedLifetime(gcLock) {} }
        let image = try open(name)
        var config = image.config
        config.workingSet = workingSet
        if let problem = config.validationProblem() { throw .invalidInput("working set for '\(name)': \(problem)") }
        let configBytes = Self.encode(config)
        var manifest = image.manifest
        manifest.config = Descriptor(mediaType: MediaType.imageConfig, digest: try storeBlob(configBytes).digest,
                                     size: Int64(configBytes.count))
        let manifestBytes = Self.encode(manifest)
        let manifestDigest = try storeBlob(manifestBytes).digest
        try syncAll()
        try publish(name: name, manifest: Descriptor(mediaType: MediaType.ociManifest, digest: manifestDigest, size: Int64(manifestBytes.count)))
        return manifestDigest
    }
}
