import CatalyzerImage
import Foundation
import Glibc

/// `catalyzer bench image`: what each codec and chunk size costs and saves on a memory dump.
///
/// For every (codec, chunk size) it creates the image in a fresh store (so no blob is deduplicated
/// against an earlier run) and measures: the compression ratio, create throughput, decompression
/// throughput and per-chunk latency of the codec alone (blobs already in memory), and the latency
/// of the whole miss path catalyzerfs pays per chunk (read blob from page cache, verify sha256,
/// decompress). `none` is the baseline: its miss path is read + hash + copy.
public struct ImageBenchmark: Sendable {
    public var input: String
    public var codecs: [Codec] = [.none, .lz4, .zstd]
    public var chunkSizes: [Int] = [64 << 10, 256 << 10, 1 << 20]
    public var runs: Int = 3
    public var workDirectory: String = NSTemporaryDirectory()

    public init(input: String) { self.input = input }

    public struct Row: Sendable, Codable {
        public var codec: Codec
        public var chunkSize: Int
        public var inputBytes: Int64
        public var storedBytes: Int64
        public var storedChunks: Int
        public var ratio: Double
        public var createMiBPerSecond: Double
        public var decompressMiBPerSecond: Double
        public var decompressMicrosMedian: Double
        public var decompressMicrosP99: Double
        public var missPathMicrosMedian: Double
        public var missPathMicrosP99: Double
    }

    public func run(log: (String) -> Void) throws -> [Row] {
        var rows: [Row] = []
        for chunkSize in chunkSizes {
            for codec in codecs {
                log("bench: \(codec) with \(ByteCount.format(Int64(chunkSize))) chunks")
                rows.append(try measure(codec: codec, chunkSize: chunkSize))
            }
        }
        return rows
    }

    private func measure(codec: Codec, chunkSize: Int) throws -> Row {
        var options = ImageCreateOptions()
        options.codec = codec
        options.chunkSize = chunkSize
        var createSeconds = Samples()
        var image: Image?
        var inputBytes: Int64 = 0
        for run in 0..<runs {
            let root = workDirectory + "/catalyzer-bench-\(getpid())-\(run)"
            defer { if run < runs - 1 { removeTree(root) } }
            let store = ImageStore(root: root)
            let report = try store.createImage(named: "bench", fromFile: input, options: options)
            createSeconds.add(report.seconds)
            inputBytes = report.memorySize
            if run == runs - 1 { image = try store.open("bench") }
        }
        guard let image else { throw ProcessMemory.DumpError(description: "no runs") }
        defer { removeTree(image.store.root) }

        let config = image.config
        let blobs = try config.chunks.map { try image.store.readVerifiedBlob($0.digest, size: $0.size, image: "bench", role: "chunk") }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        var decompress = Samples()
        var miss = Samples()
        var passSeconds = Samples()
        var decompressedBytes: Int64 = 0
        for _ in 0..<runs {
            decompressedBytes = 0
            var pass = 0.0
            for (entry, blob) in zip(config.chunks, blobs) {
                let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<config.chunkLength(entry.index)])
                let seconds = try Clock.measure {
                    try blob.withUnsafeBytes { try entry.codec.decompress($0, into: chunk) }
                }
                decompress.add(seconds * 1e6)
                pass += seconds
                decompressedBytes += Int64(chunk.count)
                miss.add(try Clock.measure { try image.readChunk(entry.index, into: chunk) } * 1e6)
            }
            passSeconds.add(pass)
        }
        let stored = config.storedChunkBytes
        return Row(
            codec: codec, chunkSize: chunkSize, inputBytes: inputBytes, storedBytes: stored,
            storedChunks: config.chunks.count,
            ratio: stored > 0 ? Double(inputBytes) / Double(stored) : 0,
            createMiBPerSecond: Double(inputBytes) / 1048576 / createSeconds.median,
            decompressMiBPerSecond: Double(decompressedBytes) / 1048576 / max(passSeconds.median, 1e-9),
            decompressMicrosMedian: decompress.median, decompressMicrosP99: decompress.p99,
            missPathMicrosMedian: miss.median, missPathMicrosP99: miss.p99)
    }

    /// Renders rows as a table, with each row's miss-path latency relative to `none` at the same
    /// chunk size.
    public static func table(_ rows: [Row]) -> String {
        var table = Table(["codec", "chunk", "ratio", "stored", "create MiB/s", "decomp MiB/s",
                           "decomp p50 µs", "decomp p99 µs", "miss p50 µs", "miss p99 µs", "miss vs none"])
        for row in rows {
            let baseline = rows.first { $0.codec == .none && $0.chunkSize == row.chunkSize }
            table.add([
                row.codec.rawValue, ByteCount.format(Int64(row.chunkSize)), Format.fixed(row.ratio, 2),
                ByteCount.format(row.storedBytes), Format.fixed(row.createMiBPerSecond, 0),
                Format.fixed(row.decompressMiBPerSecond, 0),
                Format.fixed(row.decompressMicrosMedian, 1), Format.fixed(row.decompressMicrosP99, 1),
                Format.fixed(row.missPathMicrosMedian, 1), Format.fixed(row.missPathMicrosP99, 1),
                baseline.map { Format.fixed(row.missPathMicrosMedian / max($0.missPathMicrosMedian, 1e-9), 2) + "x" } ?? "-",
            ])
        }
        return table.rendered
    }

    private func removeTree(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }
}
