import Glibc

/// A POSIX (pax) tar stream of a directory tree, as an OCI layer holds it.
///
/// Every entry carries a pax header with its path and its modification time to the nanosecond,
/// because restores compare the rootfs files a checkpoint used by type, permissions, size and
/// mtime (`RootfsFingerprint`): an extracted copy must match the original exactly. Entries come
/// in a fixed order (depth first, names sorted bytewise) with no per-run fields, so the same tree
/// always gives the same bytes, and so the same layer digest. Regular files, directories and
/// symbolic links are written; other kinds (devices, FIFOs, sockets) are skipped: a sandbox's
/// devices are the monitor's, never the rootfs's.
struct TarWriter {
    private let sink: (UnsafeRawBufferPointer) throws(ImageError) -> Void
    private(set) var entries = 0
    private(set) var bytes: Int64 = 0

    init(sink: @escaping (UnsafeRawBufferPointer) throws(ImageError) -> Void) {
        self.sink = sink
    }

    /// Writes the tree under `root` (the root itself as `./`), then the end-of-archive blocks.
    mutating func writeTree(_ root: String) throws(ImageError) {
        let fd = try FileIO.open(root, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .io(operation: "stat", path: root, errno: errno) }
        try writeEntry(name: "./", info: info, linkTarget: nil)
        try writeDirectory(fd, relative: "", hostPath: root)
        try emit([UInt8](repeating: 0, count: 1024))
    }

