import CatalyzerImage
import Dispatch
import Foundation
import Synchronization

/// What `Registry.push` did.
public struct PushReport: Codable, Sendable {
    public var reference: String
    public var digest: Digest
    /// Blobs of the image (config, state, chunks; the manifest not counted).
    public var blobs: Int
    public var uploaded: Int
    public var mounted: Int
    public var existing: Int
    public var bytesUploaded: Int64
    public var seconds: Double
}

/// What `Registry.pull` did.
public struct PullReport: Codable, Sendable {
    public var reference: String
    public var name: String
    public var digest: Digest
    public var blobs: Int
    public var downloaded: Int
    public var existing: Int
    public var bytesDownloaded: Int64
    /// Chunk blobs left in the registry (`--lazy`): fetched by catalyzerfs on first touch.
    public var remote: Int = 0
    public var seconds: Double
}

/// Push and pull of images between the local store and an OCI distribution registry.
public enum Registry {
    /// Pushes image `name` to `reference`: every blob the registry lacks (HEAD) is mounted from
    /// another repository of that registry the store knows has it, or uploaded, up to
    /// `options.parallelism` at once; then the manifest, byte for byte as stored (so its digest
    /// is the local one). A rerun after a failure sends only what is still missing.
    public static func push(_ name: String, store: ImageStore, to reference: ImageReference, options: RegistryOptions,
                            events: @escaping @Sendable (TransferEvent) -> Void = { _ in }) async throws(RegistryError) -> PushReport {
        let started = DispatchTime.now()
        let image: Image
        do { image = try store.open(name) } catch { throw .store(error) }
        if case let .digest(digest) = reference.reference, digest != image.manifestDescriptor.digest {
            throw .invalidReference(reference.description, why: "image '\(name)' has manifest digest \(image.manifestDescriptor.digest), not \(digest); push by tag, or by the image's own digest")
        }
        let roles = Self.roles(of: image.config, manifest: image.manifest)
        var blobs = [image.manifest.config]
        var seen: Set<Digest> = [image.manifest.config.digest]
        for layer in image.manifest.layers where seen.insert(layer.digest).inserted { blobs.append(layer) }
        events(.plan(operation: .push, reference: reference.description, blobs: blobs.count, bytes: blobs.reduce(0) { $0 + $1.size }))

        let mountSources = Self.mountSources(store: store, registry: reference.registry, excluding: reference.repository)
        let client = try RegistryClient(registry: reference.registry, options: options, events: events)
        struct Counts { var uploaded = 0, mounted = 0, existing = 0, bytes: Int64 = 0 }
        let counts = Mutex(Counts())
        do {
            try await forEachConcurrently(blobs, limit: options.parallelism) { blob in
                let role = roles[blob.digest] ?? "layer"
                let outcome = try await client.uploadBlob(reference.repository, blob.digest, size: blob.size,
                                                          mountFrom: mountSources[blob.digest]) {
                    try store.readBlob(blob.digest, size: blob.size, image: name, role: role)
                }
                counts.withLock {
                    switch outcome {
                    case .existing: $0.existing += 1
                    case .mounted: $0.mounted += 1
                    case .uploaded: $0.uploaded += 1; $0.bytes += blob.size
                    }
                }
                if outcome == .uploaded { events(.bytes(blob.size)) }
                events(.blob(digest: blob.digest, role: role, size: blob.size,
                             action: outcome == .uploaded ? .uploaded : outcome == .mounted ? .mounted : .existing))
            }
            try await client.putManifest(image.manifestBytes, mediaType: MediaType.ociManifest, to: reference)
        } catch {
            await client.shutdown()
            throw mapped(error, registry: reference.registry)
        }
        await client.shutdown()
        // Only an optimization for later pushes: a store that cannot record it still pushed.
        try? store.addRemoteRecord(RemoteRecord(registry: reference.registry, repository: reference.repository,
                                                manifest: image.manifestDescriptor.digest, manifestSize: image.manifestDescriptor.size))
        let final = counts.withLock { $0 }
        return PushReport(reference: reference.description, digest: image.manifestDescriptor.digest, blobs: blobs.count,
                          uploaded: final.uploaded, mounted: final.mounted, existing: final.existing, bytesUploaded: final.bytes,
                          seconds: seconds(since: started))
    }

