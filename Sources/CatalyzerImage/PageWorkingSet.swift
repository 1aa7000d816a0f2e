/// The guest pages the first invocation after a restore touched, stored as one blob of their
/// bytes (a layer of media type `MediaType.pageWorkingSet`) so a later restore fetches them in
/// one read, decodes them on every core and installs them before the first guest instruction,
/// instead of faulting them in a page (and a 256 KiB chunk) at a time.
///
/// The blob is self-describing, so a restore needs nothing but the blob (no config to decode
/// on its critical path): a binary header (below) listing `runs` and `frames`, then the pages'
/// bytes in the order `runs` lists them, cut into frames that are each compressed on their own,
/// so frames decode in parallel and a decoder never needs more than one frame's buffer
/// (catalyzer writes one frame per run; readers accept any cut). The
/// blob's digest covers the header; the config records the blob (`PageWorkingSetRecord`).
///
/// Header, little-endian: `CTZWSET1`; u32 codec (0 none, 1 lz4, 2 zstd); u32 run count; u32
/// frame count; u32 zero; per run u64 first page, u64 page count; per frame u64 compressed size,
/// u64 page count. Frames follow the header back to back. Runs are in address order: the whole set is installed before the guest
/// runs, so the order of first touches gives nothing a restore could use (it is what a streaming
/// loader would need; see the issue note).
public struct PageWorkingSet: Sendable, Equatable {
    /// Pages `[firstPage, firstPage + count)` of guest memory (4 KiB pages).
    public struct Run: Codable, Sendable, Equatable {
        public var firstPage: Int64
        public var count: Int

        public init(firstPage: Int64, count: Int) {
            self.firstPage = firstPage
            self.count = count
        }
    }

    /// One independently compressed piece of the blob: `size` bytes at `offset` (from the end of
    /// the header), holding the next `pages` pages of the runs.
    public struct Frame: Codable, Sendable, Equatable {
        public var offset: Int64
        public var size: Int
        public var pages: Int

        public init(offset: Int64, size: Int, pages: Int) {
            self.offset = offset
            self.size = size
            self.pages = pages
        }
    }

    /// A part of a run that lies in one frame: `count` pages from `firstPage`, found at page
    /// `pageInFrame` of the frame's decoded bytes.
    public struct Segment: Sendable, Equatable {
        public var firstPage: Int64
        public var count: Int
        public var pageInFrame: Int
    }

    public static let pageSize = 4096
    /// Pages per frame at most: bounds the buffer a decoder allocates for one (16 MiB).
    public static let maximumFramePages = 4096

    public var codec: Codec
    public var runs: [Run]
    public var frames: [Frame]

    public init(codec: Codec, runs: [Run], frames: [Frame]) {
        self.codec = codec
        self.runs = runs
        self.frames = frames
    }

    /// Pages in the set.
    public var pageCount: Int { runs.reduce(0) { $0 + $1.count } }

    /// Sorted page indices grouped into runs of adjacent pages; a gap of at most `gap` pages
    /// between two runs is bridged (its pages join the set).
    public static func runs(ofPages pages: [Int64], bridgingGapsOf gap: Int = 0) -> [Run] {
        var runs: [Run] = []
        for page in pages.sorted() {
            if let last = runs.last, last.firstPage + Int64(last.count) <= page, page <= last.firstPage + Int64(last.count) + Int64(gap) {
                runs[runs.count - 1].count = Int(page - last.firstPage) + 1
            } else if runs.last.map({ $0.firstPage + Int64($0.count) <= page }) ?? true {
                runs.append(Run(firstPage: page, count: 1))
            }
        }
        return runs
    }

    /// The pieces of runs that frame `index` holds, in its order. Only valid for a set that
    /// passed `validationProblem`.
    public func segments(ofFrame index: Int) -> [Segment] { segmentsByFrame()[index] }

    /// The pieces of runs each frame holds, for every frame, in one pass over the runs (a
    /// frame per run is what catalyzer writes, so asking frame by frame would be quadratic).
    public func segmentsByFrame() -> [[Segment]] {
        var result: [[Segment]] = []
        result.reserveCapacity(frames.count)
        var runIndex = 0, usedOfRun = 0
        for frame in frames {
            var segments: [Segment] = []
            var filled = 0
            while filled < frame.pages && runIndex < runs.count {
                let run = runs[runIndex]
                let count = min(run.count - usedOfRun, frame.pages - filled)
                segments.append(Segment(firstPage: run.firstPage + Int64(usedOfRun), count: count, pageInFrame: filled))
                filled += count
                usedOfRun += count
                if usedOfRun == run.count { runIndex += 1; usedOfRun = 0 }
            }
            result.append(segments)
        }
        return result
    }

