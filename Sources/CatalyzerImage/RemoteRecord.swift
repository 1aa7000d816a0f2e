import Foundation

/// Where an image of this store has been pushed to or pulled from: the store remembers, so that a
/// later push to another repository of the same registry can mount the blobs it shares with that
/// image instead of uploading them again (cross-repository mount).
public struct RemoteRecord: Codable, Sendable, Equatable {
    /// `host[:port]` of the registry.
    public var registry: String
    public var repository: String
    /// The manifest that registry's repository holds, and its size.
    public var manifest: Digest
    public var manifestSize: Int64

    public init(registry: String, repository: String, manifest: Digest, manifestSize: Int64) {
        self.registry = registry
        self.repository = repository
        self.manifest = manifest
        self.manifestSize = manifestSize
    }
}

extension ImageStore {
    /// The `index.json` annotation of a pulled image that says where it came from
    /// (`REGISTRY/REPOSITORY@DIGEST`).
    public static let originAnnotation = "dev.catalyzer.origin"

    var remotesPath: String { root + "/remotes.json" }

    /// How many records are kept; older ones are dropped.
    static let remoteRecordLimit = 256

    /// The recorded remotes, most recent last. A missing or unreadable file is no record: this
    /// is an optimization, never a reason for a push to fail.
    public func remoteRecords() -> [RemoteRecord] {
        guard let bytes = try? FileIO.readFile(remotesPath, limit: 16 << 20),
              let records = try? JSONDecoder().decode([RemoteRecord].self, from: Data(bytes)) else { return [] }
        return records
    }

    /// Adds a record (replacing an equal one), under the index lock.
    public func addRemoteRecord(_ record: RemoteRecord) throws(ImageError) {
        try prepareForWriting()
        let lock = try StoreLock(path: indexLockPath, mode: .exclusive, store: root)
        defer { withExtendedLifetime(lock) {} }
        var records = remoteRecords().filter { $0 != record }
        records.append(record)
        try writeAtomically(Self.encode(Array(records.suffix(Self.remoteRecordLimit))), to: remotesPath)
    }
}
