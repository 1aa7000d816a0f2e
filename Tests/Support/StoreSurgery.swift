import CatalyzerImage
import Foundation
import Glibc

/// Test-only surgery on a store: rewrite an image's config, manifest or state the way a bug or an
/// attacker could, keeping everything else valid so the check under test is the one that fires.
/// It works on the store's files directly, as damage from outside would.
public enum StoreSurgery {
    /// Re-publishes `name` with its config JSON changed by `edit`.
    public static func editConfig(_ store: ImageStore, _ name: String, _ edit: (inout [String: Any]) -> Void) throws {
        let image = try store.open(name)
        var json = try JSONSerialization.jsonObject(with: Data(image.readConfigBytes())) as! [String: Any]
        edit(&json)
        let configBytes = Array(try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys]))
        var manifest = image.manifest
        manifest.config = Descriptor(mediaType: manifest.config.mediaType, digest: try writeBlob(store, configBytes),
                                     size: Int64(configBytes.count))
        try publish(store, name, manifest)
    }

    /// Re-publishes `name` with its manifest changed by `edit`.
    public static func editManifest(_ store: ImageStore, _ name: String, _ edit: (inout OCIManifest) -> Void) throws {
        var manifest = try store.open(name).manifest
        edit(&manifest)
        try publish(store, name, manifest)
    }

    /// Re-publishes `name` with `bytes` as its state blob, consistently referenced, so only the
    /// state's own decoding can object.
    public static func replaceState(_ store: ImageStore, _ name: String, with bytes: [UInt8]) throws {
        let image = try store.open(name)
        let old = image.config.state
        let state = Descriptor(mediaType: old.mediaType, digest: try writeBlob(store, bytes), size: Int64(bytes.count))
        var config = image.config
        config.state = state
        let configBytes = Array(try JSONEncoder().encode(config))
        var manifest = image.manifest
        manifest.config = Descriptor(mediaType: manifest.config.mediaType, digest: try writeBlob(store, configBytes),
                                     size: Int64(configBytes.count))
        manifest.layers = manifest.layers.map { $0.digest == old.digest ? state : $0 }
        try publish(store, name, manifest)
    }

    /// Publishes image `name` again as `copy`: the same manifest, so every blob is shared. Lets
    /// a test damage the copy's config or state (surgery re-publishes) and keep the original.
    public static func copy(_ store: ImageStore, _ name: String, to copy: String) throws {
        try publish(store, copy, try store.open(name).manifest)
    }

    /// Replaces the file at `path` (a blob) by a FIFO of the same name: what a reader must never
    /// block on.
    public static func replaceWithFIFO(_ path: String) throws {
        guard unlink(path) == 0, mkfifo(path, 0o600) == 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
        }
    }

    /// Path of the blob holding chunk `index` of `name`.
    public static func chunkBlobPath(_ store: ImageStore, _ name: String, chunk index: Int) throws -> String {
        let image = try store.open(name)
        return store.blobPath(image.chunk(at: index)!.digest)
    }

    private static func writeBlob(_ store: ImageStore, _ bytes: [UInt8]) throws -> Digest {
        let digest = Digest(of: bytes)
        try Data(bytes).write(to: URL(fileURLWithPath: store.blobPath(digest)))
        return digest
    }

    /// Points `name` in index.json at `manifest`, stored as a new blob.
    private static func publish(_ store: ImageStore, _ name: String, _ manifest: OCIManifest) throws {
        let bytes = Array(try JSONEncoder().encode(manifest))
        let descriptor = Descriptor(mediaType: MediaType.ociManifest, digest: try writeBlob(store, bytes),
                                    size: Int64(bytes.count), annotations: [OCIIndex.refNameAnnotation: name])
        var index = try store.index()
        index.manifests.removeAll { $0.annotations?[OCIIndex.refNameAnnotation] == name }
        index.manifests.append(descriptor)
        try JSONEncoder().encode(index).write(to: URL(fileURLWithPath: store.root + "/index.json"))
    }
}
