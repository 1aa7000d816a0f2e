import CatalyzerImage
import Foundation
import Glibc

/// Where the managed mount of a store lives: `RUN/mounts/KEY` with its `KEY.lock` and
/// `KEY.log` beside it, where KEY is the first 16 hex digits of the sha256 of the store's
/// canonical path. Keyed by the store, so every invocation of one store shares one mount and two
/// stores never share a mountpoint.
struct ManagedMountLocation {
    /// `$CATALYZER_RUN_DIR`, else /run/catalyzer (a tmpfs: managed mounts do not outlive a boot).
    static var defaultRunDirectory: String {
        ProcessInfo.processInfo.environment["CATALYZER_RUN_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/run/catalyzer"
    }

    /// The store as the daemon is given it and mountinfo shows it: canonical.
    let storeRoot: String
    /// `RUN/mounts`, resolved (mountinfo shows resolved mountpoints) once it exists.
    let mountsDirectory: String
    let mountpoint: String
    let lockPath: String
    let logPath: String

    init(storeRoot: String, runDirectory: String) {
        self.storeRoot = storeRoot
        let key = Digest(of: Array(storeRoot.utf8)).hex.prefix(16)
        mountsDirectory = Self.resolved(Self.absolute(runDirectory)) + "/mounts"
        mountpoint = mountsDirectory + "/" + key
        lockPath = mountpoint + ".lock"
        logPath = mountpoint + ".log"
    }

    /// The canonical path of an existing `path`, else `path` itself.
    static func resolved(_ path: String) -> String {
        guard let canonical = realpath(path, nil) else { return path }
        defer { free(canonical) }
        return String(cString: canonical)
    }

    /// `path` made absolute against the working directory, without touching the filesystem.
    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    /// Creates the run directory, `RUN/mounts` and the mountpoint. Mode 0755 is enough: without
    /// allow_other, only the user who mounted catalyzerfs can enter the mount.
    func createDirectories() throws(MountError) {
        var path = ""
        for component in mountpoint.split(separator: "/") {
            path += "/" + component
            if mkdir(path, 0o755) != 0 && errno != EEXIST {
                throw .runDirectoryUnusable(operation: "create the directory", path: path, errno: errno)
            }
        }
    }
}
