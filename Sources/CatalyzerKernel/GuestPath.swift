/// Guest path arithmetic. Paths the guest passes are resolved against its cwd or a directory fd's
/// path and normalized lexically (`..` removes the previous component, as if no symlink preceded
/// it); that decides which filesystem serves the path, and the host resolves the rest (symlinks)
/// confined to the rootfs.
enum GuestPath {
    /// `path` made absolute against `base` (an absolute guest directory path).
    static func join(_ base: String, _ path: String) -> String {
        if path.hasPrefix("/") { return path }
        if path.isEmpty { return base }
        return base.hasSuffix("/") ? base + path : base + "/" + path
    }

    /// Absolute, with `.`, `..` and repeated slashes resolved lexically (`..` at `/` stays at `/`).
    static func normalize(_ path: String) -> String {
        "/" + components(path).joined(separator: "/")
    }

    static func components(_ path: String) -> [String] {
        var parts: [String] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            switch part {
            case ".": continue
            case "..": _ = parts.popLast()
            default: parts.append(String(part))
            }
        }
        return parts
    }
}
