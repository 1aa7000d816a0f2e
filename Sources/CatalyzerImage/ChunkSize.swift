/// Chunk size: the unit of compression, content addressing and on-demand fetching.
///
/// The default is 256 KiB, chosen with `catalyzer bench image --chunk-sizes 64K,128K,256K,512K,1M`
/// on the memory of a live python3 that imported a typical function's modules (table in
/// docs/benchmarks.md). What that run showed, and why it decides for 256 KiB:
/// - Decompression cost is linear in chunk size (zstd ~1.2 GB/s, lz4 ~3.5 GB/s per core), so the
///   miss path (read blob, verify sha256, decompress) costs ~0.26 ms per 256 KiB zstd chunk and
///   ~1.1 ms per 1 MiB chunk. catalyzerfs serves faults in reads of 128 KiB to 1 MiB; a chunk
///   larger than the read window makes the first fault in it pay for bytes nobody asked for.
/// - Smaller chunks barely compress worse here (zstd: 2.91x at 64 KiB, 2.93x at 128 KiB, 3.03x
///   at 256 KiB and 1 MiB), but each one is a blob: more manifest entries, more files, and,
///   across nodes, one registry request per chunk, where a request costs far more than
///   decompressing 256 KiB.
/// - 256 KiB is the readahead window catalyzerfs asks for, so one sequential read is one blob
///   fetch and one decompression, and the ratio is already that of 1 MiB chunks.
public enum ChunkSize {
    public static let `default` = 256 * 1024
    public static let minimum = 4096
    public static let maximum = 64 * 1024 * 1024

    public static func isValid(_ size: Int) -> Bool {
        size >= minimum && size <= maximum && size & (size - 1) == 0
    }
}
