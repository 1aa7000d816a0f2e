import CatalyzerTestSupport
import Foundation
import Glibc
import Testing
@testable import CatalyzerImage

/// The rootfs as an OCI layer: packed deterministically, unpacked exactly (type, mode, owner,
/// size, mtime to the nanosecond, link targets, contents), and never outside its directory.
@Suite struct RootfsLayerTests {
    /// A tree with what a rootfs has: nested directories, an executable, an empty file, a
    /// read-only directory, symlinks (relative, absolute, dangling), names longer than ustar's
    /// 100 bytes, non-ASCII names, files of every size class the writer streams differently, and
    /// nanosecond mtimes everywhere.
    static func makeTree(_ root: String) throws {
        let long = String(repeating: "long-directory-name-", count: 6)
        for directory in ["usr/bin", "usr/lib/python3", "etc", "empty", "\(long)/\(long)", "readonly", "unicodé"] {
            try FileManager.default.createDirectory(atPath: root + "/" + directory, withIntermediateDirectories: true)
        }
        try Data(MemoryFixtures.random(300_001)).write(to: URL(fileURLWithPath: root + "/usr/bin/python3.11"))
        // Between half a MiB and a MiB: written in one piece right after its staged header (the
        // writer once let such a piece overtake the header, as Pillow's bundled libraries showed).
        try Data(MemoryFixtures.random(700_001)).write(to: URL(fileURLWithPath: root + "/usr/lib/libmiddle.so.1"))
        chmod(root + "/usr/bin/python3.11", 0o755)
        try Data("import os\n".utf8).write(to: URL(fileURLWithPath: root + "/usr/lib/python3/os.py"))
        try Data().write(to: URL(fileURLWithPath: root + "/etc/empty.conf"))
        try Data("x".utf8).write(to: URL(fileURLWithPath: root + "/\(long)/\(long)/\(long).txt"))
        try Data("é".utf8).write(to: URL(fileURLWithPath: root + "/unicodé/fïle"))
        try Data("secret".utf8).write(to: URL(fileURLWithPath: root + "/readonly/file"))
        chmod(root + "/etc/empty.conf", 0o600)
        symlink("python3.11", root + "/usr/bin/python3")
        symlink("/usr/lib/python3", root + "/usr/python-lib")
        symlink("does/not/exist", root + "/dangling")
        var times = [timespec(tv_sec: 1_700_000_000, tv_nsec: 123_456_789), timespec(tv_sec: 1_700_000_001, tv_nsec: 987_654_321)]
        for path in try FileManager.default.subpathsOfDirectory(atPath: root).sorted(by: >) {
            utimensat(AT_FDCWD, root + "/" + path, &times, AT_SYMLINK_NOFOLLOW)
            times[1].tv_nsec = (times[1].tv_nsec + 7_777) % 1_000_000_000
        }
        chmod(root + "/readonly", 0o555)
        utimensat(AT_FDCWD, root + "/readonly", &times, 0)
        utimensat(AT_FDCWD, root, &times, 0)
    }

    /// Every entry: path, type and permissions, owner, size, mtime, link target or content digest.
    static func listing(_ root: String) throws -> [String] {
        var lines: [String] = []
        for path in ([""] + (try FileManager.default.subpathsOfDirectory(atPath: root))).sorted() {
            let full = root + (path.isEmpty ? "" : "/" + path)
            var info = stat()
            guard lstat(full, &info) == 0 else { throw CocoaError(.fileReadUnknown) }
            var line = "\(path) \(String(info.st_mode, radix: 8)) \(info.st_uid):\(info.st_gid) \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"
            switch info.st_mode & S_IFMT {
            case S_IFLNK: line += " -> " + (try FileManager.default.destinationOfSymbolicLink(atPath: full))
            case S_IFREG: line += " \(info.st_size) \(Digest(of: Array(try Data(contentsOf: URL(fileURLWithPath: full)))))"
            default: break
            }
            lines.append(line)
        }
        return lines
    }

