/// The files catalyzerfs serves in each image's directory (`MOUNT/NAME/FILE`): the contract
/// between the filesystem that serves them and the monitor that restores from them.
public enum ImageMountFile: String, CaseIterable, Sendable {
    /// The guest memory, its full size; mapped privately by a restore.
    case memory
    /// The monitor's state blob.
    case state
    /// The OCI manifest, as stored.
    case manifest = "manifest.json"
    /// The page working-set blob as stored (compressed frames; `PageWorkingSet`); empty for an
    /// image without one.
    case workingSet = "working-set"

    public var name: String { rawValue }

    public init?(name: String) { self.init(rawValue: name) }
}