    /// Pulls `reference` into the store as `name` (default: `reference.defaultImageName`). The
    /// manifest and config are checked before any chunk moves (a foreign or hostile image is
    /// refused up front); every blob the store lacks is downloaded, up to `options.parallelism`
    /// at once, and verified against its digest before it is stored; the name is published
    /// only when every blob is in place. A failed pull publishes nothing, and its rerun downloads
    /// only the blobs still missing.
    ///
    /// With `lazy`, only the manifest, config, state, rootfs layers and the chunks of the working
    /// set are downloaded; the image is published with its origin (and how to reach it), and
    /// catalyzerfs fetches every other chunk from the registry on first touch.
    public static func pull(_ reference: ImageReference, as name: String? = nil, store: ImageStore, options: RegistryOptions, lazy: Bool = false,
                            events: @escaping @Sendable (TransferEvent) -> Void = { _ in }) async throws(RegistryError) -> PullReport {
        let started = DispatchTime.now()
        let name = name ?? reference.defaultImageName
        guard ImageStore.isValidName(name) else {
            throw .store(.invalidInput("'\(name)' is not a valid image name (letters, digits, '.', '_', '-'; starting with a letter or digit); pass --name NAME"))
        }
        let client = try RegistryClient(registry: reference.registry, options: options, events: events)
        do {
            let report = try await pull(reference, name: name, store: store, client: client, lazy: lazy, events: events, started: started)
            await client.shutdown()
            return report
        } catch {
            await client.shutdown()
            throw mapped(error, registry: reference.registry)
        }
    }

    private static func pull(_ reference: ImageReference, name: String, store: ImageStore, client: RegistryClient, lazy: Bool,
                             events: @escaping @Sendable (TransferEvent) -> Void, started: DispatchTime) async throws -> PullReport {
        let repository = reference.repository
        let (manifestBytes, mediaType) = try await client.fetchManifest(reference)
        let digest = Digest(of: manifestBytes)
        if case let .digest(expected) = reference.reference, expected != digest {
            throw RegistryError.digestMismatch(registry: reference.registry, repository: repository, digest: expected, role: "manifest",
                                               actual: digest, expectedSize: Int64(manifestBytes.count), actualSize: Int64(manifestBytes.count))
        }
        let manifest = try checkedManifest(manifestBytes, mediaType: mediaType, reference: reference)
        let importer = try store.beginImport()

        let config = manifest.config
        struct Counts { var downloaded = 0, existing = 0, bytes: Int64 = 0 }
        let counts = Mutex(Counts())
        @Sendable func fetch(_ blob: Descriptor, role: String) async throws {
            if store.hasBlob(blob.digest, size: blob.size) {
                counts.withLock { $0.existing += 1 }
                events(.blob(digest: blob.digest, role: role, size: blob.size, action: .existing))
                return
            }
            _ = try await client.downloadBlob(repository, blob.digest, size: blob.size, role: role,
                                              makeWriter: { try importer.makeBlobWriter(expecting: blob.digest, size: blob.size) },
                                              progress: { events(.bytes(Int64($0))) })
            counts.withLock { $0.downloaded += 1; $0.bytes += blob.size }
            events(.blob(digest: blob.digest, role: role, size: blob.size, action: .downloaded))
        }

        var layers: [Descriptor] = []
        var seen: Set<Digest> = [config.digest]
        for layer in manifest.layers where seen.insert(layer.digest).inserted { layers.append(layer) }
        // Every layer but the memory chunks (the state, the page working set, rootfs layers) is
        // needed by every pull, lazy or not, and is known by its media type: those travel beside
        // the config, which saves a round trip. The config is still checked before any chunk
        // moves: it says which chunks a lazy pull of an image without a page working set needs.
        let chunkTypes = Set(Codec.allCases.map(MediaType.chunk))
        let upFront = layers.filter { !chunkTypes.contains($0.mediaType) }
        let planKnown = !lazy || upFront.contains { MediaType.pageWorkingSetTypes.contains($0.mediaType) }
        func plan(_ blobs: [Descriptor]) {
            events(.plan(operation: .pull, reference: reference.description, blobs: blobs.count + 1,
                         bytes: blobs.reduce(config.size) { $0 + $1.size }))
        }
        var fetched: Set<Digest> = []
        if planKnown {
            plan(lazy ? upFront : layers)
            try await forEachConcurrently([config] + upFront, limit: client.options.parallelism) { blob in
                try await fetch(blob, role: blob.digest == config.digest ? "config" : Self.role(ofMediaType: blob.mediaType))
            }
            fetched = Set(upFront.map(\.digest))
        } else {
            try await fetch(config, role: "config")
        }
        let configBytes = try store.readBlob(config.digest, size: config.size, image: name, role: "config")
        let imageConfig = try importer.checkConfig(configBytes, manifest: manifest, image: name)
        let roles = Self.roles(of: imageConfig, manifest: manifest)

        // Lazy: the chunks outside the working set stay in the registry. An image with a page
        // working set needs no chunk up front (every page its recorded request touches is in that
        // blob), so all of its chunks stay; the chunk list is only for images without one.
        var remote: Set<Digest> = []
        if lazy {
            let working = imageConfig.pageWorkingSet != nil ? []
                : Set((imageConfig.workingSet ?? []).compactMap { imageConfig.chunk(at: $0)?.digest })
            let chunks = Set(imageConfig.chunks.map(\.digest))
            remote = chunks.subtracting(working).subtracting([imageConfig.state.digest]).subtracting(imageConfig.rootfs?.layers.map(\.digest) ?? [])
        }
        let wanted = layers.filter { !remote.contains($0.digest) }
        if !planKnown { plan(wanted) }
        try await forEachConcurrently(wanted.filter { !fetched.contains($0.digest) }, limit: client.options.parallelism) { layer in
            try await fetch(layer, role: roles[layer.digest] ?? "layer")
        }
        var annotations = [ImageStore.originAnnotation: reference.with(digest: digest).description]
        if lazy {
            annotations[ImageStore.lazyAnnotation] = "true"
            if client.options.insecure { annotations[ImageStore.originInsecureAnnotation] = "true" }
            if let caFile = client.options.caFile {
                annotations[ImageStore.originCAFileAnnotation] = URL(fileURLWithPath: caFile).standardizedFileURL.path
            }
        }
        _ = try importer.publish(name: name, manifestBytes: manifestBytes, annotations: annotations, remoteBlobs: remote)
        try? store.addRemoteRecord(RemoteRecord(registry: reference.registry, repository: repository,
                                                manifest: digest, manifestSize: Int64(manifestBytes.count)))
        let final = counts.withLock { $0 }
        return PullReport(reference: reference.description, name: name, digest: digest, blobs: wanted.count + 1,
                          downloaded: final.downloaded, existing: final.existing, bytesDownloaded: final.bytes,
                          remote: remote.count, seconds: seconds(since: started))
    }

