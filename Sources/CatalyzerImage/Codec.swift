import CLZ4
import CZstd
import Synchronization

/// How a memory chunk is compressed. Chosen per image; an individual chunk that does not shrink
/// is stored as `none` so that reading it never costs a decompression for nothing.
public enum Codec: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    case zstd
    case lz4
    case none

    public var description: String { rawValue }

    /// zstd's default level: the best ratio we can have while keeping creation above
    /// ~200 MiB/s per core; decompression speed hardly depends on the level.
    public static let defaultZstdLevel = 3

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        let name = try container.decode(String.self)
        guard let codec = Codec(rawValue: name) else {
            throw DecodingError.dataCorruptedError(
                in: container,
                debugDescription: "unknown codec '\(name)' (this catalyzer knows \(Codec.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        self = codec
    }

    /// Compresses `input`. `level` applies to zstd only.
    public func compress(_ input: UnsafeRawBufferPointer, level: Int = Codec.defaultZstdLevel) throws(CodecError) -> [UInt8] {
        switch self {
        case .none:
            return Array(input)
        case .zstd:
            let bound = ZSTD_compressBound(input.count)
            var output = [UInt8](repeating: 0, count: bound)
            let written = ZstdContexts.shared.withCompressor { cctx in
                output.withUnsafeMutableBytes { out in
                    ZSTD_compressCCtx(cctx, out.baseAddress, bound, input.baseAddress, input.count, Int32(level))
                }
            }
            if ZSTD_isError(written) != 0 {
                throw CodecError(codec: self, detail: String(cString: ZSTD_getErrorName(written)))
            }
            output.removeSubrange(written...)
            return output
        case .lz4:
            let bound = Int(LZ4_compressBound(Int32(input.count)))
            var output = [UInt8](repeating: 0, count: bound)
            let written = output.withUnsafeMutableBytes { out in
                LZ4_compress_default(input.baseAddress, out.baseAddress, Int32(input.count), Int32(bound))
            }
            if written <= 0 { throw CodecError(codec: self, detail: "LZ4_compress_default failed") }
            output.removeSubrange(Int(written)...)
            return output
        }
    }

    /// Decompresses `input` into exactly `output.count` bytes. Anything else (a short result, a
    /// longer one, a malformed frame) is an error: a chunk is never served partially filled.
    public func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws(CodecError) {
        switch self {
        case .none:
            guard input.count == output.count else {
                throw CodecError(codec: self, detail: "stored \(input.count) bytes, expected \(output.count)")
            }
            output.copyMemory(from: input)
        case .zstd:
            let produced = ZstdContexts.shared.withDecompressor { dctx in
                ZSTD_decompressDCtx(dctx, output.baseAddress, output.count, input.baseAddress, input.count)
            }
            if ZSTD_isError(produced) != 0 {
                throw CodecError(codec: self, detail: String(cString: ZSTD_getErrorName(produced)))
            }
            guard produced == output.count else {
                throw CodecError(codec: self, detail: "decompressed to \(produced) bytes, expected \(output.count)")
            }
        case .lz4:
            let produced = LZ4_decompress_safe(
                input.baseAddress?.assumingMemoryBound(to: CChar.self),
                output.baseAddress?.assumingMemoryBound(to: CChar.self),
                Int32(input.count), Int32(output.count))
            guard produced == Int32(output.count) else {
                throw CodecError(codec: self, detail: produced < 0
                    ? "malformed lz4 block" : "decompressed to \(produced) bytes, expected \(output.count)")
            }
        }
    }
}

/// A codec failed: the bytes are not a valid frame of that codec, or not of the expected size.
public struct CodecError: Error, Sendable, CustomStringConvertible {
    public let codec: Codec
    public let detail: String
    public var description: String { "\(codec): \(detail)" }
}

/// A pool of zstd contexts. `ZSTD_compress`/`ZSTD_decompress` allocate and free a context's
/// workspace on every call, which costs as much as compressing a small chunk; reusing contexts
/// across calls and threads removes that cost from the write path and from every FUSE read.
final class ZstdContexts: Sendable {
    static let shared = ZstdContexts()

    /// Owns one C context. Used by one thread at a time: it is either in the pool or checked out.
    private final class Context: @unchecked Sendable {
        let pointer: OpaquePointer
        let free: @Sendable (OpaquePointer) -> Void
        init(_ pointer: OpaquePointer, free: @escaping @Sendable (OpaquePointer) -> Void) {
            self.pointer = pointer
            self.free = free
        }
        deinit { free(pointer) }
    }

    private let compressors = Mutex<[Context]>([])
    private let decompressors = Mutex<[Context]>([])

    func withCompressor<R>(_ body: (OpaquePointer) -> R) -> R {
        let context = compressors.withLock { $0.popLast() }
            ?? Context(ZSTD_createCCtx(), free: { ZSTD_freeCCtx($0) })
        defer { compressors.withLock { $0.append(context) } }
        return body(context.pointer)
    }

    func withDecompressor<R>(_ body: (OpaquePointer) -> R) -> R {
        let context = decompressors.withLock { $0.popLast() }
            ?? Context(ZSTD_createDCtx(), free: { ZSTD_freeDCtx($0) })
        defer { decompressors.withLock { $0.append(context) } }
        return body(context.pointer)
    }
}
