import CatalyzerImage
import Foundation
import Glibc

/// The checks made before mounting, so that a bad store or mountpoint fails the mount with a
/// clear message instead of a filesystem that answers EIO.
enum MountChecks {
    /// The absolute, resolved mountpoint; it must be a directory nothing is mounted on.
    static func mountpoint(_ path: String) throws(FilesystemError) -> String {
        guard let resolved = realpath(path, nil) else {
            if errno == ENOENT || errno == ENOTDIR { throw .mountpointMissing(path: path) }
            throw .mountpointBusy(path: path)  // ENOTCONN: a dead catalyzerfs is still mounted here
        }
        defer { free(resolved) }
        let absolute = String(cString: resolved)
        var info = stat()
        guard stat(absolute, &info) == 0 else { throw .mountpointBusy(path: absolute) }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw .mountpointNotDirectory(path: absolute) }
        if MountTable.entries().contains(where: { $0.mountpoint == absolute }) {
            throw .mountpointBusy(path: absolute)
        }
        return absolute
    }

    /// The store, checked: a readable directory that is an image layout (or still empty).
    static func store(_ path: String) throws(FilesystemError) -> ImageStore {
        var info = stat()
        guard stat(path, &info) == 0 else {
            if errno == ENOENT { throw .storeMissing(path: path) }
            throw .storeUnreadable(path: path, errno: errno)
        }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw .storeInvalid(path: path, detail: "it is not a directory") }
        guard access(path, R_OK | X_OK) == 0 else { throw .storeUnreadable(path: path, errno: errno) }
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        let store = ImageStore(root: absolute)
        if !store.exists {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            guard entries.isEmpty else {
                throw .storeInvalid(path: path, detail: "it has no oci-layout file, so it is not an image store; name the directory that `catalyzer image` uses (--store)")
            }
            return store
        }
        do { _ = try store.names() } catch {
            throw .storeInvalid(path: path, detail: error.description)
        }
        return store
    }
}

/// /proc/self/mountinfo, read to find mounts by mountpoint.
enum MountTable {
    struct Entry {
        /// `major:minor` of the mounted filesystem; also its bdi's name in /sys/class/bdi.
        var device: String
        var mountpoint: String
        var fsType: String
    }

    static func entries() -> [Entry] {
        guard let text = FileIO.readToEnd("/proc/self/mountinfo") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count >= 7, let separator = fields.firstIndex(of: "-"), separator + 1 < fields.count else { return nil }
            return Entry(device: String(fields[2]), mountpoint: unescape(String(fields[4])),
                         fsType: String(fields[separator + 1]))
        }
    }

    /// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
    private static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var bytes: [UInt8] = []
        var utf8 = Array(field.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "\\"), utf8.count >= 3, let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
