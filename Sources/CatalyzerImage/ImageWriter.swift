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

/// Hands values to `concurrentPerform` workers that only read them or touch disjoint parts
/// of them (here and in the working-set code of catalyzerfs and the runtime).
public struct UncheckedSendable<Value>: @unchecked Sendable {
    public let value: Value
    public init(_ value: Value) { self.value = value }
}

extension ImageStore {
    /// Records what the first invocation after a restore touched: the chunks, in touch order,
    /// which catalyzerfs prefetches on later restores; and, when `pages` is given, those guest
    /// pages as a working-set blob that a restore installs before the guest runs. The image is
    /// immutable: this publishes a new config and manifest under the same name that share every
    /// other blob with the old one (an earlier working-set blob is dropped from the manifest).
    @discardableResult
    public func setWorkingSet(_ name: String, chunks workingSet: [Int], pages: [Int64]? = nil) throws(ImageError) -> Digest {
        try prepareForWriting()
        let gcLock = try StoreLock(path: gcLockPath, mode: .shared, store: root)
        defer { withExtendedLifetime(gcLock) {} }
        let image = try open(name)
        var config = image.config
        var manifest = image.manifest
        config.formatVersion = ImageConfig.currentFormatVersion
        config.workingSet = workingSet
        if let old = config.pageWorkingSet {
            manifest.layers.removeAll { $0 == old.blob }
            config.pageWorkingSet = nil
        }
        if let pages, !pages.isEmpty {
            let pageSet = try storePageWorkingSet(of: image, pages: pages)
            config.pageWorkingSet = pageSet
            manifest.layers.append(pageSet.blob)
        }
        if let problem = config.validationProblem() { throw .invalidInput("working set for '\(name)': \(problem)") }
        let configBytes = Self.encode(config)
        manifest.config = Descriptor(mediaType: MediaType.imageConfig, digest: try storeBlob(configBytes).digest,
                                     size: Int64(configBytes.count))
        let manifestBytes = Self.encode(manifest)
        let manifestDigest = try storeBlob(manifestBytes).digest
        try syncAll()
        try publish(name: name, manifest: Descriptor(mediaType: MediaType.ociManifest, digest: manifestDigest, size: Int64(manifestBytes.count)))
        return manifestDigest
    }

    /// The codec of working-set frames: lz4 decodes several times faster than zstd, and a
    /// restore waits for the decode.
    public static let pageWorkingSetCodec = Codec.lz4
    /// Gaps of at most this many pages between touched pages could join the set (fewer runs,
    /// so fewer mmaps at restore, and fewer shadow faults). Measured on hello (`bench startup`,
    /// 6 runs): gap 0: 692 pages, 1.3 MiB blob, cold restore 11.6 ms, 531 KVM faults; gap 4:
    /// 1,143 pages, 15.1 ms, 339 faults; gap 16: 1,843 pages, 16.9 ms, 276 faults. The extra
    /// bytes cost more than the faults they save, so nothing is bridged.
    public static let pageWorkingSetBridgedGap = 0
    /// Stores the bytes of `pages` (read from the image's own verified chunks, never from a
    /// sandbox that ran) as a working-set blob.
    private func storePageWorkingSet(of image: Image, pages: [Int64]) throws(ImageError) -> PageWorkingSetRecord {
        let config = image.config
        let runs = PageWorkingSet.runs(ofPages: pages, bridgingGapsOf: Self.pageWorkingSetBridgedGap)
        let pageCount = runs.reduce(0) { $0 + $1.count }
        let pageSize = PageWorkingSet.pageSize
        guard let last = runs.last, (last.firstPage + Int64(last.count)) * Int64(pageSize) <= config.memorySize, runs[0].firstPage >= 0 else {
            throw .invalidInput("working-set pages of '\(image.name)' lie outside its \(config.memorySize) bytes of memory")
        }
        let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: pageCount * pageSize, alignment: pageSize)
        defer { bytes.deallocate() }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: config.chunkSize, alignment: pageSize)
        defer { chunk.deallocate() }
        var loadedChunk = -1
        var position = 0
        for run in runs {
            for page in run.firstPage..<(run.firstPage + Int64(run.count)) {
                let offset = page * Int64(pageSize)
                let index = Int(offset / Int64(config.chunkSize))
                if index != loadedChunk {
                    try image.readChunk(index, into: UnsafeMutableRawBufferPointer(rebasing: chunk[0..<config.chunkLength(index)]))
                    loadedChunk = index
                }
                let within = Int(offset % Int64(config.chunkSize))
                (bytes.baseAddress! + position).copyMemory(from: chunk.baseAddress! + within, byteCount: pageSize)
                position += pageSize
            }
        }
        // One frame per run (runs longer than a frame may be are cut): a frame then decodes
        // into one contiguous piece of memory, stored with one notification, and the frames
        // decode on as many threads as there are.
        var data: [UInt8] = []
        var frames: [PageWorkingSet.Frame] = []
        var first = 0
        for run in runs {
            var left = run.count
            while left > 0 {
                let count = min(PageWorkingSet.maximumFramePages, left)
                let piece = UnsafeRawBufferPointer(rebasing: bytes[(first * pageSize)..<((first + count) * pageSize)])
                let compressed: [UInt8]
                do { compressed = try Self.pageWorkingSetCodec.compress(piece) } catch {
                    throw .invalidInput("compressing the working set of '\(image.name)' failed: \(error)")
                }
                frames.append(PageWorkingSet.Frame(offset: Int64(data.count), size: compressed.count, pages: count))
                data += compressed
                first += count
                left -= count
            }
        }
        let blob = PageWorkingSet(codec: Self.pageWorkingSetCodec, runs: runs, frames: frames).encodedHeader() + data
        let stored = try storeBlob(blob)
        return PageWorkingSetRecord(blob: Descriptor(mediaType: MediaType.pageWorkingSet(Self.pageWorkingSetCodec), digest: stored.digest, size: Int64(blob.count)),
                                    pages: pageCount)
    }
}