    @Test func packsDeterministicallyAndUnpacksExactly() throws {
        let dir = try TemporaryDirectory("rootfs-layer")
        defer { dir.remove() }
        let tree = dir.file("tree")
        try Self.makeTree(tree)
        let store = ImageStore(root: dir.file("store"))
        let packed = try store.storeRootfsLayer(from: tree)
        #expect(!packed.reused && packed.descriptor.mediaType == MediaType.rootfsLayerZstd)
        #expect(try store.storeRootfsLayer(from: tree).reused, "an unchanged tree is not packed again")
        // Another store packs the same bytes: images of one rootfs share the layer by digest.
        let other = try ImageStore(root: dir.file("other")).storeRootfsLayer(from: tree)
        #expect(other.descriptor == packed.descriptor && !other.reused)

        let unpacked = try store.materializeRootfs([packed.descriptor], image: "fn")
        #expect(unpacked.unpacked && unpacked.path == store.rootfsPath(for: [packed.descriptor]))
        #expect(try Self.listing(unpacked.path) == Self.listing(tree))
        let again = try store.materializeRootfs([packed.descriptor], image: "fn")
        #expect(!again.unpacked && again.path == unpacked.path, "unpacked once per layer digest")
        // GNU tar reads it too (a standard layer), long names and nanosecond mtimes included.
        let listed = try Command.bounded(30, "tar", ["--zstd", "--full-time", "-tvf", store.blobPath(packed.descriptor.digest)])
        #expect(listed.status == 0 && listed.stdout.contains("usr/bin/python3.11"), "\(listed)")

        // No image refers to the layer: gc removes the blob and the unpacked tree.
        #expect(try store.gc().rootfsDirectoriesRemoved == 1)
        #expect(!FileManager.default.fileExists(atPath: unpacked.path))

    }

    @Test func anImageCarriesItsRootfsLayer() throws {
        let dir = try TemporaryDirectory("rootfs-image")
        defer { dir.remove() }
        try Self.makeTree(dir.file("tree"))
        try Data(try MemoryFixtures.zeroHeavy(1 << 20)).write(to: URL(fileURLWithPath: dir.file("m")))
        let store = ImageStore(root: dir.file("store"))
        let layer = try store.storeRootfsLayer(from: dir.file("tree"))
        var options = ImageCreateOptions()
        options.rootfs = RootfsConfig(path: dir.file("tree"), layers: [layer.descriptor])
        _ = try store.createImage(named: "fn", fromFile: dir.file("m"), options: options)
        let image = try store.open("fn")
        #expect(image.config.rootfs?.layers == [layer.descriptor])
        #expect(image.manifest.layers.contains(layer.descriptor))
        #expect(try store.verify("fn").ok)
        #expect(try store.gc().blobsRemoved == 0, "the layer is referenced")
        // A config naming a rootfs layer the manifest does not list is refused.
        try StoreSurgery.editManifest(store, "fn") { $0.layers.removeAll { $0.digest == layer.descriptor.digest } }
        #expect(throws: ImageError.self) { try store.open("fn") }
    }