    private mutating func writeDirectory(_ directory: Int32, relative: String, hostPath: String) throws(ImageError) {
        for name in try Self.sortedNames(directory, path: hostPath) {
            let path = relative + name
            let host = hostPath + "/" + name
            var info = stat()
            guard fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
                throw .io(operation: "stat", path: host, errno: errno)
            }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                try writeEntry(name: path + "/", info: info, linkTarget: nil)
                let child = openat(directory, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard child >= 0 else { throw .io(operation: "open", path: host, errno: errno) }
                defer { close(child) }
                try writeDirectory(child, relative: path + "/", hostPath: host)
            case S_IFLNK:
                var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                let length = readlinkat(directory, name, &target, target.count - 1)
                guard length >= 0 else { throw .io(operation: "readlink", path: host, errno: errno) }
                try writeEntry(name: path, info: info, linkTarget: String(decoding: target[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self))
            case S_IFREG:
                let file = openat(directory, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
                guard file >= 0 else { throw .io(operation: "open", path: host, errno: errno) }
                defer { close(file) }
                try writeEntry(name: path, info: info, linkTarget: nil)
                try copyContent(file, size: Int64(info.st_size), path: host)
            default:
                continue
            }
        }
    }

    static func sortedNames(_ directory: Int32, path: String) throws(ImageError) -> [String] {
        let copy = dup(directory)
        guard copy >= 0, let stream = fdopendir(copy) else { throw .io(operation: "list", path: path, errno: errno) }
        defer { closedir(stream) }
        var names: [[UInt8]] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                Array(UnsafeRawBufferPointer(rebasing: raw[0..<strnlen(raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)]))
            }
            if name != [46] && name != [46, 46] { names.append(name) }
        }
        return names.sorted { $0.lexicographicallyPrecedes($1) }.map { String(decoding: $0, as: UTF8.self) }
    }

    private mutating func copyContent(_ fd: Int32, size: Int64, path: String) throws(ImageError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        var left = size
        while left > 0 {
            let want = Int(min(Int64(buffer.count), left))
            let count = try FileIO.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), path: path)
            guard count == want else {
                throw .invalidInput("\(path) changed size while it was packed into the rootfs layer; do not modify the rootfs during a checkpoint")
            }
            try emit(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            left -= Int64(count)
        }
        let padding = Int((512 - size % 512) % 512)
        if padding > 0 { try emit([UInt8](repeating: 0, count: padding)) }
    }

    private mutating func writeEntry(name: String, info: stat, linkTarget: String?) throws(ImageError) {
        let type: UInt8
        switch info.st_mode & S_IFMT {
        case S_IFDIR: type = UInt8(ascii: "5")
        case S_IFLNK: type = UInt8(ascii: "2")
        default: type = UInt8(ascii: "0")
        }
        let size = type == UInt8(ascii: "0") ? Int64(info.st_size) : 0
        var records: [(String, String)] = [
            ("mtime", "\(info.st_mtim.tv_sec).\(String(repeating: "0", count: 9 - String(info.st_mtim.tv_nsec).count))\(info.st_mtim.tv_nsec)"),
            ("path", name),
        ]
        if let linkTarget { records.append(("linkpath", linkTarget)) }
        var pax: [UInt8] = []
        for (key, value) in records { pax += Self.paxRecord(key, value) }
        try emit(Self.header(name: "PaxHeader", mode: 0o644, uid: 0, gid: 0,
                             size: Int64(pax.count), mtime: Int64(info.st_mtim.tv_sec), type: UInt8(ascii: "x"), link: ""))
        try emit(pax + [UInt8](repeating: 0, count: (512 - pax.count % 512) % 512))
        try emit(Self.header(name: name, mode: Int64(info.st_mode & 0o7777), uid: Int64(info.st_uid), gid: Int64(info.st_gid),
                             size: size, mtime: Int64(info.st_mtim.tv_sec), type: type, link: linkTarget ?? ""))
        entries += 1
    }

    /// One pax record, `"<length> <key>=<value>\n"`, where length counts itself.
    static func paxRecord(_ key: String, _ value: String) -> [UInt8] {
        let body = " \(key)=\(value)\n".utf8.count
        var digits = String(body).count
        while String(body + digits).count != digits { digits += 1 }
        return Array("\(body + digits) \(key)=\(value)\n".utf8)
    }

    /// A ustar header block. Names and link targets longer than the fields are cut (the pax
    /// header before it holds them whole).
    static func header(name: String, mode: Int64, uid: Int64, gid: Int64, size: Int64, mtime: Int64, type: UInt8, link: String) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: 512)
        func put(_ bytes: some Collection<UInt8>, at offset: Int, width: Int) {
            for (position, byte) in bytes.prefix(width).enumerated() { block[offset + position] = byte }
        }
        func octal(_ value: Int64, at offset: Int, width: Int) {
            let digits = Array(String(max(0, value), radix: 8).utf8)
            guard digits.count < width else { return }  // too large: the pax header has it
            put([UInt8](repeating: UInt8(ascii: "0"), count: width - 1 - digits.count) + digits, at: offset, width: width - 1)
        }
        put(name.utf8, at: 0, width: 100)
        octal(mode, at: 100, width: 8)
        octal(uid < 0o7777777 ? uid : 0, at: 108, width: 8)
        octal(gid < 0o7777777 ? gid : 0, at: 116, width: 8)
        octal(size, at: 124, width: 12)
        octal(mtime, at: 136, width: 12)
        block[156] = type
        put(link.utf8, at: 157, width: 100)
        put(Array("ustar\0".utf8), at: 257, width: 6)
        put(Array("00".utf8), at: 263, width: 2)
        put(Array("root".utf8), at: 265, width: 32)
        put(Array("root".utf8), at: 297, width: 32)
        for i in 148..<156 { block[i] = UInt8(ascii: " ") }
        let sum = block.reduce(0) { $0 + Int($1) }
        let text = String(sum, radix: 8)
        put(Array((String(repeating: "0", count: max(0, 6 - text.count)) + text).utf8) + [0, 32], at: 148, width: 8)
        return block
    }

    private mutating func emit(_ bytes: [UInt8]) throws(ImageError) {
        try bytes.withUnsafeBytes { raw in Result { () throws(ImageError) in try sink(raw) } }.get()
        self.bytes += Int64(bytes.count)
    }

    private mutating func emit(_ bytes: UnsafeRawBufferPointer) throws(ImageError) {
        try sink(bytes)
        self.bytes += Int64(bytes.count)
    }
}
