import CatalyzerImage

/// The image versions sandboxes on this host are running from, as the catalyzerfs mounts of a
/// store report them (`inUse` in `/.stats`: versions with open memory files). `image gc` keeps
/// their blobs even when no name refers to them any more, since a running sandbox still fetches
/// its pages from them on first touch.
public enum ImagesInUse {
    /// Manifest digests in use across every catalyzerfs mount of `store` in this mount namespace.
    /// A mount whose daemon is gone serves no sandbox and is skipped.
    public static func manifests(of store: ImageStore) -> [Digest] {
        let root = CatalyzerMount.resolvedRoot(of: store)
        var digests: Set<Digest> = []
        for mount in MountInfoTable.entries(ofType: CatalyzerMount.fsType)
        where ManagedMountLocation.resolved(mount.source) == root {
            digests.formUnion(MountStatistics.read(mountpoint: mount.mountpoint)?.inUse ?? [])
        }
        return digests.sorted()
    }
}
