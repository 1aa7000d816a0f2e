import Foundation
import Glibc

/// What `gc` removed.
public struct GCReport: Sendable, Codable {
    public var blobsRemoved: Int
    public var bytesRemoved: Int64
    public var blobsKept: Int
    public var temporaryFilesRemoved: Int
    /// Image versions no name refers to any more whose blobs were kept because a sandbox still
    /// runs from them.
    public var versionsInUse: Int
    /// Entries of `blobs/sha256/` that are not regular files (a directory, a FIFO, a link):
    /// never blobs the store wrote, so gc leaves them alone and names them instead of failing.
    public var foreignEntries: [String] = []
    /// Unpacked rootfs directories (`STORE/rootfs/`) removed: of layers no image refers to any
    /// more, or left over by an interrupted unpack.
    public var rootfsDirectoriesRemoved: Int = 0
}

extension ImageStore {
    /// Deletes every blob that no named image refers to, and the leftovers of interrupted
    /// writes in `ingest/`. Holds the gc lock exclusively, so no create is running meanwhile:
    /// every unreferenced blob is garbage, not a blob of an image about to be named.
    ///
    /// If any named image's manifest cannot be read, nothing is deleted: its blobs cannot be
    /// told apart from garbage, and deleting them would turn a repairable image into a lost one.
    ///
    /// `manifestsInUse` names image versions sandboxes still run from (their memory is fetched
    /// on first touch, so their blobs must outlive a replace or remove). It is asked after the
    /// lock is taken and the names are read: a version retired before then is in its answer.
    public func gc(manifestsInUse: () -> [Digest] = { [] }) throws(ImageError) -> GCReport {
        guard exists else { return GCReport(blobsRemoved: 0, bytesRemoved: 0, blobsKept: 0, temporaryFilesRemoved: 0, versionsInUse: 0) }
        try prepareForWriting()
        let lock = try StoreLock(path: gcLockPath, mode: .exclusive, store: root)
        defer { withExtendedLifetime(lock) {} }

        var live: Set<Digest> = []
        func keep(manifest digest: Digest, size: Int64?, label: String) throws(ImageError) {
            live.insert(digest)
            let manifest: OCIManifest
            do {
                var status = stat()
                // A version only a running sandbox names has no descriptor: its manifest's size
                // is the file's, capped like any manifest's so a planted file cannot size a buffer.
                let stored = size ?? (lstat(blobPath(digest), &status) == 0 ? min(Int64(status.st_size), Image.metadataLimit + 1) : 0)
                let bytes = try readVerifiedBlob(digest, size: stored, image: label, role: "manifest")
                manifest = try JSONDecoder().decode(OCIManifest.self, from: Data(bytes))
            } catch {
                throw .invalidStore(path: root, detail: "gc stopped without deleting anything: the manifest of image '\(label)' is unreadable (\(error)); remove that image with `catalyzer image rm` first")
            }
            live.insert(manifest.config.digest)
            for layer in manifest.layers { live.insert(layer.digest) }
        }
        for descriptor in try index().manifests {
            try keep(manifest: descriptor.digest, size: descriptor.size,
                     label: descriptor.annotations?[OCIIndex.refNameAnnotation] ?? descriptor.digest.description)
        }
        var versionsInUse = 0
        for digest in manifestsInUse() where !live.contains(digest) && FileIO.exists(blobPath(digest)) {
            try keep(manifest: digest, size: nil, label: "\(digest) (replaced or removed, still running)")
            versionsInUse += 1
        }

        var report = GCReport(blobsRemoved: 0, bytesRemoved: 0, blobsKept: 0, temporaryFilesRemoved: 0, versionsInUse: versionsInUse)
        for file in try FileIO.listDirectory(blobsDirectory).sorted() {
            if let digest = Digest("sha256:" + file), live.contains(digest) {
                report.blobsKept += 1
                continue
            }
            let path = blobsDirectory + "/" + file
            var info = stat()
            guard lstat(path, &info) == 0 else {
                if errno == ENOENT { continue }  // removed meanwhile
                throw ImageError.io(operation: "stat", path: path, errno: errno)
            }
            guard info.st_mode & S_IFMT == S_IFREG else {
                report.foreignEntries.append("\(path) (\(FileIO.fileKind(info.st_mode)))")
                continue
            }
            let size = Int64(info.st_size)
            guard unlink(path) == 0 else { throw ImageError.writing("unlink", path, errno: errno, store: root) }
            report.blobsRemoved += 1
            report.bytesRemoved += size
        }
        // Unpacked rootfs layers: one directory per layer digest; kept while the layer is live
        // (a named image or a running version refers to it). Chains of several layers are named
        // by a digest of digests, which gc cannot map back, so they stay.
        if FileIO.exists(rootfsDirectory) {
            for entry in try FileIO.listDirectory(rootfsDirectory) {
                let stale = entry.hasPrefix(".tmp-") || Digest("sha256:" + entry).map { !live.contains($0) } ?? false
                guard stale else { continue }
                do {
                    try FileManager.default.removeItem(atPath: rootfsDirectory + "/" + entry)
                    report.rootfsDirectoriesRemoved += 1
                } catch {
                    throw ImageError.invalidStore(path: root, detail: "gc cannot remove the unpacked rootfs \(rootfsDirectory)/\(entry): \(error)")
                }
            }
        }
        if FileIO.exists(ingestDirectory) {
            // unlink never removes a directory, so something planted in ingest/ is left alone.
            for file in try FileIO.listDirectory(ingestDirectory) where unlink(ingestDirectory + "/" + file) == 0 {
                report.temporaryFilesRemoved += 1
            }
        }
        return report
    }
}
