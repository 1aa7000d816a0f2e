import CatalyzerImage
import Foundation
import Glibc

/// `catalyzer bench fs`: what a restored sandbox pays per 4 KiB page on first touch when its
/// memory is an image file on catalyzerfs mapped `MAP_PRIVATE`, next to the same bytes as a plain
/// file already in the page cache (the baseline) and as anonymous memory.
///
/// Cases, each with a sequential pass over every page and a random pass over a fraction of them:
/// - `catalyzerfs cold`: a fresh mount (empty page cache and chunk cache), the store's blobs
///   evicted from the host page cache: every fault is a FUSE read that fetches, verifies and
///   decompresses.
/// - `catalyzerfs cold+prefetch`: as cold, but the image's working set (the chunks the pass will
///   touch) is pushed into the page cache after open; the pass starts when prefetch is done.
/// - `catalyzerfs warm`: a second mapping in the same mount after the cold pass: page-cache hits,
///   what a second sandbox restored from the same image sees.
public struct FSBenchmark: Sendable {
    public var input: String
    public var daemon: String
    public var chunkSize = ChunkSize.default
    public var codec: Codec = .zstd
    /// Share of the pages the random pass touches.
    public var randomFraction = 0.1
    public var access: PageTouch.Access = .read
    /// Extra `-o` options for every mount (e.g. `readahead=1M`).
    public var mountOptions = ""
    public var workDirectory = NSTemporaryDirectory()

    public init(input: String, daemon: String) {
        self.input = input
        self.daemon = daemon
    }

    public enum Pattern: String, Sendable, Codable, CaseIterable {
        case sequential, random
    }

    public struct Row: Sendable, Codable {
        public var memory: String
        public var pattern: Pattern
        public var pages: Int
        public var medianMicros: Double
        public var p99Micros: Double
        /// Median and p99 divided by the plain file's, for the same pattern.
        public var medianRatio: Double = 1
        public var p99Ratio: Double = 1
        public var totalMillis: Double
        public var bytesTouched: Int64
        /// What catalyzerfs did during the pass (nil for memory that is not on catalyzerfs).
        public var fuseReads: UInt64?
        public var bytesReturned: UInt64?
        public var bytesFetched: UInt64?
        /// Time from open until the working set was in the page cache (prefetch case only).
        public var prefetchSeconds: Double?
    }

