import CatalyzerImage
import Foundation
import Glibc

/// The catalyzerfs mount that `catalyzer invoke` restores from: a sandbox maps
/// `MOUNT/NAME/memory` MAP_PRIVATE, so its pages come from the one page cache that catalyzerfs
/// fills on first touch, shared by every sandbox of the image.
///
/// Either the user's own mount (`--mount`, `$CATALYZER_MOUNT`), checked to be catalyzerfs
/// serving the same store, or the *managed* mount: catalyzerfs mounted by catalyzer itself on a
/// private mountpoint per store (see `ManagedMountLocation`) and left running, so that later
/// invocations, concurrent ones included, reuse it and its warm page cache.
public struct CatalyzerMount: Sendable {
    /// The resolved path the filesystem is mounted on.
    public let mountpoint: String
    /// The canonical path of the store it serves.
    public let storeRoot: String
    /// Whether catalyzer mounted it (under the run directory) rather than the user.
    public let isManaged: Bool

    /// The guest memory of image `image`, its full size.
    public func memoryPath(_ image: String) -> String { path(image, .memory) }
    /// The monitor's state blob of image `image`.
    public func statePath(_ image: String) -> String { path(image, .state) }
    /// The OCI manifest of image `image`, as stored.
    public func manifestPath(_ image: String) -> String { path(image, .manifest) }
    /// The page working-set blob of image `image` (empty when it has none).
    public func workingSetPath(_ image: String) -> String { path(image, .workingSet) }
    public func path(_ image: String, _ file: ImageMountFile) -> String { mountpoint + "/" + image + "/" + file.name }
    /// The filesystem's JSON counters per image.
    public var statsPath: String { mountpoint + "/.stats" }

    /// What mountinfo calls a catalyzerfs mount: FUSE with the subtype the daemon sets.
    static let fsType = "fuse.catalyzerfs"

    /// The mount to use: `mount` if given, else `$CATALYZER_MOUNT`, else the managed mount.
    public static func resolve(mount: String?, store: ImageStore) throws(MountError) -> CatalyzerMount {
        if let mount, !mount.isEmpty { return try existing(at: mount, store: store) }
        if let mount = ProcessInfo.processInfo.environment["CATALYZER_MOUNT"], !mount.isEmpty {
            return try existing(at: mount, store: store)
        }
        return try managed(store: store)
    }

    /// The user's mount at `path`, after checking that it is a catalyzerfs mount of `store` that
    /// answers: images read from another store, or a dead mount, would fail much later and less
    /// clearly.
    public static func existing(at path: String, store: ImageStore) throws(MountError) -> CatalyzerMount {
        let storeRoot = try canonicalRoot(of: store)
        guard let resolved = realpath(path, nil) else {
            let code = errno
            if code == ENOENT || code == ENOTDIR { throw .mountDirectoryMissing(path: path) }
            // A live FUSE mount that is not this user's: the kernel refuses its root to others.
            if MountError.isPermissionDenied(code) { throw .permissionDenied(path: path) }
            throw .notAnswering(path: path, errno: code)  // ENOTCONN, ECONNABORTED: a dead FUSE mount
        }
        let mountpoint = String(cString: resolved)
        free(resolved)
        guard let top = MountInfoTable.entries(at: mountpoint).last else {
            throw .notAMount(path: mountpoint, store: storeRoot)
        }
        guard top.fsType == fsType else { throw .notCatalyzerFS(path: mountpoint, fsType: top.fsType, store: storeRoot) }
        let served = ManagedMountLocation.resolved(top.source)
        guard served == storeRoot else { throw .servesOtherStore(path: mountpoint, served: served, expected: storeRoot) }
        if let code = failureToAnswer(mountpoint) {
            if MountError.isPermissionDenied(code) { throw .permissionDenied(path: mountpoint) }
            throw .notAnswering(path: mountpoint, errno: code)
        }
        return CatalyzerMount(mountpoint: mountpoint, storeRoot: storeRoot, isManaged: false)
    }

    /// The managed mount of `store`, mounted first if it is missing or its daemon is gone.
    public static func managed(store: ImageStore) throws(MountError) -> CatalyzerMount {
        try managed(store: store, runDirectory: ManagedMountLocation.defaultRunDirectory)
    }

