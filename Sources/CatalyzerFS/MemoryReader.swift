import CatalyzerImage
import Dispatch
import Glibc

/// The read path of `NAME/memory`: offset → chunks → (cache | fetch, verify, decompress) →
/// pieces of a reply that point straight at the decompressed chunks and at zeros.
struct MemoryReader: Sendable {
    let cache: ChunkCache
    let zeros: ZeroBuffer
    let log: Log

    /// A reply as a gather list. `chunks` keeps every chunk the list points into alive until
    /// the reply has been written to the kernel.
    struct Reply {
        var pieces: [iovec] = []
        var chunks: [DecompressedChunk] = []
        var byteCount = 0

        mutating func append(_ base: UnsafeRawPointer, _ count: Int) {
            pieces.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: base), iov_len: count))
            byteCount += count
        }
    }

    /// Up to `size` bytes of memory at `offset`; short only at the end of memory. A read that
    /// spans chunks takes its bytes from each of them.
    func read(_ node: ImageNode, offset: Int64, size: Int) throws(ImageError) -> Reply {
        let config = node.image.config
        var reply = Reply()
        guard offset >= 0, offset < config.memorySize else { return reply }
        let end = min(offset + Int64(size), config.memorySize)
        var position = offset
        while position < end {
            let index = Int(position / Int64(config.chunkSize))
            let chunkStart = Int64(index) * Int64(config.chunkSize)
            let within = Int(position - chunkStart)
            let count = Int(min(end, chunkStart + Int64(config.chunkLength(index))) - position)
            if let chunk = try chunk(node, index) {
                reply.append(chunk.bytes.baseAddress! + within, count)
                reply.chunks.append(chunk)
            } else {
                var left = count
                while left > 0 {
                    let piece = min(left, zeros.bytes.count)
                    reply.append(zeros.bytes.baseAddress!, piece)
                    left -= piece
                }
            }
            position += Int64(count)
        }
        return reply
    }

    /// Chunk `index` decompressed, or nil when it is all zero. Failures are counted and logged
    /// with the image and chunk, and thrown for the caller to answer EIO.
    func chunk(_ node: ImageNode, _ index: Int) throws(ImageError) -> DecompressedChunk? {
        let statistics = node.statistics
        guard let entry = node.image.chunk(at: index) else {
            statistics.zeroChunks.add(1, ordering: .relaxed)
            return nil
        }
        do {
            let (chunk, origin) = try cache.chunk(.init(digest: entry.digest, codec: entry.codec)) { () throws(ImageError) in
                try load(node, entry)
            }
            if origin == .cache { statistics.cacheHits.add(1, ordering: .relaxed) }
            return chunk
        } catch {
            statistics.errors.add(1, ordering: .relaxed)
            log.write("read error: image '\(node.image.name)' chunk \(index) (bytes \(Int64(index) * Int64(node.image.config.chunkSize)) +\(node.image.config.chunkLength(index))): \(error)")
            throw error
        }
    }

    /// Fetches chunk `entry`'s blob, verifies its digest and decompresses it.
    private func load(_ node: ImageNode, _ entry: ChunkEntry) throws(ImageError) -> DecompressedChunk {
        let image = node.image
        let blob = try node.source.blob(entry.digest, size: entry.size, image: image.name, role: "chunk \(entry.index)")
        node.statistics.blobsFetched.add(1, ordering: .relaxed)
        node.statistics.bytesFetched.add(UInt64(blob.count), ordering: .relaxed)
        let start = DispatchTime.now().uptimeNanoseconds
        defer { node.statistics.decompressionNanoseconds.add(DispatchTime.now().uptimeNanoseconds - start, ordering: .relaxed) }
        return try DecompressedChunk(length: image.config.chunkLength(entry.index)) { buffer throws(ImageError) in
            let result = blob.withUnsafeBytes { raw in
                Result { () throws(CodecError) in try entry.codec.decompress(raw, into: buffer) }
            }
            if case let .failure(problem) = result {
                throw .chunkUndecodable(image: image.name, index: entry.index, digest: entry.digest, detail: problem.description)
            }
        }
    }
}