    /// Decodes a pulled manifest and refuses anything but a catalyzer image manifest, saying what
    /// it is instead.
    static func checkedManifest(_ bytes: [UInt8], mediaType: String, reference: ImageReference) throws -> OCIManifest {
        let type = mediaType.split(separator: ";").first.map { String($0).trimmingCharacters(in: .whitespaces) } ?? ""
        if type == MediaType.ociIndex || type.hasSuffix("manifest.list.v2+json") {
            throw RegistryError.notACatalyzerImage(reference, detail: "it is an image index (\(type)), a list of platform images; catalyzer images are single manifests")
        }
        guard let manifest = try? JSONDecoder().decode(OCIManifest.self, from: Data(bytes)) else {
            throw RegistryError.notACatalyzerImage(reference, detail: "its manifest (\(type.isEmpty ? "no media type" : type)) is not an OCI image manifest")
        }
        guard manifest.config.mediaType == MediaType.imageConfig else {
            throw RegistryError.notACatalyzerImage(reference, detail: "its config has media type '\(manifest.config.mediaType)', not '\(MediaType.imageConfig)' (a container image or another artifact)")
        }
        guard manifest.config.size > 0, manifest.config.size <= 64 << 20 else {
            throw RegistryError.notACatalyzerImage(reference, detail: "its config claims \(manifest.config.size) bytes, not a size a catalyzer config has")
        }
        return manifest
    }

    /// A layer's role by its media type alone, for blobs fetched before the config says more.
    static func role(ofMediaType type: String) -> String {
        if type == MediaType.state { return "state" }
        if MediaType.pageWorkingSetTypes.contains(type) { return "working set" }
        if MediaType.rootfsLayers.contains(type) { return "rootfs layer" }
        return "layer"
    }

    /// "config", "state", "chunk N" by blob digest, for messages and events.
    static func roles(of config: ImageConfig, manifest: OCIManifest) -> [Digest: String] {
        var roles: [Digest: String] = [manifest.config.digest: "config", config.state.digest: "state"]
        for layer in config.rootfs?.layers ?? [] { roles[layer.digest] = "rootfs layer" }
        if let pages = config.pageWorkingSet { roles[pages.blob.digest] = "working set" }
        for chunk in config.chunks where roles[chunk.digest] == nil { roles[chunk.digest] = "chunk \(chunk.index)" }
        return roles
    }

    /// For each blob of an image this store once pushed to or pulled from another repository of
    /// `registry`, that repository: where a push can mount the blob from.
    static func mountSources(store: ImageStore, registry: String, excluding repository: String) -> [Digest: String] {
        var sources: [Digest: String] = [:]
        for record in store.remoteRecords() where record.registry == registry && record.repository != repository {
            guard let bytes = try? store.readBlob(record.manifest, size: record.manifestSize, image: "-", role: "manifest"),
                  let manifest = try? JSONDecoder().decode(OCIManifest.self, from: Data(bytes)) else { continue }
            for blob in [manifest.config] + manifest.layers { sources[blob.digest] = record.repository }
        }
        return sources
    }

    static func mapped(_ error: Error, registry: String) -> RegistryError {
        switch error {
        case let error as RegistryError: error
        case let error as ImageError: .store(error)
        case is CancellationError: .unreachable(registry: registry, attempts: 1, detail: "cancelled")
        default: .unreachable(registry: registry, attempts: 1, detail: RegistryClient.describe(error))
        }
    }

    static func seconds(since start: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    }
}
