import Glibc

/// The rootfs a checkpoint ran against: its host path and the metadata of every rootfs file the
/// program opened, executed or looked at while it initialized (libraries, modules, configuration).
/// Their contents live on in the checkpoint's memory (mapped code, imported modules), so a restore
/// against a rootfs where any of them changed would mix old and new; it is refused instead.
///
/// Files are compared by type, permissions, size and modification time (as make and rsync do),
/// not by inode or change time, so an identical copy of the rootfs (`cp -a`, an unpacked layer)
/// on another node still matches. Only files the program touched count: checking every file of a
/// Python rootfs would cost milliseconds on each restore.
public struct RootfsFingerprint: Sendable, Equatable {
    public var path: String
    public var entries: [Entry]

    public struct Entry: Sendable, Equatable, Hashable {
        /// Normalized path inside the rootfs.
        public var path: String
        /// Whether the lookup did not follow a final symlink.
        public var noFollow: Bool
        public var mode: UInt32
        public var size: Int64
        public var modifiedSeconds: Int64
        public var modifiedNanoseconds: Int64

        init(path: String, noFollow: Bool, status: stat) {
            self.path = path
            self.noFollow = noFollow
            mode = status.st_mode
            size = Int64(status.st_size)
            modifiedSeconds = Int64(status.st_mtim.tv_sec)
            modifiedNanoseconds = Int64(status.st_mtim.tv_nsec)
        }

        init(path: String, noFollow: Bool, mode: UInt32, size: Int64, modifiedSeconds: Int64, modifiedNanoseconds: Int64) {
            self.path = path
            self.noFollow = noFollow
            self.mode = mode
            self.size = size
            self.modifiedSeconds = modifiedSeconds
            self.modifiedNanoseconds = modifiedNanoseconds
        }
    }

    public init(path: String, entries: [Entry]) {
        self.path = path
        self.entries = entries
    }

    /// A short hex digest of the entries (FNV-1a), for display.
    public var digest: String {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        func mix(_ bytes: some Sequence<UInt8>) { for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 } }
        for entry in entries {
            mix(entry.path.utf8)
            mix([entry.noFollow ? 1 : 0])
            withUnsafeBytes(of: (entry.mode, entry.size, entry.modifiedSeconds, entry.modifiedNanoseconds)) { mix($0) }
        }
        return String(hash, radix: 16)
    }

    /// The first difference between the recorded files and the rootfs now, described for a user;
    /// nil when everything matches.
    func firstChange(in filesystem: Filesystem) -> String? {
        for entry in entries {
            let now: stat
            do throws(Errno) {
                let fd = try filesystem.openHost(entry.path, flags: O_PATH | (entry.noFollow ? O_NOFOLLOW : 0))
                defer { close(fd) }
                var status = stat()
                guard fstat(fd, &status) == 0 else { throw Errno.lastHostError }
                now = status
            } catch {
                return "\(entry.path) is gone (\(error))"
            }
            let current = Entry(path: entry.path, noFollow: entry.noFollow, status: now)
            if current.mode != entry.mode { return "\(entry.path) changed type or permissions (mode \(String(entry.mode, radix: 8)) → \(String(current.mode, radix: 8)))" }
            if current.size != entry.size { return "\(entry.path) changed size (\(entry.size) → \(current.size) bytes)" }
            if current.modifiedSeconds != entry.modifiedSeconds || current.modifiedNanoseconds != entry.modifiedNanoseconds {
                return "\(entry.path) was modified (mtime \(entry.modifiedSeconds).\(entry.modifiedNanoseconds) → \(current.modifiedSeconds).\(current.modifiedNanoseconds))"
            }
        }
        return nil
    }

    func encode(into writer: inout SnapshotWriter) {
        writer.write(path)
        writer.write(entries) { w, entry in
            w.write(entry.path); w.write(entry.noFollow); w.write(entry.mode); w.write(entry.size)
            w.write(entry.modifiedSeconds); w.write(entry.modifiedNanoseconds)
        }
    }

    init(from reader: inout SnapshotReader) throws(SnapshotDecodingError) {
        path = try reader.readString("rootfs path")
        entries = try reader.readArray("rootfs files", minimumSize: 37) { (r) throws(SnapshotDecodingError) in
            Entry(path: try r.readString("rootfs file path"), noFollow: try r.readBool("rootfs file lookup"),
                  mode: try r.read(UInt32.self, "rootfs file mode"), size: try r.read(Int64.self, "rootfs file size"),
                  modifiedSeconds: try r.read(Int64.self, "rootfs file time"),
                  modifiedNanoseconds: try r.read(Int64.self, "rootfs file time"))
        }
    }
}

/// Collects `RootfsFingerprint` entries while a program initializes for a checkpoint.
final class RootfsDependencies {
    private var entries: [String: RootfsFingerprint.Entry] = [:]
    private var order: [String] = []

    /// Notes a successful host open of `path` (normalized, inside the rootfs) as `fd`.
    func record(path: String, flags: Int32, fd: Int32) {
        let noFollow = flags & O_NOFOLLOW != 0
        let key = (noFollow ? "n" : "f") + path
        guard entries[key] == nil else { return }
        var status = stat()
        guard fstat(fd, &status) == 0 else { return }
        entries[key] = RootfsFingerprint.Entry(path: path, noFollow: noFollow, status: status)
        order.append(key)
    }

    func fingerprint(rootDirectory: String) -> RootfsFingerprint {
        RootfsFingerprint(path: rootDirectory, entries: order.compactMap { entries[$0] })
    }
}
