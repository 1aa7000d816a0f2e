import Foundation
import CatalyzerImage

/// The `-o` options of catalyzerfs, as mount(8) and fstab pass them.
public struct MountOptions: Sendable, Equatable {
    /// Bytes of decompressed chunks kept in memory (0 disables the cache).
    public var cacheSize: Int64 = 256 << 20
    /// Kernel readahead for the mount: FUSE's max_readahead and the bdi's read_ahead_kb. nil:
    /// match the chunk size of the store's images (see `Readahead.matchingChunkSize`).
    public var readahead: Int64?
    /// Push an image's working set into the page cache after its memory file is opened.
    public var prefetch = true
    /// Let users other than the mounting one use the mount (permissions still apply).
    public var allowOther = false
    /// Print every FUSE request (implies foreground).
    public var debug = false
    /// Stay attached to the terminal instead of detaching.
    public var foreground = false
    /// Log file; without it the daemon logs to standard error in the foreground, else to syslog.
    public var logFile: String?
    /// Generic mount flags handed to the kernel unchanged (nodev, nosuid, noatime, ...).
    public var kernelFlags: [String] = []
    /// The node-wide cache of blobs fetched from registries for lazily pulled images (default:
    /// `STORE/remote-cache`), and the bytes it may hold before the least recently used go.
    public var cacheDirectory: String?
    public var cacheLimit: Int64 = 1 << 30

    public init() {}

    /// Kernel mount flags that libfuse applies to the mount as mount(8) would.
    static let kernelFlagNames: Set<String> = [
        "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime",
        "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime",
        "lazytime", "nolazytime", "sync", "async", "dirsync",
    ]

    /// Options that mean something to mount(8) or fstab only and are accepted and ignored.
    static let mountOnlyNames: Set<String> = [
        "defaults", "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users", "owner", "group",
        "ro", "rw", "silent", "loud",
    ]

    /// Applies a comma-separated list such as `ro,cache_size=256M,prefetch=off`.
    public mutating func apply(_ list: String) throws(FilesystemError) {
        for option in list.split(separator: ",", omittingEmptySubsequences: true).map(String.init) {
            try apply(option: option)
        }
    }

    private mutating func apply(option: String) throws(FilesystemError) {
        let parts = option.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let key = parts[0]
        let value = parts.count == 2 ? parts[1] : nil
        func size(_ minimum: Int64) throws(FilesystemError) -> Int64 {
            guard let value, let bytes = ByteCount.parse(value), bytes >= minimum else {
                throw .invalidOption("option \(key) needs a size of at least \(ByteCount.format(minimum)) such as \(key)=256M, got '\(option)'")
            }
            return bytes
        }
        switch key {
        case "cache_size":
            cacheSize = try size(0)
        case "cache_dir":
            guard let value, value.hasPrefix("/") else { throw .invalidOption("option cache_dir needs an absolute directory, got '\(option)'") }
            cacheDirectory = value
        case "cache_limit":
            cacheLimit = try size(1 << 20)
        case "readahead":
            let bytes = try size(4096)
            guard bytes <= 64 << 20 else { throw .invalidOption("readahead=\(value!) is more than 64M") }
            readahead = bytes
        case "prefetch":
            switch value {
            case "on", "yes", "1": prefetch = true
            case "off", "no", "0": prefetch = false
            default: throw .invalidOption("prefetch must be on or off, got '\(option)'")
            }
        case "allow_other":
            allowOther = true
        case "debug":
            debug = true
            foreground = true
        case "foreground":
            foreground = true
        case "log":
            guard let value, value.hasPrefix("/") else { throw .invalidOption("log needs an absolute path, got '\(option)'") }
            logFile = value
        default:
            if value == nil && Self.kernelFlagNames.contains(key) {
                kernelFlags.append(key)
            } else if (value == nil && Self.mountOnlyNames.contains(key)) || key.hasPrefix("x-") || key == "comment" {
                // For mount(8) and fstab: not the filesystem's business.
            } else {
                throw .invalidOption("unknown option '\(option)'")
            }
        }
    }

    /// The argument vector for `fuse_session_new`: a read-only mount named after the store.
    func fuseArguments(store: String) -> [String] {
        // libfuse's option parser treats ',' as a separator and '\' as an escape.
        let escapedStore = store.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: ",", with: "\\,")
        var mount = ["ro", "default_permissions", "subtype=catalyzerfs", "fsname=\(escapedStore)"] + kernelFlags
        if allowOther { mount.append("allow_other") }
        var arguments = ["catalyzerfs", "-o", mount.joined(separator: ",")]
        if debug { arguments.append("-d") }
        return arguments
    }

    /// `--help` text for the options, one per line.
    public static let help = """
        OPTIONS (-o, comma-separated; as given to mount(8) or in /etc/fstab):
            ro                  mount read-only (always the case: images are immutable; rw is ignored)
            cache_size=SIZE     decompressed chunks kept in memory, e.g. 256M (default 256M; 0 disables)
            cache_dir=DIR       node-wide cache of blobs fetched from registries for images pulled with
                                --lazy (default STORE/remote-cache), shared by every image
            cache_limit=SIZE    bytes that cache may hold; least recently used blobs go first (default 1G)
            readahead=SIZE      kernel readahead per fault: FUSE max_readahead and the bdi's read_ahead_kb
                                (default: the largest chunk size of the store's images at mount time,
                                within 128K-1M; 256K, the default chunk size, for an empty store)
            prefetch=on|off     push each image's recorded chunk working set into the page cache in
                                the background once its memory file is opened (default on; images
                                with a page working set install that instead)
            allow_other         let other users use the mount (file permissions still apply)
            log=PATH            append log lines (corrupt chunks, errors) to PATH; default: standard
                                error in the foreground, syslog once detached
            foreground          do not detach (same as -f)
            debug               print every FUSE request; implies foreground (same as -d)
            nodev, nosuid, noexec, noatime, ...   generic mount flags, passed to the kernel
            defaults, auto, noauto, nofail, _netdev, user, users, x-*, comment=...   fstab-only, ignored
        """
}
