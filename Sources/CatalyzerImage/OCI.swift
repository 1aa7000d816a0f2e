/// OCI image-spec types, as plain Codable values. Only the fields Catalyzer writes or reads.

/// A reference to a blob: what it is, its digest and its exact size.
public struct Descriptor: Codable, Sendable, Equatable {
    public var mediaType: String
    public var digest: Digest
    public var size: Int64
    public var artifactType: String?
    public var annotations: [String: String]?

    public init(mediaType: String, digest: Digest, size: Int64,
                artifactType: String? = nil, annotations: [String: String]? = nil) {
        self.mediaType = mediaType
        self.digest = digest
        self.size = size
        self.artifactType = artifactType
        self.annotations = annotations
    }
}

/// `application/vnd.oci.image.manifest.v1+json`.
public struct OCIManifest: Codable, Sendable, Equatable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var artifactType: String?
    public var config: Descriptor
    public var layers: [Descriptor]
    public var annotations: [String: String]?

    public init(artifactType: String?, config: Descriptor, layers: [Descriptor],
                annotations: [String: String]? = nil) {
        schemaVersion = 2
        mediaType = MediaType.ociManifest
        self.artifactType = artifactType
        self.config = config
        self.layers = layers
        self.annotations = annotations
    }
}

/// `index.json` at the root of an OCI image layout: the names of the store.
public struct OCIIndex: Codable, Sendable, Equatable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var manifests: [Descriptor]

    public init(manifests: [Descriptor] = []) {
        schemaVersion = 2
        mediaType = MediaType.ociIndex
        self.manifests = manifests
    }

    /// The annotation that names a manifest in an image layout.
    public static let refNameAnnotation = "org.opencontainers.image.ref.name"
}

/// The `oci-layout` marker file.
public struct OCILayout: Codable, Sendable, Equatable {
    public var imageLayoutVersion: String
    public init() { imageLayoutVersion = "1.0.0" }
}
