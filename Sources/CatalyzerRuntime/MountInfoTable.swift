import Glibc

/// The mounts of this process's mount namespace, from /proc/self/mountinfo: the kernel's own
/// record, so a mount is recognised by what it is (fstype, source) rather than by what a
/// directory happens to contain.
enum MountInfoTable {
    struct Entry: Equatable {
        /// Unique among the mounts that exist (the kernel reuses the numbers of unmounted ones).
        var mountID: Int
        var mountpoint: String
        /// `fuse.catalyzerfs` for catalyzerfs (FUSE type plus the subtype it sets).
        var fsType: String
        /// The mount source: for catalyzerfs the store path it was started with (`fsname=`).
        var source: String
    }

    /// The mounts stacked on `mountpoint` (an absolute, resolved path), bottom first; the last
    /// one is what a path lookup sees. This runs on every invocation, so each line's mountpoint
    /// field is located with memchr and compared with memcmp, and only matching lines are parsed.
    static func entries(at mountpoint: String) -> [Entry] {
        let wanted = escape(mountpoint)
        let table = readMountInfo()
        var result: [Entry] = []
        table.withUnsafeBytes { table in
            wanted.withUnsafeBytes { wanted in
                guard let base = table.baseAddress, let target = wanted.baseAddress else { return }
                var lineStart = 0
                while lineStart < table.count {
                    let line = base + lineStart
                    let length = memchr(line, 0x0a, table.count - lineStart).map { line.distance(to: UnsafeRawPointer($0)) }
                        ?? table.count - lineStart
                    if let field = field(4, of: UnsafeRawBufferPointer(start: line, count: length)),
                       field.count == wanted.count, memcmp(field.baseAddress!, target, wanted.count) == 0,
                       let entry = parse(Array(UnsafeRawBufferPointer(start: line, count: length))) {
                        result.append(entry)
                    }
                    lineStart += length + 1
                }
            }
        }
        return result
    }

    /// Every mount of filesystem type `fsType` (e.g. `fuse.catalyzerfs`).
    static func entries(ofType fsType: String) -> [Entry] {
        let table = readMountInfo()
        return table.split(separator: 0x0a).compactMap { line in
            parse(Array(line)).flatMap { $0.fsType == fsType ? $0 : nil }
        }
    }

    /// Field `index` (from 0) of a space-separated line, nil if the line is shorter.
    private static func field(_ index: Int, of line: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        guard let base = line.baseAddress else { return nil }
        var start = 0
        for _ in 0..<index {
            guard let space = memchr(base + start, 0x20, line.count - start) else { return nil }
            start = base.distance(to: UnsafeRawPointer(space)) + 1
        }
        let end = memchr(base + start, 0x20, line.count - start).map { base.distance(to: UnsafeRawPointer($0)) } ?? line.count
        return UnsafeRawBufferPointer(rebasing: line[start..<end])
    }

    /// One line: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`.
    private static func parse(_ line: [UInt8]) -> Entry? {
        let fields = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard fields.count >= 10,
              let separator = fields.dropFirst(6).firstIndex(where: { $0.elementsEqual("-".utf8) }),
              separator + 2 < fields.count,
              let mountID = Int(String(decoding: fields[0], as: UTF8.self))
        else { return nil }
        return Entry(mountID: mountID, mountpoint: unescape(fields[4]),
                     fsType: unescape(fields[separator + 1]), source: unescape(fields[separator + 2]))
    }

    /// The whole file, read with plain syscalls into one growing buffer: it is generated on
    /// each read, so it is read to its end in one pass.
    private static func readMountInfo() -> [UInt8] {
        let fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 16 * 1024)
        var used = 0
        while true {
            if used == bytes.count { bytes += [UInt8](repeating: 0, count: bytes.count) }
            let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + used, $0.count - used) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            used += count
        }
        bytes.removeSubrange(used...)
        return bytes
    }

    /// The kernel's escaping of a path in mountinfo: space, tab, newline and backslash as a
    /// backslash and three octal digits (`\040`, ...).
    static func escape(_ path: String) -> [UInt8] {
        var escaped: [UInt8] = []
        for byte in path.utf8 {
            switch byte {
            case 0x20, 0x09, 0x0a, 0x5c:
                escaped += [UInt8(ascii: "\\"), 0x30 + (byte >> 6), 0x30 + ((byte >> 3) & 7), 0x30 + (byte & 7)]
            default:
                escaped.append(byte)
            }
        }
        return escaped
    }

    /// Undoes the kernel's octal escapes.
    static func unescape(_ field: ArraySlice<UInt8>) -> String {
        guard field.contains(UInt8(ascii: "\\")) else { return String(decoding: field, as: UTF8.self) }
        var bytes: [UInt8] = []
        var rest = field
        while let byte = rest.popFirst() {
            if byte == UInt8(ascii: "\\"), rest.count >= 3,
               let value = UInt8(String(decoding: rest.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                rest = rest.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
