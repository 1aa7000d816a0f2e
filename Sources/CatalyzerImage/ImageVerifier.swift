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
        return report
    }
}