    /// Decompresses frame `index` of `blob` (the whole blob, header included) into `output`,
    /// exactly `frames[index].pages` pages.
    public func decodeFrame(_ index: Int, of blob: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws(CodecError) {
        let frame = frames[index], start = headerSize + Int(frame.offset)
        try codec.decompress(UnsafeRawBufferPointer(rebasing: blob[start..<(start + frame.size)]), into: output)
    }

    /// Checks everything a restore relies on against the image's memory size; the first
    /// violation as a sentence. Every number is from a file anyone could have crafted: ranges are
    /// checked before arithmetic on them.
    public func validationProblem(memorySize: Int64, dataSize: Int64) -> String? {
        let memoryPages = memorySize / Int64(Self.pageSize)
        guard !runs.isEmpty, runs.count <= memoryPages else { return "working set has \(runs.count) page runs, expected 1 to \(memoryPages)" }
        var end: Int64 = -1
        var pages = 0
        for (position, run) in runs.enumerated() {
            guard run.firstPage >= 0, run.count > 0, run.firstPage <= memoryPages, Int64(run.count) <= memoryPages - run.firstPage else {
                return "working-set run \(position) (page \(run.firstPage), \(run.count) pages) is outside the memory's \(memoryPages) pages"
            }
            guard run.firstPage > end else {
                return "working-set run \(position) (page \(run.firstPage)) overlaps or precedes the run before it: runs must be sorted and apart"
            }
            end = run.firstPage + Int64(run.count)
            pages += run.count
        }
        guard !frames.isEmpty, frames.count <= pages else { return "working set has \(frames.count) frames for \(pages) pages" }
        var offset: Int64 = 0
        var framePages = 0
        for (position, frame) in frames.enumerated() {
            guard frame.offset == offset else { return "working-set frame \(position) starts at byte \(frame.offset), expected \(offset) (frames must follow each other)" }
            guard frame.pages > 0, frame.pages <= Self.maximumFramePages else {
                return "working-set frame \(position) holds \(frame.pages) pages, expected 1 to \(Self.maximumFramePages)"
            }
            // A compressed frame is never larger than its pages plus a codec's worst-case growth.
            guard frame.size > 0, frame.size <= frame.pages * Self.pageSize + frame.pages * Self.pageSize / 128 + 1024 else {
                return "working-set frame \(position) has an implausible size \(frame.size) for \(frame.pages) pages"
            }
            if codec == .none && frame.size != frame.pages * Self.pageSize {
                return "working-set frame \(position) is uncompressed with \(frame.size) bytes, but holds \(frame.pages) pages"
            }
            offset += Int64(frame.size)
            framePages += frame.pages
        }
        guard framePages == pages else { return "working-set frames hold \(framePages) pages, but its runs list \(pages)" }
        guard dataSize == offset else { return "working-set blob holds \(dataSize) bytes of frames, but its header's frames add up to \(offset)" }
        return nil
    }

    // MARK: The blob

    static let magic = Array("CTZWSET1".utf8)
    static let fixedHeaderSize = 24
    static let entrySize = 16

    /// Size of the header of a set with these runs and frames.
    public var headerSize: Int { Self.fixedHeaderSize + (runs.count + frames.count) * Self.entrySize }

    private static func codecNumber(_ codec: Codec) -> UInt32 {
        switch codec {
        case .none: 0
        case .lz4: 1
        case .zstd: 2
        }
    }

    /// The header, to be followed by the frames.
    public func encodedHeader() -> [UInt8] {
        var bytes = Self.magic
        func put<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        put(Self.codecNumber(codec)); put(UInt32(runs.count)); put(UInt32(frames.count)); put(UInt32(0))
        for run in runs { put(UInt64(truncatingIfNeeded: run.firstPage)); put(UInt64(truncatingIfNeeded: run.count)) }
        for frame in frames { put(UInt64(truncatingIfNeeded: frame.size)); put(UInt64(truncatingIfNeeded: frame.pages)) }
        return bytes
    }

    /// The size of the header at the start of `prefix` (at least `fixedHeaderSize` bytes of a
    /// blob), or nil when `prefix` is too short to say. Bounded by the caller's blob size check.
    public static func headerSize(startingWith prefix: UnsafeRawBufferPointer) -> Int? {
        guard prefix.count >= fixedHeaderSize else { return nil }
        let runs = UInt32(littleEndian: prefix.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
        let frames = UInt32(littleEndian: prefix.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
        return fixedHeaderSize + (Int(runs) + Int(frames)) * entrySize
    }

    /// Reads and checks the header of a working-set blob against the memory it is for; returns
    /// the set (frame offsets relative to `headerSize`) or the first problem as a sentence. The
    /// bytes are hostile: every count is bounded by the blob's size before it sizes anything.
    /// `blob` may hold only the header when `blobSize` gives the whole blob's size.
    public static func decode(_ blob: UnsafeRawBufferPointer, blobSize: Int? = nil, memorySize: Int64) -> Result<PageWorkingSet, PageWorkingSetError> {
        let total = blobSize ?? blob.count
        guard blob.count >= fixedHeaderSize, blob.prefix(magic.count).elementsEqual(magic) else {
            return .failure(PageWorkingSetError("it does not start with a working-set header"))
        }
        func u32(_ at: Int) -> UInt32 { UInt32(littleEndian: blob.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
        func u64(_ at: Int) -> UInt64 { UInt64(littleEndian: blob.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
        let codec: Codec
        switch u32(8) {
        case 0: codec = .none
        case 1: codec = .lz4
        case 2: codec = .zstd
        case let other: return .failure(PageWorkingSetError("its header names codec \(other), which this catalyzer does not know"))
        }
        let runCount = Int(u32(12)), frameCount = Int(u32(16))
        guard (runCount + frameCount) * entrySize <= min(blob.count, total) - fixedHeaderSize else {
            return .failure(PageWorkingSetError("its header lists \(runCount) runs and \(frameCount) frames, more than its \(min(blob.count, total)) bytes hold"))
        }
        let limit = UInt64(Int.max / 2)
        var runs: [Run] = [], frames: [Frame] = []
        runs.reserveCapacity(runCount)
        frames.reserveCapacity(frameCount)
        var at = fixedHeaderSize
        for _ in 0..<runCount {
            let first = u64(at), count = u64(at + 8)
            guard first < limit, count < limit else { return .failure(PageWorkingSetError("a run of its header is out of range")) }
            runs.append(Run(firstPage: Int64(first), count: Int(count)))
            at += entrySize
        }
        var offset: Int64 = 0
        for _ in 0..<frameCount {
            let size = u64(at), pages = u64(at + 8)
            guard size < limit, pages < limit else { return .failure(PageWorkingSetError("a frame of its header is out of range")) }
            frames.append(Frame(offset: offset, size: Int(size), pages: Int(pages)))
            offset = offset &+ Int64(size)
            at += entrySize
        }
        let set = PageWorkingSet(codec: codec, runs: runs, frames: frames)
        if let problem = set.validationProblem(memorySize: memorySize, dataSize: Int64(total - at)) {
            return .failure(PageWorkingSetError(problem))
        }
        return .success(set)
    }
}

/// Why a working-set blob cannot be used.
public struct PageWorkingSetError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What an image's config records of its page working set: the blob (a layer of the manifest)
/// and, for `inspect`, how many pages it holds. The layout is in the blob itself.
public struct PageWorkingSetRecord: Codable, Sendable, Equatable {
    public var blob: Descriptor
    public var pages: Int

    public init(blob: Descriptor, pages: Int) {
        self.blob = blob
        self.pages = pages
    }

    public func validationProblem(memorySize: Int64) -> String? {
        guard MediaType.pageWorkingSetTypes.contains(blob.mediaType) else {
            return "working-set blob has media type '\(blob.mediaType)', not one of \(MediaType.pageWorkingSetTypes.sorted())"
        }
        let memoryPages = memorySize / Int64(PageWorkingSet.pageSize)
        guard pages > 0, Int64(pages) <= memoryPages else { return "working set claims \(pages) pages, expected 1 to \(memoryPages)" }
        // Header entries plus pages that did not compress, with a codec's worst-case growth.
        let most = Int64(pages) * Int64(PageWorkingSet.pageSize + 2 * PageWorkingSet.entrySize + 64) + 1 << 20
        guard blob.size > 0, blob.size <= most else { return "working-set blob size \(blob.size) is implausible for \(pages) pages" }
        return nil
    }
}
