/// One stored chunk of guest memory. Chunks that are all zero have no entry.
public struct ChunkEntry: Codable, Sendable, Equatable {
    /// Position of the chunk: it covers bytes `[index * chunkSize, (index + 1) * chunkSize)`,
    /// clipped to the memory size.
    public var index: Int
    /// Digest of the stored (compressed) blob.
    public var digest: Digest
    public var codec: Codec
    /// Size of the stored blob in bytes.
    public var size: Int64

    public init(index: Int, digest: Digest, codec: Codec, size: Int64) {
        self.index = index
        self.digest = digest
        self.codec = codec
        self.size = size
    }
}

/// The Catalyzer part of an image: everything needed to rebuild guest memory and the monitor's
/// state. Stored as the OCI manifest's config blob (`MediaType.imageConfig`).
public struct ImageConfig: Codable, Sendable, Equatable {
    /// The version of this layout. Readers refuse newer ones: a field added in a later version
    /// might change what the bytes mean, and guessing would mean running on wrong memory.
    /// Version 2 added the page working set (`pageWorkingSet`, its own layer); a version 1
    /// image is version 2 without one, so it is still read.
    public static let currentFormatVersion = 2
    /// The versions this catalyzer reads.
    public static let readableFormatVersions: ClosedRange<Int> = 1...2

    public var formatVersion: Int
    /// Size of guest memory in bytes; `memory` on catalyzerfs has exactly this size.
    public var memorySize: Int64
    public var chunkSize: Int
    /// The codec the image was created with (a single chunk may still be `none`).
    public var codec: Codec
    /// zstd level used at creation, for the record.
    public var compressionLevel: Int?
    /// Non-zero chunks, sorted by index.
    public var chunks: [ChunkEntry]
    /// The monitor's state blob (vCPU and kernel state); opaque to the image layer.
    public var state: Descriptor
    /// When and by what the image was created (RFC 3339, tool name and version).
    public var created: String
    public var creator: String
    /// Chunk indices touched by the first invocation after a restore, in touch order; prefetched
    /// by catalyzerfs on later restores.
    public var workingSet: [Int]?
    /// The pages the first invocation after a restore touched, as a blob a restore installs
    /// before the guest runs (version 2).
    public var pageWorkingSet: PageWorkingSetRecord?
    /// Free-form metadata (source file, function name, ...).
    public var annotations: [String: String]?
    /// The rootfs the function ran against, as OCI layers (absent for plain memory images and
    /// for images made before the rootfs travelled with them; readers of version 1 without this
    /// field ignore it).
    public var rootfs: RootfsConfig?

    public init(memorySize: Int64, chunkSize: Int, codec: Codec, compressionLevel: Int?,
                chunks: [ChunkEntry], state: Descriptor, created: String, creator: String,
                workingSet: [Int]? = nil, annotations: [String: String]? = nil, rootfs: RootfsConfig? = nil) {
        formatVersion = Self.currentFormatVersion
        self.memorySize = memorySize
        self.chunkSize = chunkSize
        self.codec = codec
        self.compressionLevel = compressionLevel
        self.chunks = chunks
        self.state = state
        self.created = created
        self.creator = creator
        self.workingSet = workingSet
        self.annotations = annotations
        self.rootfs = rootfs
    }

    /// The most guest memory an image may describe: 1 TiB, far above any sandbox this monitor
    /// runs (guest-physical memory is one KVM slot mapped in the host's address space), and low
    /// enough that no size, offset or chunk index derived from it can overflow 64 bits.
    public static let maximumMemorySize: Int64 = 1 << 40

    /// The largest state blob an image may have: the monitor's state is registers, tables and
    /// the contents of `/tmp` and of pipes, all bounded by the sandbox's memory, so a state
    /// larger than twice the memory (plus room for the tables) is not one catalyzer wrote. The
    /// state is read whole into memory, so this also bounds what opening an image can allocate.
    public static func maximumStateSize(memorySize: Int64) -> Int64 {
        2 * min(max(memorySize, 0), maximumMemorySize) + (64 << 20)
    }

    /// Number of chunk positions, stored or not (0 for sizes `validationProblem` rejects).
    public var chunkCount: Int {
        guard memorySize > 0, chunkSize > 0 else { return 0 }
        let size = Int64(chunkSize)
        return Int(memorySize / size + (memorySize % size == 0 ? 0 : 1))
    }