    public func run(log: (String) -> Void) throws -> [Row] {
        let work = workDirectory + "/catalyzer-bench-fs-\(getpid())"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let store = ImageStore(root: work + "/store")
        let fd = open(input, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BenchMount.MountError(description: "open \(input): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let size = Int(lseek(fd, 0, SEEK_END))
        let pageCount = size / PageTouch.pageSize
        guard pageCount > 0 else { throw BenchMount.MountError(description: "\(input) is smaller than a page") }
        readWhole(fd, size: size)  // the plain-file baseline is a file in the page cache

        var generator = SplitMix64(seed: 42)
        var shuffled = Array(0..<pageCount)
        shuffled.shuffle(using: &generator)
        let orders: [Pattern: [Int]] = [
            .sequential: Array(0..<pageCount),
            .random: Array(shuffled.prefix(max(1, Int(Double(pageCount) * randomFraction)))),
        ]

        var rows: [Row] = []
        for pattern in Pattern.allCases {
            let pages = orders[pattern]!
            let name = "bench-\(pattern)"
            var options = ImageCreateOptions()
            options.codec = codec
            options.chunkSize = chunkSize
            options.workingSet = workingSet(of: pages)
            log("bench fs: creating image \(name) (\(ByteCount.format(Int64(size))), \(options.workingSet!.count) working-set chunks)")
            _ = try store.createImage(named: name, fromFile: input, options: options)

            log("bench fs: \(pattern): anonymous memory and plain file")
            let plain = row("plain file (page cache)", pattern, pages, try PageTouch.measure(fd: fd, size: size, pages: pages, access: access))
            rows.append(plain)
            rows.append(row("anonymous", pattern, pages, try PageTouch.measure(fd: nil, size: size, pages: pages, access: access)))

            log("bench fs: \(pattern): catalyzerfs cold, then warm")
            try withMount(store, work: work, prefetch: false) { mount in
                rows.append(try measureOnMount(mount, name, "catalyzerfs cold", pattern, pages, size))
                rows.append(try measureOnMount(mount, name, "catalyzerfs warm", pattern, pages, size))
            }
            log("bench fs: \(pattern): catalyzerfs cold with prefetch")
            try withMount(store, work: work, prefetch: true) { mount in
                let started = Clock.now()
                let fd = try openMemory(mount, name)
                defer { close(fd) }
                let expected = UInt64(options.workingSet!.count)
                let deadline = started + 300_000_000_000
                while try mount.counters(name).prefetchedChunks < expected && Clock.now() < deadline { usleep(1000) }
                let waited = Double(Clock.now() - started) / 1e9
                // Counted from before the open, so that `fetched` includes what prefetch fetched.
                var measured = try measureOnMount(mount, name, "catalyzerfs cold+prefetch", pattern, pages, size, countingFrom: .zero)
                measured.prefetchSeconds = waited
                rows.append(measured)
            }
            for index in rows.indices where rows[index].pattern == pattern {
                rows[index].medianRatio = rows[index].medianMicros / max(plain.medianMicros, 1e-9)
                rows[index].p99Ratio = rows[index].p99Micros / max(plain.p99Micros, 1e-9)
            }
        }
        return rows
    }

    /// Chunks of `pages` in first-touch order: the working set a recording would save.
    private func workingSet(of pages: [Int]) -> [Int] {
        var seen = Set<Int>()
        return pages.map { $0 * PageTouch.pageSize / chunkSize }.filter { seen.insert($0).inserted }
    }

    /// Mounts the store fresh (empty page cache and chunk cache, blobs evicted from the host page
    /// cache) for `body`, and unmounts it after.
    private func withMount(_ store: ImageStore, work: String, prefetch: Bool, _ body: (BenchMount) throws -> Void) throws {
        evictBlobs(store)
        let options = ["prefetch=\(prefetch ? "on" : "off")", mountOptions].filter { !$0.isEmpty }.joined(separator: ",")
        let mount = try BenchMount(daemon: daemon, store: store.root, mountpoint: work + "/mnt", options: options)
        defer { mount.unmount() }
        try body(mount)
    }

    private func measureOnMount(_ mount: BenchMount, _ image: String, _ label: String, _ pattern: Pattern, _ pages: [Int],
                                _ size: Int, countingFrom start: BenchMount.Counters? = nil) throws -> Row {
        let fd = try openMemory(mount, image)
        defer { close(fd) }
        let before = try start ?? mount.counters(image)
        let samples = try PageTouch.measure(fd: fd, size: size, pages: pages, access: access)
        let delta = try mount.counters(image) - before
        var measured = row(label, pattern, pages, samples)
        measured.fuseReads = delta.readsServed
        measured.bytesReturned = delta.bytesReturned
        measured.bytesFetched = delta.bytesFetched
        return measured
    }

    private func openMemory(_ mount: BenchMount, _ image: String) throws -> Int32 {
        let path = mount.mountpoint + "/" + image + "/memory"
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BenchMount.MountError(description: "open \(path): \(String(cString: strerror(errno)))") }
        return fd
    }

    private func row(_ memory: String, _ pattern: Pattern, _ pages: [Int], _ samples: Samples) -> Row {
        Row(memory: memory, pattern: pattern, pages: pages.count, medianMicros: samples.median / 1000,
            p99Micros: samples.p99 / 1000, totalMillis: samples.sum / 1e6,
            bytesTouched: Int64(pages.count) * Int64(PageTouch.pageSize))
    }

    private func readWhole(_ fd: Int32, size: Int) {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        var offset = 0
        while offset < size {
            let n = pread(fd, buffer, 1 << 20, off_t(offset))
            if n <= 0 { return }
            offset += n
        }
    }

    /// Drops the store's blobs from the host page cache, so a cold fetch reads them from disk.
    private func evictBlobs(_ store: ImageStore) {
        let directory = store.root + "/blobs/sha256"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            let fd = open(directory + "/" + name, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
            close(fd)
        }
    }

    public static func table(_ rows: [Row]) -> String {
        var table = Table(["memory", "pattern", "pages", "median µs", "p99 µs", "median ×plain", "p99 ×plain",
                           "total ms", "touched", "returned", "fetched", "FUSE reads"])
        for row in rows {
            table.add([row.memory, row.pattern.rawValue, "\(row.pages)", Format.fixed(row.medianMicros, 2), Format.fixed(row.p99Micros, 1),
                       Format.fixed(row.medianRatio, 2), Format.fixed(row.p99Ratio, 2), Format.fixed(row.totalMillis, 1),
                       ByteCount.format(row.bytesTouched), row.bytesReturned.map { ByteCount.format(Int64($0)) } ?? "-",
                       row.bytesFetched.map { ByteCount.format(Int64($0)) } ?? "-", row.fuseReads.map { "\($0)" } ?? "-"])
        }
        let prefetch = rows.compactMap { row in row.prefetchSeconds.map { "\(row.pattern.rawValue) \(Format.fixed($0 * 1000, 1)) ms" } }
        return table.rendered + "\n\nper-page first-touch time; ×plain: divided by the plain file's for the same pattern"
            + "\ntouched: pages × 4 KiB; returned: bytes catalyzerfs gave the kernel; fetched: compressed bytes read from the store"
            + (prefetch.isEmpty ? "" : "\nprefetch of the working set took: " + prefetch.joined(separator: ", "))
    }
}

/// A small seeded generator, so runs touch the same random pages.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
