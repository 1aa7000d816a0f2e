import CatalyzerImage
import CatalyzerTestSupport
import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
@testable import CatalyzerFS

/// Reads through a real mount, compared byte for byte with `catalyzer image export`.
@Suite("catalyzerfs reads", .serialized)
struct ReadTests {
    @Test("sequential, random-offset and odd-size reads equal the export")
    func readsEqualExport() throws {
        try requireMounting()
        let fixture = try MountedStore("reads")
        defer { fixture.unmount() }
        let memory = TestMemory.bytes()
        let exported = try fixture.createImage("fn", memory: memory)
        let export = try FileBytes.read(exported)
        try #require(export == memory, "the export itself must equal the source memory")
        try fixture.mount("cache_size=256K")

        // Sequential, whole file.
        #expect(try FileBytes.read(fixture.path("fn/memory")) == export)

        let fd = open(fixture.path("fn/memory"), O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        // Random offsets and lengths, many spanning chunk boundaries.
        var generator = SeededGenerator(seed: 7)
        for _ in 0..<300 {
            let offset = Int.random(in: 0..<export.count, using: &generator)
            let count = Int.random(in: 1...(3 * TestMemory.chunkSize), using: &generator)
            let expected = Array(export[offset..<min(export.count, offset + count)])
            #expect(try FileBytes.pread(fd, offset: offset, count: count).get() == expected, "read of \(count) at \(offset)")
        }
        // Odd sizes around chunk boundaries, the short last chunk, and past the end.
        let chunk = TestMemory.chunkSize
        for (offset, count) in [(0, 1), (chunk - 1, 2), (chunk - 3, 4097), (2 * chunk + 5, 65537), (3 * chunk - 1, 1),
                                (export.count - 1, 1), (export.count - 100, 4096), (export.count, 10), (export.count + 4096, 10)] {
            let expected = offset < export.count ? Array(export[offset..<min(export.count, offset + count)]) : []
            #expect(try FileBytes.pread(fd, offset: offset, count: count).get() == expected, "read of \(count) at \(offset)")
        }

        let image = try fixture.store.open("fn")
        #expect(try FileBytes.read(fixture.path("fn/state")) == Array("state of fn".utf8))
        #expect(try FileBytes.read(fixture.path("fn/manifest.json")) == image.manifestBytes)
        var info = stat()
        #expect(stat(fixture.path("fn/memory"), &info) == 0 && Int(info.st_size) == memory.count)

        let stats = try fixture.statistics(of: "fn")
        #expect(stats.readsServed > 0 && stats.bytesReturned >= UInt64(memory.count))
        #expect(stats.blobsFetched > 0 && stats.errors == 0 && stats.zeroChunks > 0)
        // Tools that trust st_size must still get the whole document (it reports size 0, as procfs does).
        let whole = try Data(contentsOf: URL(fileURLWithPath: fixture.path(".stats")))
        #expect(try JSONSerialization.jsonObject(with: whole) is [String: Any])
    }

    @Test("a MAP_PRIVATE mapping reads the image and keeps its writes private")
    func privateMapping() throws {
        try requireMounting()
        let fixture = try MountedStore("mmap")
        defer { fixture.unmount() }
        let memory = TestMemory.bytes()
        try fixture.createImage("fn", memory: memory)
        try fixture.mount()

        let fd = open(fixture.path("fn/memory"), O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        let first = try #require(PrivateMapping(fd: fd, size: memory.count))
        let second = try #require(PrivateMapping(fd: fd, size: memory.count))
        #expect(first.bytes == memory)

        // Write into the first mapping: in a random chunk, a zero chunk, and the last page.
        for offset in [5, 3 * TestMemory.chunkSize + 100, memory.count - 1] {
            first.pointer.storeBytes(of: ~memory[offset], toByteOffset: offset, as: UInt8.self)
        }
        #expect(first.pointer.load(fromByteOffset: 5, as: UInt8.self) == ~memory[5])
        #expect(second.bytes == memory, "writes through one private mapping must not show in another")
        #expect(try FileBytes.read(fixture.path("fn/memory")) == memory, "writes through a private mapping must not reach the file")
    }

    @Test("a second process mapping a touched image causes no FUSE reads")
    func pageCacheIsShared() throws {
        try requireMounting()
        let fixture = try MountedStore("sharing")
        defer { fixture.unmount() }
        let memory = TestMemory.bytes()
        try fixture.createImage("fn", memory: memory)
        try fixture.mount("prefetch=off")

        let touch = """
            import mmap, os, sys
            fd = os.open(sys.argv[1], os.O_RDONLY)
            size = os.fstat(fd).st_size
            m = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            total = sum(m[i] for i in range(0, size, 4096))
            m[0] = 1  # a private write, as a restored sandbox makes
            print(total)
            """
        // Hold the file open between the two mappings, as a monitor keeps its images open. FUSE
        // evicts an inode, page cache and all, as soon as nothing references it (its
        // drop_inode is generic_delete_inode), and an unreferenced dentry may be pruned at any time.
        let pin = open(fixture.path("fn/memory"), O_RDONLY)
        try #require(pin >= 0, "open fn/memory: errno \(errno)")
        defer { close(pin) }
        let first = try Command.run("python3", ["-c", touch, fixture.path("fn/memory")])
        try #require(first.status == 0, "python3 must run to map the file: \(first)")
        let afterFirst = try fixture.statistics(of: "fn")
        #expect(afterFirst.readsServed > 0)
        // Which pages are still cached, for the failure message (fincore neither reads nor faults).
        let residency = try? Command.run("fincore", ["--bytes", fixture.path("fn/memory")])

        let second = try Command.run("python3", ["-c", touch, fixture.path("fn/memory")])
        #expect(second.status == 0 && second.stdout == first.stdout)
        let afterSecond = try fixture.statistics(of: "fn")
        #expect(afterSecond.readsServed == afterFirst.readsServed,
                "the second mapping must be served from the shared page cache; cached before it: \(residency?.stdout ?? "?")")
        #expect(afterSecond.blobsFetched == afterFirst.blobsFetched)
    }

    @Test("a corrupt chunk is EIO and a log line naming image and chunk; other chunks still read")
    func corruptChunkIsEIO() throws {
        try requireMounting()
        let fixture = try MountedStore("corrupt")
        defer { fixture.unmount() }
        let memory = TestMemory.bytes()
        try fixture.createImage("fn", memory: memory)
        let image = try fixture.store.open("fn")
        let victim = try #require(image.config.chunks.first { $0.index == 4 })
        // Flip one byte of the blob, keeping its size: only the digest check can catch it.
        let blobPath = fixture.store.blobPath(victim.digest)
        var blob = try FileBytes.read(blobPath)
        blob[blob.count / 2] ^= 0xff
        try Data(blob).write(to: URL(fileURLWithPath: blobPath))
        try fixture.mount("cache_size=0")

        let fd = open(fixture.path("fn/memory"), O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        let chunk = TestMemory.chunkSize
        for _ in 0..<2 {
            let bad = FileBytes.pread(fd, offset: 4 * chunk + 10, count: 100)
            #expect(throws: Errno.self) { try bad.get() }
            if case let .failure(error) = bad { #expect(error.code == EIO) }
        }
        #expect(try FileBytes.pread(fd, offset: chunk, count: 4096).get() == Array(memory[chunk..<(chunk + 4096)]))
        #expect(fixture.log.contains("image 'fn' chunk 4"), "log: \(fixture.log)")
        #expect(try fixture.statistics(of: "fn").errors >= 1)
    }

    @Test("16 concurrent readers over the same and different images")
    func concurrentReaders() throws {
        try requireMounting()
        let fixture = try MountedStore("concurrent")
        defer { fixture.unmount() }
        let images = ["one", "two"]
        var exports: [[UInt8]] = []
        for (i, name) in images.enumerated() {
            let memory = TestMemory.bytes(seed: UInt64(i + 1))
            try fixture.createImage(name, memory: memory)
            exports.append(memory)
        }
        try fixture.mount("cache_size=512K")
        let paths = images.map { fixture.path("\($0)/memory") }
        let sources = exports
        let mismatches = Mutex(0)
        let failures = Mutex([String]())
        DispatchQueue.concurrentPerform(iterations: 16) { reader in
            let which = reader % 2
            let fd = open(paths[which], O_RDONLY)
            guard fd >= 0 else { return failures.withLock { $0.append("open: \(errno)") } }
            defer { close(fd) }
            var generator = SeededGenerator(seed: UInt64(100 + reader))
            let export = sources[which]
            for _ in 0..<60 {
                let offset = Int.random(in: 0..<export.count, using: &generator)
                let count = Int.random(in: 1...200_000, using: &generator)
                switch FileBytes.pread(fd, offset: offset, count: count) {
                case let .success(bytes):
                    if bytes[...] != export[offset..<min(export.count, offset + count)] { mismatches.withLock { $0 += 1 } }
                case let .failure(error):
                    failures.withLock { $0.append("pread: \(error.code)") }
                }
            }
        }
        #expect(mismatches.withLock { $0 } == 0)
        #expect(failures.withLock { $0 }.isEmpty)
        #expect(try fixture.statistics().images.values.allSatisfy { $0.errors == 0 })
    }

    @Test("the working set is prefetched into the page cache after open, unless prefetch=off")
    func workingSetPrefetch() throws {
        try requireMounting()
        let workingSet = [0, 1, 2, 4, 5, 6]
        for prefetch in [true, false] {
            let fixture = try MountedStore("prefetch")
            defer { fixture.unmount() }
            let memory = TestMemory.bytes()
            try fixture.createImage("fn", memory: memory, workingSet: workingSet)
            try fixture.mount("prefetch=\(prefetch ? "on" : "off")")
            let fd = open(fixture.path("fn/memory"), O_RDONLY)
            try #require(fd >= 0)
            defer { close(fd) }
            if prefetch {
                let deadline = Date().addingTimeInterval(10)
                while try fixture.statistics(of: "fn").prefetchedChunks < UInt64(workingSet.count) && Date() < deadline {
                    usleep(10_000)
                }
            }
            let before = try fixture.statistics(of: "fn")
            #expect(before.prefetchedChunks == (prefetch ? UInt64(workingSet.count) : 0))
            for index in workingSet {
                let offset = index * TestMemory.chunkSize
                #expect(try FileBytes.pread(fd, offset: offset, count: TestMemory.chunkSize).get() == Array(memory[offset..<(offset + TestMemory.chunkSize)]))
            }
            let after = try fixture.statistics(of: "fn")
            if prefetch {
                #expect(after.readsServed == before.readsServed, "prefetched chunks must come from the page cache")
            } else {
                #expect(after.readsServed > before.readsServed)
            }
        }
    }

    @Test("readahead matches the chunk size by default and follows readahead=")
    func readahead() throws {
        try requireMounting()
        for (option, expectedKiB) in [("", 128), ("readahead=512K", 512)] {  // 64 KiB chunks: at least 128K
            let fixture = try MountedStore("readahead")
            defer { fixture.unmount() }
            try fixture.createImage("fn", memory: TestMemory.bytes(size: 100_000))
            try fixture.mount(option)
            let device = try #require(MountTable.entries().last { $0.mountpoint == fixture.mountpoint }?.device)
            let setting = try String(contentsOfFile: "/sys/class/bdi/\(device)/read_ahead_kb", encoding: .utf8)
            #expect(setting.trimmingCharacters(in: .whitespacesAndNewlines) == "\(expectedKiB)", "-o \(option)")
        }
    }

    @Test("images created and removed in the store appear and disappear without remounting")
    func storeChangesAreVisible() throws {
        try requireMounting()
        let fixture = try MountedStore("changes")
        defer { fixture.unmount() }
        try fixture.createImage("first", memory: TestMemory.bytes(size: 100_000))
        try fixture.mount()
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.mountpoint).sorted() == [".stats", "first"])
        #expect(errnoOfAccess(fixture.path("second/memory")) == ENOENT)

        let second = TestMemory.bytes(size: 200_000, seed: 9)
        try fixture.createImage("second", memory: second)
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.mountpoint).sorted() == [".stats", "first", "second"])
        #expect(try FileBytes.read(fixture.path("second/memory")) == second)

        // Replacing an image under the same name serves the new memory.
        let replaced = TestMemory.bytes(size: 150_000, seed: 10)
        try fixture.createImage("second", memory: replaced)
        #expect(try FileBytes.read(fixture.path("second/memory")) == replaced)

        try fixture.store.remove("first")
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.mountpoint).sorted() == [".stats", "second"])
        #expect(errnoOfAccess(fixture.path("first/memory")) == ENOENT)
    }
}

/// The errno of `access(path, F_OK)`, or 0 when the path exists.
func errnoOfAccess(_ path: String) -> Int32 {
    access(path, F_OK) == 0 ? 0 : errno
}

/// A private, writable mapping of a file, unmapped when released.
final class PrivateMapping {
    let pointer: UnsafeMutableRawPointer
    let size: Int

    init?(fd: Int32, size: Int) {
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0), base != MAP_FAILED else { return nil }
        pointer = base
        self.size = size
    }

    var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: pointer, count: size)) }

    deinit { munmap(pointer, size) }
}