    /// Length of chunk `index` in bytes: `chunkSize`, except for a shorter last chunk; 0 for an
    /// index outside the memory.
    public func chunkLength(_ index: Int) -> Int {
        guard index >= 0, index < chunkCount else { return 0 }
        return Int(min(Int64(chunkSize), memorySize - Int64(index) * Int64(chunkSize)))
    }

    /// Bytes of all stored chunk blobs, counting a blob shared by two chunks twice.
    public var storedChunkBytes: Int64 { chunks.reduce(0) { $0 &+ $1.size } }

    /// Checks every invariant a reader relies on. Returns the first violation as a sentence.
    ///
    /// Every number here comes from a file anyone with write access to the store (or a registry)
    /// could have crafted, so ranges are checked before any arithmetic on them, and messages only
    /// print the numbers as read: building a message must never be what overflows.
    public func validationProblem() -> String? {
        guard Self.readableFormatVersions.contains(formatVersion) else {
            return "format version \(formatVersion) is not supported (this catalyzer reads versions \(Self.readableFormatVersions.lowerBound) to \(Self.readableFormatVersions.upperBound))"
        }
        guard memorySize > 0 else { return "memory size \(memorySize) must be positive" }
        guard memorySize <= Self.maximumMemorySize else {
            return "memory size \(memorySize) is more than the \(Self.maximumMemorySize) bytes (1 TiB) an image may have"
        }
        guard ChunkSize.isValid(chunkSize) else {
            return "chunk size \(chunkSize) is not a power of two between \(ChunkSize.minimum) and \(ChunkSize.maximum)"
        }
        guard state.mediaType == MediaType.state else {
            return "state blob has media type '\(state.mediaType)', expected '\(MediaType.state)'"
        }
        guard state.size >= 0, state.size <= Self.maximumStateSize(memorySize: memorySize) else {
            return "state blob size \(state.size) is implausible for \(memorySize) bytes of memory (at most \(Self.maximumStateSize(memorySize: memorySize)))"
        }
        let count = chunkCount
        var previous = -1
        for (position, chunk) in chunks.enumerated() {
            guard chunk.index >= 0 else { return "chunk table entry \(position) names chunk \(chunk.index), a negative position" }
            if chunk.index <= previous {
                return chunk.index == previous
                    ? "chunk table entries \(position - 1) and \(position) both claim chunk \(chunk.index) (overlap)"
                    : "chunk table is not sorted: entry \(position) (chunk \(chunk.index)) follows chunk \(previous)"
            }
            guard chunk.index < count else {
                return "chunk table entry \(position) names chunk \(chunk.index), past the memory size \(memorySize) (chunks 0..<\(count) of \(chunkSize) bytes)"
            }
            guard chunk.size > 0, chunk.size <= Int64(ChunkSize.maximum) * 2 else {
                return "chunk \(chunk.index) has an implausible stored size \(chunk.size)"
            }
            if chunk.codec == .none && chunk.size != Int64(chunkLength(chunk.index)) {
                return "chunk \(chunk.index) is stored uncompressed with \(chunk.size) bytes, but the chunk is \(chunkLength(chunk.index)) bytes"
            }
            previous = chunk.index
        }
        if let workingSet, let bad = workingSet.first(where: { $0 < 0 || $0 >= count }) {
            return "working set names chunk \(bad), outside 0..<\(count)"
        }
        if let pageWorkingSet {
            guard formatVersion >= 2 else { return "a version \(formatVersion) config has a page working set, which version 2 introduced" }
            if let problem = pageWorkingSet.validationProblem(memorySize: memorySize) { return problem }
        }
        if let problem = rootfs?.validationProblem() { return problem }
        return nil
    }

    /// The entry of chunk `index`, or nil for an all-zero chunk.
    public func chunk(at index: Int) -> ChunkEntry? {
        entryPosition(ofChunk: index).map { chunks[$0] }
    }

    /// The position in `chunks` of the entry for chunk `index`, or nil for an all-zero chunk.
    /// A binary search of the sorted table rather than a table per chunk position: memory an
    /// image only claims to have must not cost memory to open it.
    public func entryPosition(ofChunk index: Int) -> Int? {
        var low = 0, high = chunks.count
        while low < high {
            let middle = low + (high - low) / 2
            let found = chunks[middle].index
            if found == index { return middle }
            if found < index { low = middle + 1 } else { high = middle }
        }
        return nil
    }
}