    /// Writes `entries` as an uncompressed tar (Python's tarfile) into the store as a layer blob.
    static func craftedLayer(_ store: ImageStore, in dir: TemporaryDirectory, _ script: String) throws -> Descriptor {
        let tar = dir.file("crafted-\(UInt32.random(in: 0...UInt32.max)).tar")
        let made = try Command.bounded(30, "python3", ["-c", """
            import io, tarfile, sys
            t = tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT)
            def add(name, data=b"", kind=tarfile.REGTYPE, link=""):
                info = tarfile.TarInfo(name); info.type = kind; info.linkname = link; info.size = len(data); info.mode = 0o644
                t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
            \(script.split(separator: "\n").joined(separator: "\n"))
            t.close()
            """, tar])
        #expect(made.status == 0, "\(made)")
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: tar)))
        let importer = try store.beginImport()
        try importer.storeBlob(bytes, expecting: Digest(of: bytes))
        return Descriptor(mediaType: MediaType.rootfsLayerTar, digest: Digest(of: bytes), size: Int64(bytes.count))
    }

    @Test func hostileLayersCannotReachOutside() throws {
        let dir = try TemporaryDirectory("rootfs-hostile")
        defer { dir.remove() }
        let store = ImageStore(root: dir.file("store"))
        let outside = dir.file("outside")
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        let cases = [
            "add('../../../outside/escaped', b'x')",
            "add('a/../../outside/escaped', b'x')",
            "add('link', kind=tarfile.SYMTYPE, link='\(outside)')\nadd('link/escaped', b'x')",
            "add('up', kind=tarfile.SYMTYPE, link='../../..')\nadd('up/escaped', b'x')",
            "add('hard', kind=tarfile.LNKTYPE, link='../../outside/victim')",
        ]
        for script in cases {
            let layer = try Self.craftedLayer(store, in: dir, script)
            #expect(throws: ImageError.self, "\(script)") { try store.materializeRootfs([layer], image: "evil") }
            #expect(!FileManager.default.fileExists(atPath: store.rootfsPath(for: [layer])), "no partial rootfs")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty)
        // Leftovers of failed unpacks are gone too.
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.root + "/rootfs").filter { $0.hasPrefix(".tmp") }.isEmpty)

        // Whiteouts remove what an earlier layer put there.
        let base = try Self.craftedLayer(store, in: dir, "add('etc/keep', b'k')\nadd('etc/drop', b'd')")
        let top = try Self.craftedLayer(store, in: dir, "add('etc/.wh.drop')")
        let merged = try store.materializeRootfs([base, top], image: "layers")
        #expect(try FileManager.default.contentsOfDirectory(atPath: merged.path + "/etc") == ["keep"])
    }

    @Test func aCorruptLayerIsRefusedAndLeavesNothing() throws {
        let dir = try TemporaryDirectory("rootfs-corrupt")
        defer { dir.remove() }
        try Self.makeTree(dir.file("tree"))
        let store = ImageStore(root: dir.file("store"))
        let layer = try store.storeRootfsLayer(from: dir.file("tree")).descriptor
        let path = store.blobPath(layer.digest)
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count - 3] ^= 0x55
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(throws: ImageError.self) { try store.materializeRootfs([layer], image: "fn") }
        #expect(!FileManager.default.fileExists(atPath: store.rootfsPath(for: [layer])))
    }
}

@Suite struct BlobCacheTests {
    @Test func evictsLeastRecentlyUsedAndDropsDamage() throws {
        let dir = try TemporaryDirectory("blob-cache")
        defer { dir.remove() }
        let blobs = try (0..<3).map { _ in try MemoryFixtures.random(1000) }
        let digests = blobs.map { Digest(of: $0) }
        let cache = try BlobCache(directory: dir.file("cache"), limit: 2000)
        cache.insert(digests[0], blobs[0])
        cache.insert(digests[1], blobs[1])
        #expect(cache.read(digests[0], size: 1000) == blobs[0])  // 0 is now the most recent
        cache.insert(digests[2], blobs[2])
        #expect(cache.contains(digests[0]) && !cache.contains(digests[1]) && cache.contains(digests[2]))
        #expect(cache.totalBytes == 2000)
        // A damaged file is never served: dropped, to be fetched again.
        try Data(try MemoryFixtures.random(1000)).write(to: URL(fileURLWithPath: dir.file("cache") + "/" + digests[2].hex))
        #expect(cache.read(digests[2], size: 1000) == nil)
        #expect(!cache.contains(digests[2]))
        // Reopened, it knows what is on disk.
        #expect(try BlobCache(directory: dir.file("cache"), limit: 2000).read(digests[0], size: 1000) == blobs[0])
    }
}