    /// `managed(store:)` under an explicit run directory rather than $CATALYZER_RUN_DIR, so that
    /// tests can use their own without changing the process environment other tests read.
    static func managed(store: ImageStore, runDirectory: String) throws(MountError) -> CatalyzerMount {
        let storeRoot = try canonicalRoot(of: store)
        // Fast path, taken by nearly every invocation: no lock, one mountinfo read, one stat.
        let expected = ManagedMountLocation(storeRoot: storeRoot, runDirectory: runDirectory)
        switch state(of: expected) {
        case .healthy: return managedMount(expected)
        case .permissionDenied: throw .permissionDenied(path: expected.mountpoint)
        default: break
        }

        try expected.createDirectories()
        // Computed again now that the run directory exists and resolves as mountinfo shows it.
        let location = ManagedMountLocation(storeRoot: storeRoot, runDirectory: runDirectory)
        let lock = try ManagedMountLock(path: location.lockPath)
        defer { withExtendedLifetime(lock) {} }
        // Under the lock, the state is settled by whoever held it last. A killed daemon leaves
        // its mount behind, dead, possibly more than once if it happened repeatedly.
        var detached = 0
        while true {
            switch state(of: location) {
            case .healthy:
                return managedMount(location)
            case .absent:
                try CatalyzerFSLauncher.mount(location)
                guard case .healthy = state(of: location) else {
                    throw .daemonTimedOut(mountpoint: location.mountpoint, seconds: Int(CatalyzerFSLauncher.startTimeout), log: location.logPath)
                }
                return managedMount(location)
            case .permissionDenied:
                throw .permissionDenied(path: location.mountpoint)
            case let .notAnswering(code):
                guard detached < 8, umount2(location.mountpoint, Int32(MNT_DETACH)) == 0 else {
                    throw .notAnswering(path: location.mountpoint, errno: code)
                }
                detached += 1
            case let .occupied(entry):
                throw .managedMountpointOccupied(path: location.mountpoint, fsType: entry.fsType, source: entry.source)
            }
        }
    }

    /// Unmounts the managed mount of `store`; nothing to do if it is not mounted. Fails with
    /// EBUSY while sandboxes still map its files.
    public static func unmountManaged(store: ImageStore) throws(MountError) {
        let location = ManagedMountLocation(storeRoot: resolvedRoot(of: store), runDirectory: ManagedMountLocation.defaultRunDirectory)
        guard !MountInfoTable.entries(at: location.mountpoint).isEmpty else { return }
        let lock = try ManagedMountLock(path: location.lockPath)
        defer { withExtendedLifetime(lock) {} }
        while let top = MountInfoTable.entries(at: location.mountpoint).last {
            guard top.fsType == fsType else {
                throw .managedMountpointOccupied(path: location.mountpoint, fsType: top.fsType, source: top.source)
            }
            guard umount2(location.mountpoint, 0) == 0 else {
                if errno == EINVAL || errno == ENOENT { return }  // gone meanwhile
                throw .unmountFailed(path: location.mountpoint, errno: errno)
            }
        }
    }

    /// Where the managed mount of `store` is (or would be) mounted.
    public static func managedMountpoint(for store: ImageStore) -> String {
        ManagedMountLocation(storeRoot: resolvedRoot(of: store), runDirectory: ManagedMountLocation.defaultRunDirectory).mountpoint
    }

    // MARK: Checks

    private static func managedMount(_ location: ManagedMountLocation) -> CatalyzerMount {
        CatalyzerMount(mountpoint: location.mountpoint, storeRoot: location.storeRoot, isManaged: true)
    }

    private enum ManagedState {
        case absent
        case healthy
        /// A catalyzerfs mount of the store whose requests fail (ENOTCONN or ECONNABORTED once its
        /// daemon died).
        case notAnswering(errno: Int32)
        /// Something else mounted on the private mountpoint.
        case occupied(MountInfoTable.Entry)
        /// A catalyzerfs mount of the store that answers, but not to this user (EACCES).
        case permissionDenied
    }

    private static func state(of location: ManagedMountLocation) -> ManagedState {
        guard let top = MountInfoTable.entries(at: location.mountpoint).last else { return .absent }
        guard top.fsType == fsType, top.source == location.storeRoot else { return .occupied(top) }
        if let code = failureToAnswer(location.mountpoint) {
            return MountError.isPermissionDenied(code) ? .permissionDenied : .notAnswering(errno: code)
        }
        return .healthy
    }

    /// The errno of a stat of `/.stats` on the mount, or nil if it answers: a request that a
    /// live daemon serves from memory, without touching the store.
    static func failureToAnswer(_ mountpoint: String) -> Int32? {
        var info = stat()
        return stat(mountpoint + "/.stats", &info) == 0 ? nil : errno
    }

    /// The store's canonical path, as the managed mount's key and mountinfo source; the store
    /// must exist.
    private static func canonicalRoot(of store: ImageStore) throws(MountError) -> String {
        guard store.exists else {
            if store.isPrivateToAnotherUser { throw .storeNotReadable(store: ManagedMountLocation.absolute(store.root)) }
            throw .storeMissing(store: ManagedMountLocation.absolute(store.root))
        }
        return resolvedRoot(of: store)
    }

    /// The store's canonical path if it exists, else its absolute path.
    static func resolvedRoot(of store: ImageStore) -> String {
        ManagedMountLocation.resolved(ManagedMountLocation.absolute(store.root))
    }
}
