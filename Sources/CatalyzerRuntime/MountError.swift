import Glibc

/// Why a catalyzerfs mount for `catalyzer invoke` could not be used, made or removed. Every
/// message names the paths involved and says what to do about it.
public enum MountError: Error, CustomStringConvertible, Equatable {
    /// The store has no image layout, so there is nothing to serve.
    case storeMissing(store: String)
    /// The store exists but this user may not read it (it is private to its owner).
    case storeNotReadable(store: String)
    /// The directory given as the mount (--mount, $CATALYZER_MOUNT) does not exist.
    case mountDirectoryMissing(path: String)
    /// The directory given as the mount is a plain directory, not a mount point.
    case notAMount(path: String, store: String)
    /// Something other than catalyzerfs is mounted there.
    case notCatalyzerFS(path: String, fsType: String, store: String)
    /// A catalyzerfs mount of another store: the images would not be the ones named.
    case servesOtherStore(path: String, served: String, expected: String)
    /// A catalyzerfs mount whose daemon is gone (ENOTCONN, ECONNABORTED) or that fails requests.
    case notAnswering(path: String, errno: Int32)
    /// A healthy mount this user may not use: catalyzerfs serves only the user who mounted it
    /// (root) unless mounted with `allow_other`, and the kernel answers everyone else EACCES.
    case permissionDenied(path: String)
    /// The private mountpoint of the managed mount holds a mount catalyzer did not make.
    case managedMountpointOccupied(path: String, fsType: String, source: String)
    /// The run directory (or a file in it) cannot be created or opened.
    case runDirectoryUnusable(operation: String, path: String, errno: Int32)
    /// No executable catalyzerfs daemon in any of the places looked at.
    case daemonNotFound(searched: [String])
    /// $CATALYZERFS_BIN names something that is not an executable.
    case daemonNotExecutable(path: String)
    /// posix_spawn of the daemon failed.
    case daemonSpawnFailed(binary: String, errno: Int32)
    /// The daemon exited with an error instead of mounting; `detail` is its last log line.
    case daemonFailed(binary: String, status: String, detail: String, log: String)
    /// The daemon did not mount, or the mount did not answer, within the bounded wait.
    case daemonTimedOut(mountpoint: String, seconds: Int, log: String)
    /// umount of the managed mount failed; EBUSY means sandboxes still map its files.
    case unmountFailed(path: String, errno: Int32)

    public var description: String {
        switch self {
        case let .storeMissing(store):
            return "no image store at \(store) (it has no oci-layout file): create an image there with `catalyzer image create --store \(store)`, or name the store you use with --store or $CATALYZER_STORE"
        case let .storeNotReadable(store):
            return "permission denied on the image store at \(store): it is private to its owner, because images hold function memory (secrets included); run catalyzer as that user (e.g. with sudo)"
        case let .mountDirectoryMissing(path):
            return "the catalyzerfs mount \(path) does not exist: pass the directory where catalyzerfs is mounted (--mount or $CATALYZER_MOUNT), or set neither to let catalyzer mount the store itself"
        case let .notAMount(path, store):
            return "\(path) is not a mount point: mount the store there first (`mount -t catalyzerfs \(store) \(path)`), or set neither --mount nor $CATALYZER_MOUNT to let catalyzer mount the store itself"
        case let .notCatalyzerFS(path, fsType, store):
            return "\(path) is a \(fsType) mount, not catalyzerfs: pass the directory where `mount -t catalyzerfs \(store) DIR` mounted the store, or set neither --mount nor $CATALYZER_MOUNT to let catalyzer mount it itself"
        case let .servesOtherStore(path, served, expected):
            return "the catalyzerfs mount \(path) serves the store \(served), not \(expected): pass --store \(served) to use its images, or mount \(expected) (`mount -t catalyzerfs \(expected) DIR`) and pass that directory"
        case let .notAnswering(path, code):
            return "the catalyzerfs mount \(path) does not answer (\(Self.text(code))\(code == ENOTCONN || code == ECONNABORTED ? ": its daemon is gone" : "")): unmount it with `umount -l \(path)` and mount the store again"
        case let .permissionDenied(path):
            return "permission denied on the catalyzerfs mount \(path): the mount is healthy, but it serves only the user who mounted it (root, for the mounts catalyzer makes), because images hold function memory; run catalyzer as that user (e.g. with sudo)"
        case let .managedMountpointOccupied(path, fsType, source):
            return "the managed mountpoint \(path) already has a \(fsType) mount of \(source) that catalyzer did not make: unmount it (`umount \(path)`) and retry"
        case let .runDirectoryUnusable(operation, path, code):
            return "cannot \(operation) \(path): \(Self.text(code)) (the managed mount lives under $CATALYZER_RUN_DIR, default /run/catalyzer: run as root or set CATALYZER_RUN_DIR to a writable directory)"
        case let .daemonNotFound(searched):
            return "the catalyzerfs daemon is not installed: none of \(searched.joined(separator: ", ")) is executable (install it next to catalyzer or in /usr/local/bin, or set CATALYZERFS_BIN)"
        case let .daemonNotExecutable(path):
            return "CATALYZERFS_BIN is \(path), which is not an executable file: point it at the catalyzerfs binary, or unset it"
        case let .daemonSpawnFailed(binary, code):
            return "cannot start \(binary): \(Self.text(code))"
        case let .daemonFailed(binary, status, detail, log):
            let said = detail.isEmpty ? "" : ": \(detail)"
            return "\(binary) \(status) instead of mounting the store\(said) (its log: \(log))"
        case let .daemonTimedOut(mountpoint, seconds, log):
            return "catalyzerfs did not mount and answer at \(mountpoint) within \(seconds) s, so it was unmounted; see its log \(log)"
        case let .unmountFailed(path, code):
            if code == EBUSY {
                return "cannot unmount \(path): it is busy (running sandboxes still map images from it): stop them and retry, or detach it with `umount -l \(path)`"
            }
            return "cannot unmount \(path): \(Self.text(code))"
        }
    }

    static func text(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// Whether `code`, from stat or realpath on a mount, means this user lacks permission.
    static func isPermissionDenied(_ code: Int32) -> Bool { code == EACCES || code == EPERM }
}
