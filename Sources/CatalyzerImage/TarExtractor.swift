import Foundation
import Glibc

/// Unpacks a tar stream (pax, ustar or GNU long names) into a directory, as a layer's author
/// wrote it: type, permissions, owner and modification time (to the nanosecond, from pax
/// headers), so a rootfs unpacked on another node matches the checkpoint's fingerprint.
///
/// The stream is hostile input. Every path is resolved one component at a time from the target
/// directory with `O_NOFOLLOW`, so no entry (`../x`, `/etc/x`, or `link/x` after a symlink `link`
/// to anywhere) can create or change anything outside it. OCI whiteouts (`.wh.NAME`) remove what
/// an earlier layer put there. Devices, FIFOs and other kinds are skipped.
struct TarExtractor {
    private let root: Int32
    private let label: String
    private let source: (UnsafeMutableRawBufferPointer) throws(ImageError) -> Int
    private var pending: [UInt8] = []
    private var pendingStart = 0
    private var directories: [(components: [String], mode: mode_t, uid: uid_t, gid: gid_t, mtime: timespec)] = []
    private(set) var entries = 0

    init(root: Int32, label: String, source: @escaping (UnsafeMutableRawBufferPointer) throws(ImageError) -> Int) {
        self.root = root
        self.label = label
        self.source = source
    }

    mutating func extract() throws(ImageError) {
        var pax: [String: String] = [:]
        var longName: String?
        var longLink: String?
        while true {
            guard let header = try readBlock() else { break }
            if header.allSatisfy({ $0 == 0 }) { break }
            guard Self.checksumMatches(header) else { throw bad("a header block has a wrong checksum: this is not a tar layer, or it is damaged") }
            let size = try number(header, 124, 12)
            let type = header[156]
            switch type {
            case UInt8(ascii: "x"):
                for (key, value) in try Self.paxRecords(try readData(size)) { pax[key] = value }
                continue
            case UInt8(ascii: "g"):
                _ = try readData(size)
                continue
            case UInt8(ascii: "L"):
                longName = Self.string(try readData(size))
                continue
            case UInt8(ascii: "K"):
                longLink = Self.string(try readData(size))
                continue
            default:
                break
            }
            var name = pax["path"] ?? longName ?? Self.ustarName(header)
            let link = pax["linkpath"] ?? longLink ?? Self.string(Array(header[157..<257]))
            let headerMtime = try number(header, 136, 12)
            let mtime = Self.parseMtime(pax["mtime"]) ?? timespec(tv_sec: Int(headerMtime), tv_nsec: 0)
            let mode = mode_t(try number(header, 100, 8) & 0o7777)
            let headerUID = try number(header, 108, 8), headerGID = try number(header, 116, 8)
            let uid = uid_t(truncatingIfNeeded: Int(pax["uid"] ?? "") ?? Int(headerUID))
            let gid = gid_t(truncatingIfNeeded: Int(pax["gid"] ?? "") ?? Int(headerGID))
            let dataSize = pax["size"].flatMap { Int64($0) } ?? size
            pax = [:]
            longName = nil
            longLink = nil
            if type == UInt8(ascii: "5") && !name.hasSuffix("/") { name += "/" }
            let components = try sanitize(name)
            entries += 1

            if let last = components.last, last.hasPrefix(".wh.") {
                try skipData(dataSize)
                let parent = try openDirectory(Array(components.dropLast()), create: true)
                defer { close(parent) }
                if last == ".wh..wh..opq" {
                    for child in try TarWriter.sortedNames(parent, path: label) { try removeTree(parent, child) }
                } else {
                    try removeTree(parent, String(last.dropFirst(4)))
                }
                continue
            }
            switch type {
            case UInt8(ascii: "5"):
                try skipData(dataSize)
                if !components.isEmpty {
                    let parent = try openDirectory(Array(components.dropLast()), create: true)
                    defer { close(parent) }
                    let base = components.last!
                    var info = stat()
                    if fstatat(parent, base, &info, AT_SYMLINK_NOFOLLOW) == 0 && info.st_mode & S_IFMT != S_IFDIR {
                        try removeTree(parent, base)
                    }
                    if mkdirat(parent, base, 0o700) != 0 && errno != EEXIST { throw io("mkdir", components) }
                }
                directories.append((components, mode, uid, gid, mtime))
            case UInt8(ascii: "0"), 0, UInt8(ascii: "7"):
                let (parent, base) = try replaceable(components)
                defer { close(parent) }
                let fd = openat(parent, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw io("create", components) }
                defer { close(fd) }
                try copyData(dataSize, to: fd, components)
                if fchown(fd, uid, gid) != 0 || fchmod(fd, mode) != 0 { throw io("chown/chmod", components) }
                var times = [mtime, mtime]
                if futimens(fd, &times) != 0 { throw io("utimens", components) }
            case UInt8(ascii: "2"):
                try skipData(dataSize)
                let (parent, base) = try replaceable(components)
                defer { close(parent) }
                guard symlinkat(link, parent, base) == 0 else { throw io("symlink", components) }
                _ = fchownat(parent, base, uid, gid, AT_SYMLINK_NOFOLLOW)
                var times = [mtime, mtime]
                if utimensat(parent, base, &times, AT_SYMLINK_NOFOLLOW) != 0 { throw io("utimens", components) }
            case UInt8(ascii: "1"):
                try skipData(dataSize)
                let target = try sanitize(link)
                guard let targetBase = target.last else { throw bad("hard link \(name) points at the layer's root") }
                let targetParent = try openDirectory(Array(target.dropLast()), create: false)
                defer { close(targetParent) }
                let (parent, base) = try replaceable(components)
                defer { close(parent) }
                guard linkat(targetParent, targetBase, parent, base, 0) == 0 else { throw io("link", components) }
            default:
                try skipData(dataSize)
            }
        }
        // Directory metadata last, deepest first: creating entries inside a directory changes
        // its mtime, and a read-only mode would stop them being created.
        for directory in directories.reversed() {
            let fd = try openDirectory(directory.components, create: false)
            defer { close(fd) }
            var times = [directory.mtime, directory.mtime]
            if fchown(fd, directory.uid, directory.gid) != 0 || fchmod(fd, directory.mode) != 0 || futimens(fd, &times) != 0 {
                throw io("set metadata of", directory.components)
            }
        }
    }

