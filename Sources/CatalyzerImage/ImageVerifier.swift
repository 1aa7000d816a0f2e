import Glibc

/// The result of re-checking one image.
public struct VerifyReport: Sendable, Codable {
    public var name: String
    public var blobsChecked: Int
    public var bytesChecked: Int64
    /// One sentence per problem found; empty when the image is intact.
    public var problems: [String]
    /// Chunk blobs of a lazily pulled image that are not in the store (they stay in the registry
    /// until touched); not problems.
    public var remoteBlobs: Int = 0
    public var ok: Bool { problems.isEmpty }
}

/// Checks an image's state blob (already verified against its digest) the way a restore would
/// decode it; returns one sentence per problem. The image layer treats the state as opaque, so
/// the layer that owns its format (the runtime) supplies this.
public typealias StateCheck = (_ image: String, _ config: ImageConfig, _ state: [UInt8]) -> [String]

extension ImageStore {
    /// Re-hashes every blob of the named image (manifest, config, state, each chunk) and
    /// decompresses every chunk to its exact length; with `stateCheck`, also decodes the state.
    /// Problems are collected, not thrown, so one run lists all the damage; only a name that does
    /// not exist throws.
    public func verify(_ name: String, stateCheck: StateCheck? = nil) throws(ImageError) -> VerifyReport {
        let descriptor = try manifestDescriptor(named: name)
        let lazy = descriptor.annotations?[Self.lazyAnnotation] == "true"
        var report = VerifyReport(name: name, blobsChecked: 0, bytesChecked: 0, problems: [])
        let image: Image
        do {
            image = try Image(store: self, name: name, manifestDescriptor: descriptor)
        } catch {
            report.problems.append(error.description)
            return report
        }
        report.blobsChecked = 2
        report.bytesChecked = descriptor.size + image.manifest.config.size
        do {
            let state = try image.readState()
            if let stateCheck { report.problems += stateCheck(name, image.config, state) }
        } catch {
            report.problems.append(error.description)
        }
        report.blobsChecked += 1
        report.bytesChecked += image.config.state.size

        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: image.config.chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        var checked: Set<Digest> = []
        for entry in image.config.chunks {
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<image.config.chunkLength(entry.index)])
            do {
                try image.readChunk(entry.index, into: chunk)
            } catch .blobMissing where lazy {
                if checked.insert(entry.digest).inserted { report.remoteBlobs += 1 }
                continue
            } catch {
                report.problems.append(error.description)
            }
            if checked.insert(entry.digest).inserted {
                report.blobsChecked += 1
                report.bytesChecked += entry.size
            }
        }
        if let pages = image.config.pageWorkingSet {
            report.blobsChecked += 1
            report.bytesChecked += pages.blob.size
            if let problem = pageWorkingSetProblem(image, pages, lazy: lazy) { report.problems.append(problem) }
        }
        return report
    }

    /// Decodes every frame of the working-set blob and compares each page with the same page of
    /// the image's memory: a restore installs these bytes in place of the memory's, so they must
    /// be the same. Pages of chunks left in the registry (lazy) are not compared.
    private func pageWorkingSetProblem(_ image: Image, _ record: PageWorkingSetRecord, lazy: Bool) -> String? {
        let blob: [UInt8]
        do {
            guard let bytes = try image.readPageWorkingSet() else { return nil }
            blob = bytes
        } catch {
            return error.description
        }
        let pages: PageWorkingSet
        switch blob.withUnsafeBytes({ PageWorkingSet.decode($0, memorySize: image.config.memorySize) }) {
        case let .success(set): pages = set
        case let .failure(problem): return "image '\(image.name)': its working-set blob \(record.blob.digest) is not usable: \(problem)"
        }
        guard pages.pageCount == record.pages else {
            return "image '\(image.name)': its working-set blob holds \(pages.pageCount) pages, its config says \(record.pages)"
        }
        let config = image.config, pageSize = PageWorkingSet.pageSize
        let frameBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: PageWorkingSet.maximumFramePages * pageSize, alignment: pageSize)
        defer { frameBuffer.deallocate() }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: config.chunkSize, alignment: pageSize)
        defer { chunk.deallocate() }
        var loadedChunk = -1
        let segmentsByFrame = pages.segmentsByFrame()
        for (index, frame) in pages.frames.enumerated() {
            let decoded = UnsafeMutableRawBufferPointer(rebasing: frameBuffer[0..<(frame.pages * pageSize)])
            let result = blob.withUnsafeBytes { raw in Result { () throws(CodecError) in try pages.decodeFrame(index, of: raw, into: decoded) } }
            if case let .failure(error) = result {
                return "image '\(image.name)': working-set frame \(index) does not decode: \(error)"
            }
            for segment in segmentsByFrame[index] {
                for page in 0..<segment.count {
                    let offset = (segment.firstPage + Int64(page)) * Int64(pageSize)
                    let chunkIndex = Int(offset / Int64(config.chunkSize))
                    if chunkIndex != loadedChunk {
                        do {
                            try image.readChunk(chunkIndex, into: UnsafeMutableRawBufferPointer(rebasing: chunk[0..<config.chunkLength(chunkIndex)]))
                        } catch .blobMissing where lazy {
                            loadedChunk = -1
                            continue
                        } catch {
                            return error.description
                        }
                        loadedChunk = chunkIndex
                    }
                    let within = Int(offset % Int64(config.chunkSize))
                    if memcmp(decoded.baseAddress! + (segment.pageInFrame + page) * pageSize, chunk.baseAddress! + within, pageSize) != 0 {
                        return "image '\(image.name)': working-set page \(segment.firstPage + Int64(page)) differs from the same page of its memory chunks; the image is damaged: re-record its working set or re-create it"
                    }
                }
            }
        }
        return nil
    }
}
