import CZstd
import Glibc

/// Streaming zstd compression into a sink: memory stays bounded whatever the input's size.
/// Deterministic for a given level and input (no threads), so packing the same tree twice gives
/// the same blob, and images share it by digest.
final class ZstdCompressor {
    private let context: OpaquePointer
    private var output: [UInt8]
    private let sink: (UnsafeRawBufferPointer) throws(ImageError) -> Void

    init(level: Int, sink: @escaping (UnsafeRawBufferPointer) throws(ImageError) -> Void) {
        context = ZSTD_createCCtx()
        ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, Int32(level))
        ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 1)
        output = [UInt8](repeating: 0, count: ZSTD_CStreamOutSize())
        self.sink = sink
    }

    deinit { ZSTD_freeCCtx(context) }

    func write(_ input: UnsafeRawBufferPointer) throws(ImageError) {
        try compress(input, end: false)
    }

    func finish() throws(ImageError) {
        try compress(UnsafeRawBufferPointer(start: nil, count: 0), end: true)
    }

    private func compress(_ input: UnsafeRawBufferPointer, end: Bool) throws(ImageError) {
        var source = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        while true {
            let (remaining, produced) = output.withUnsafeMutableBytes { out in
                var target = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
                let remaining = ZSTD_compressStream2(context, &target, &source, end ? ZSTD_e_end : ZSTD_e_continue)
                return (remaining, target.pos)
            }
            if ZSTD_isError(remaining) != 0 {
                throw .invalidInput("zstd compression failed: \(String(cString: ZSTD_getErrorName(remaining)))")
            }
            if produced > 0 {
                try output.withUnsafeBytes { raw in
                    Result { () throws(ImageError) in try sink(UnsafeRawBufferPointer(rebasing: raw[0..<produced])) }
                }.get()
            }
            if end ? remaining == 0 : source.pos == source.size { return }
        }
    }
}

/// Streaming zstd decompression from a reader (a file): reads never allocate more than zstd's
/// window and a buffer, so a hostile frame header claiming terabytes costs nothing.
final class ZstdFileReader {
    private let context: OpaquePointer
    private let source: (UnsafeMutableRawBufferPointer) throws(ImageError) -> Int
    private let path: String
    private var input: [UInt8]
    private var inputStart = 0
    private var inputEnd = 0
    private var endOfFile = false
    /// 0 once a frame has been completely decoded; else a hint that more input is needed.
    private var frameRemaining = 1

    init(read source: @escaping (UnsafeMutableRawBufferPointer) throws(ImageError) -> Int, path: String) {
        context = ZSTD_createDCtx()
        // A window larger than 128 MiB is not one catalyzer writes; refusing it bounds memory.
        ZSTD_DCtx_setParameter(context, ZSTD_d_windowLogMax, 27)
        self.source = source
        self.path = path
        input = [UInt8](repeating: 0, count: ZSTD_DStreamInSize())
    }

    deinit { ZSTD_freeDCtx(context) }

    /// Fills up to `buffer.count` bytes; returns 0 only at the end of the stream.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(ImageError) -> Int {
        var produced = 0
        while produced == 0 && buffer.count > 0 {
            if inputStart == inputEnd && !endOfFile {
                let count = try input.withUnsafeMutableBytes { raw in
                    Result { () throws(ImageError) in try source(raw) }
                }.get()
                inputStart = 0
                inputEnd = count
                if count == 0 { endOfFile = true }
            }
            if inputStart == inputEnd && endOfFile {
                if frameRemaining != 0 { throw .invalidInput("\(path): the zstd stream is truncated") }
                return 0
            }
            let (remaining, consumed, written) = input.withUnsafeBytes { raw in
                var source = ZSTD_inBuffer(src: raw.baseAddress! + inputStart, size: inputEnd - inputStart, pos: 0)
                var target = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
                let remaining = ZSTD_decompressStream(context, &target, &source)
                return (remaining, source.pos, target.pos)
            }
            if ZSTD_isError(remaining) != 0 {
                throw .invalidInput("\(path) does not decompress: \(String(cString: ZSTD_getErrorName(remaining)))")
            }
            frameRemaining = remaining
            inputStart += consumed
            produced = written
        }
        return produced
    }
}