    // MARK: Paths

    /// The entry's path as components under the root; `..` anywhere is refused.
    private func sanitize(_ name: String) throws(ImageError) -> [String] {
        var components: [String] = []
        for part in name.split(separator: "/", omittingEmptySubsequences: true) where part != "." {
            guard part != ".." else { throw bad("entry '\(name)' climbs out of the layer with '..'") }
            components.append(String(part))
        }
        return components
    }

    /// Opens the directory at `components` under the root without following any symbolic link,
    /// creating missing ones when `create`.
    private func openDirectory(_ components: [String], create: Bool) throws(ImageError) -> Int32 {
        var fd = dup(root)
        guard fd >= 0 else { throw ImageError.io(operation: "dup", path: label, errno: errno) }
        for (position, component) in components.enumerated() {
            var next = openat(fd, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if next < 0 && errno == ENOENT && create {
                if mkdirat(fd, component, 0o755) != 0 && errno != EEXIST {
                    close(fd)
                    throw io("mkdir", Array(components[...position]))
                }
                next = openat(fd, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            let code = errno
            close(fd)
            guard next >= 0 else {
                if code == ELOOP || code == ENOTDIR {
                    throw bad("entry path \(components.joined(separator: "/")) goes through \(components[...position].joined(separator: "/")), which is not a directory (a symbolic link or a file)")
                }
                throw ImageError.io(operation: "open", path: label + ":" + components[...position].joined(separator: "/"), errno: code)
            }
            fd = next
        }
        return fd
    }

    /// The parent directory and base name for a new non-directory entry, with whatever an earlier
    /// entry or layer put at that name removed.
    private func replaceable(_ components: [String]) throws(ImageError) -> (Int32, String) {
        guard let base = components.last else { throw bad("a file entry names the layer's root") }
        let parent = try openDirectory(Array(components.dropLast()), create: true)
        var info = stat()
        if fstatat(parent, base, &info, AT_SYMLINK_NOFOLLOW) == 0 {
            do { try removeTree(parent, base) } catch { close(parent); throw error }
        }
        return (parent, base)
    }

    /// Removes `name` in `directory` (recursively for a directory; never following links).
    private func removeTree(_ directory: Int32, _ name: String) throws(ImageError) {
        var info = stat()
        guard fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { return }
        if info.st_mode & S_IFMT == S_IFDIR {
            let child = openat(directory, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard child >= 0 else { throw ImageError.io(operation: "open", path: label + ":" + name, errno: errno) }
            defer { close(child) }
            for entry in try TarWriter.sortedNames(child, path: label) { try removeTree(child, entry) }
            guard unlinkat(directory, name, AT_REMOVEDIR) == 0 else { throw ImageError.io(operation: "rmdir", path: label + ":" + name, errno: errno) }
        } else if unlinkat(directory, name, 0) != 0 {
            throw ImageError.io(operation: "unlink", path: label + ":" + name, errno: errno)
        }
    }

    // MARK: Stream

    private mutating func fill(_ count: Int) throws(ImageError) -> Bool {
        if pendingStart > 0 && pendingStart == pending.count {
            pending.removeAll(keepingCapacity: true)
            pendingStart = 0
        }
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while pending.count - pendingStart < count {
            let read = try chunk.withUnsafeMutableBytes { raw in Result { () throws(ImageError) in try source(raw) } }.get()
            if read == 0 { return false }
            if pendingStart > 0 {
                pending.removeSubrange(0..<pendingStart)
                pendingStart = 0
            }
            pending.append(contentsOf: chunk[0..<read])
        }
        return true
    }

    private mutating func take(_ count: Int) throws(ImageError) -> ArraySlice<UInt8> {
        guard try fill(count) else { throw bad("the archive ends in the middle of an entry (truncated)") }
        defer { pendingStart += count }
        return pending[pendingStart..<pendingStart + count]
    }

    private mutating func readBlock() throws(ImageError) -> [UInt8]? {
        guard try fill(512) else {
            if pending.count - pendingStart == 0 { return nil }
            throw bad("the archive ends in the middle of a header (truncated)")
        }
        return Array(try take(512))
    }

    /// Reads a (small) entry body; pax and GNU records are metadata, bounded at 1 MiB.
    private mutating func readData(_ size: Int64) throws(ImageError) -> [UInt8] {
        guard size >= 0, size <= 1 << 20 else { throw bad("a metadata record of \(size) bytes is implausible") }
        let padded = Int((size + 511) / 512 * 512)
        return Array(try take(padded).prefix(Int(size)))
    }

    private mutating func skipData(_ size: Int64) throws(ImageError) {
        var left = (size + 511) / 512 * 512
        while left > 0 {
            let step = Int(min(left, 1 << 20))
            _ = try take(step)
            left -= Int64(step)
        }
    }

    private mutating func copyData(_ size: Int64, to fd: Int32, _ components: [String]) throws(ImageError) {
        var left = size
        while left > 0 {
            let step = Int(min(left, 1 << 20))
            let bytes = try take(step)
            do {
                try bytes.withUnsafeBytes { raw in Result { () throws(ImageError) in try FileIO.write(fd, raw, path: label) } }.get()
            } catch {
                throw io("write", components)
            }
            left -= Int64(step)
        }
        let padding = (512 - size % 512) % 512
        if padding > 0 { _ = try take(Int(padding)) }
    }

    // MARK: Fields

    private func number(_ header: [UInt8], _ offset: Int, _ width: Int) throws(ImageError) -> Int64 {
        let field = header[offset..<offset + width]
        if let first = field.first, first & 0x80 != 0 {  // GNU base-256
            var value: Int64 = Int64(first & 0x7F)
            for byte in field.dropFirst() {
                guard value < Int64.max >> 8 else { throw bad("a header number overflows") }
                value = value << 8 | Int64(byte)
            }
            return value
        }
        let text = String(decoding: field.prefix { $0 != 0 && $0 != 32 }.drop { $0 == 32 }, as: UTF8.self)
        if text.isEmpty { return 0 }
        guard let value = Int64(text, radix: 8), value >= 0 else { throw bad("header field '\(text)' is not an octal number") }
        return value
    }

    static func checksumMatches(_ header: [UInt8]) -> Bool {
        var sum = 0
        for (index, byte) in header.enumerated() { sum += (148..<156).contains(index) ? 32 : Int(byte) }
        let text = String(decoding: header[148..<156].prefix { $0 != 0 && $0 != 32 }.drop { $0 == 32 }, as: UTF8.self)
        return Int(text, radix: 8) == sum
    }

    static func ustarName(_ header: [UInt8]) -> String {
        let name = string(Array(header[0..<100]))
        let isUstar = header[257..<262].elementsEqual("ustar".utf8)
        let prefix = isUstar ? string(Array(header[345..<500])) : ""
        return prefix.isEmpty ? name : prefix + "/" + name
    }

    static func string(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }

    static func paxRecords(_ bytes: [UInt8]) throws(ImageError) -> [(String, String)] {
        var records: [(String, String)] = []
        var rest = bytes[...]
        while !rest.isEmpty {
            guard let space = rest.firstIndex(of: 32), let length = Int(String(decoding: rest[rest.startIndex..<space], as: UTF8.self)),
                  length > space - rest.startIndex + 1, length <= rest.count, rest[rest.startIndex + length - 1] == 10 else {
                throw .invalidInput("a pax header record is malformed")
            }
            let record = rest[rest.index(after: space)..<rest.startIndex + length - 1]
            if let equals = record.firstIndex(of: UInt8(ascii: "=")) {
                records.append((String(decoding: record[record.startIndex..<equals], as: UTF8.self),
                                String(decoding: record[record.index(after: equals)...], as: UTF8.self)))
            }
            rest = rest[(rest.startIndex + length)...]
        }
        return records
    }

    static func parseMtime(_ text: String?) -> timespec? {
        guard let text else { return nil }
        let parts = text.split(separator: ".", maxSplits: 1)
        guard let seconds = Int(parts[0]) else { return nil }
        var nanoseconds = 0
        if parts.count == 2 {
            let digits = String(parts[1].prefix(9))
            nanoseconds = (Int(digits) ?? 0) * Int(pow(10.0, Double(9 - digits.count)))
        }
        return timespec(tv_sec: seconds, tv_nsec: nanoseconds)
    }

    private func bad(_ detail: String) -> ImageError {
        .invalidInput("rootfs layer \(label): \(detail)")
    }

    private func io(_ operation: String, _ components: [String]) -> ImageError {
        .io(operation: operation, path: label + ":/" + components.joined(separator: "/"), errno: errno)
    }
}
