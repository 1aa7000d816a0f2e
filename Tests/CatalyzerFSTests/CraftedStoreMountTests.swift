import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Glibc
import Testing
@testable import CatalyzerFS

/// A mount of a store holding crafted images: the daemon starts, lists the store, serves the good
/// images, answers the bad ones with EIO (logging which and why) and never blocks, and it exits
/// when unmounted. Reads of the mount run in child processes under `timeout -s KILL`, so a read
/// that blocks fails the test instead of hanging this process in the kernel.
@Suite("catalyzerfs over crafted images", .serialized)
struct CraftedStoreMountTests {
    static let bound = 20

    /// `dd` of `count` bytes at `offset` of `path` on the mount, in a bounded child process.
    static func read(_ path: String, offset: Int = 0, count: Int = 65536) throws -> CommandResult {
        try Command.bounded(bound, "dd", ["if=\(path)", "of=/dev/null", "bs=\(count)", "count=1",
                                         "skip=\(offset)", "iflag=skip_bytes", "status=none"])
    }

    @Test("chunk index 2^62 and memory size 2^60: the mount starts, lists, serves the good image and names the bad ones")
    func craftedConfigs() throws {
        try requireMounting()
        let fixture = try MountedStore("crafted-configs")
        defer { fixture.unmount() }
        let memory = TestMemory.bytes(size: 400_000)
        let exported = try fixture.createImage("good", memory: memory)
        try fixture.createImage("index", memory: TestMemory.bytes(size: 300_000, seed: 2))
        try fixture.createImage("huge", memory: TestMemory.bytes(size: 300_000, seed: 3))
        try StoreSurgery.editConfig(fixture.store, "index") { config in
            var chunks = config["chunks"] as! [[String: Any]]
            chunks[chunks.count - 1]["index"] = 1 << 62
            config["chunks"] = chunks
        }
        try StoreSurgery.editConfig(fixture.store, "huge") { $0["memorySize"] = 1 << 60 }
        // Mounting opens every image (to match readahead to chunk sizes): it must survive them.
        try fixture.mount()

        let listed = try Command.bounded(Self.bound, "ls", ["-l", fixture.mountpoint])
        #expect(listed.stdout.contains("good"), "\(listed)")
        for bad in ["index", "huge"] {
            #expect(listed.stdout.contains(bad) || listed.stderr.contains(bad), "\(listed)")
            let opened = try Self.read(fixture.path("\(bad)/memory"))
            #expect(opened.status != 0 && opened.stderr.contains("Input/output error"), "\(opened)")
        }
        #expect(try Self.read(fixture.path("good/memory")).status == 0)
        #expect(try FileBytes.read(fixture.path("good/memory")) == FileBytes.read(exported))
        // The daemon is still there for a second listing, and says which image is bad and why.
        #expect(try Command.bounded(Self.bound, "ls", [fixture.mountpoint]).stdout.contains("good"))
        #expect(fixture.log.contains("image 'index'") && fixture.log.contains("names chunk 4611686018427387904"), "\(fixture.log)")
        #expect(fixture.log.contains("image 'huge'") && fixture.log.contains("memory size 1152921504606846976"), "\(fixture.log)")
    }

    @Test("chunk and state blobs that are FIFOs: EIO at once, and the daemon exits on unmount")
    func fifoBlobs() throws {
        try requireMounting()
        let fixture = try MountedStore("fifo-blobs")
        defer { fixture.unmount() }
        let memory = TestMemory.bytes(size: 400_000)
        let exported = try fixture.createImage("good", memory: memory)
        try fixture.createImage("victim", memory: TestMemory.bytes(size: 400_000, seed: 9))
        try StoreSurgery.replaceWithFIFO(try StoreSurgery.chunkBlobPath(fixture.store, "victim", chunk: 1))
        try StoreSurgery.replaceWithFIFO(fixture.store.blobPath(try fixture.store.open("victim").config.state.digest))
        try fixture.mount()

        let started = Date()
        let chunk = try Self.read(fixture.path("victim/memory"), offset: TestMemory.chunkSize)
        #expect(chunk.status == 1 && chunk.stderr.contains("Input/output error"), "\(chunk)")
        let state = try Self.read(fixture.path("victim/state"))
        #expect(state.status == 1 && state.stderr.contains("Input/output error"), "\(state)")
        #expect(Date().timeIntervalSince(started) < 10)
        // Chunk 0 of the victim is fine and still served; so is the other image.
        #expect(try Self.read(fixture.path("victim/memory"), offset: 0).status == 0)
        #expect(try FileBytes.read(fixture.path("good/memory")) == FileBytes.read(exported))
        #expect(fixture.log.contains("is a FIFO, not a regular file"), "\(fixture.log)")

        let pids = Daemon.pids(mountpoint: fixture.mountpoint)
        #expect(try Command.bounded(Self.bound, "umount", [fixture.mountpoint]).status == 0)
        #expect(Daemon.waitForExit(mountpoint: fixture.mountpoint, seconds: 10), "daemon \(pids) still running after the unmount")
    }

    @Test("the daemon's log file is private")
    func logIsPrivate() throws {
        try requireMounting()
        let fixture = try MountedStore("log-mode")
        defer { fixture.unmount() }
        try fixture.createImage("fn", memory: TestMemory.bytes(size: 100_000))
        try fixture.mount()
        var info = stat()
        #expect(stat(fixture.logPath, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600, "log mode \(String(info.st_mode & 0o777, radix: 8))")
    }
}
