import CatalyzerImage
import Glibc

/// The kernel readahead of a FUSE mount. FUSE's `max_readahead` only lowers the limit; the
/// bdi's `read_ahead_kb` (128 KiB by default) is the other cap, so both are set.
enum Readahead {
    /// Bounds of the readahead chosen to match chunk sizes: below 128 KiB a fault reads less
    /// than the kernel's own default; FUSE reads are at most 1 MiB by default.
    static let matchedRange: ClosedRange<Int64> = (128 << 10)...(1 << 20)

    /// The readahead matching the images in `store` now: their largest chunk size, so that one
    /// fault fetches whole chunks; the default chunk size when the store is empty. Images that
    /// do not open are skipped here (their lookup reports the problem).
    static func matchingChunkSize(of store: ImageStore) -> Int64 {
        let sizes = ((try? store.names()) ?? []).compactMap { try? store.open($0).config.chunkSize }
        let largest = Int64(sizes.max() ?? ChunkSize.default)
        return min(max(largest, matchedRange.lowerBound), matchedRange.upperBound)
    }

    /// Sets `read_ahead_kb` of the FUSE mount at `mountpoint`; returns a problem, or nil.
    static func apply(bytes: Int64, mountpoint: String) -> String? {
        guard let entry = MountTable.entries().last(where: { $0.mountpoint == mountpoint && $0.fsType.hasPrefix("fuse") }) else {
            return "cannot find the new mount at \(mountpoint) in /proc/self/mountinfo to set its readahead"
        }
        let path = "/sys/class/bdi/\(entry.device)/read_ahead_kb"
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return "cannot set readahead: open \(path): \(String(cString: strerror(errno)))" }
        defer { close(fd) }
        let text = "\(max(bytes / 1024, 4))\n"
        guard write(fd, text, text.utf8.count) == text.utf8.count else {
            return "cannot set readahead: write \(path): \(String(cString: strerror(errno)))"
        }
        return nil
    }
}
