/// Media types of everything Catalyzer stores.
///
/// An image is an OCI *artifact*: a standard OCI image manifest whose config is Catalyzer's own
/// JSON (the chunk table and metadata) and whose layers are the state blob and the compressed
/// memory chunks. Standard tools (a distribution registry, `skopeo`) can therefore store and copy
/// images without knowing what the blobs mean.
public enum MediaType {
    public static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let ociIndex = "application/vnd.oci.image.index.v1+json"
    /// `artifactType` of every Catalyzer image manifest.
    public static let imageArtifact = "application/vnd.catalyzer.image.v1"
    /// The config blob: `ImageConfig` as JSON.
    public static let imageConfig = "application/vnd.catalyzer.image.config.v1+json"
    /// The monitor's serialized vCPU and kernel state.
    public static let state = "application/vnd.catalyzer.state.v1"

    /// The media type of a memory chunk blob compressed with `codec`.
    public static func chunk(_ codec: Codec) -> String {
        switch codec {
        case .zstd: "application/vnd.catalyzer.chunk.v1+zstd"
        case .lz4: "application/vnd.catalyzer.chunk.v1+lz4"
        case .none: "application/vnd.catalyzer.chunk.v1"
        }
    }

    /// The working-set layer: the bytes of the pages the first invocation after a restore
    /// touched, in frames compressed with `codec` (`PageWorkingSet`).
    public static func pageWorkingSet(_ codec: Codec) -> String {
        switch codec {
        case .zstd: "application/vnd.catalyzer.working-set.v1+zstd"
        case .lz4: "application/vnd.catalyzer.working-set.v1+lz4"
        case .none: "application/vnd.catalyzer.working-set.v1"
        }
    }

    public static let pageWorkingSetTypes: Set<String> = Set(Codec.allCases.map(pageWorkingSet))

    /// OCI image layers (tar archives), as a rootfs travels with an image.
    public static let rootfsLayerZstd = "application/vnd.oci.image.layer.v1.tar+zstd"
    public static let rootfsLayerTar = "application/vnd.oci.image.layer.v1.tar"
    /// The layer types catalyzer unpacks into a rootfs.
    public static let rootfsLayers: Set<String> = [rootfsLayerZstd, rootfsLayerTar]
}
