import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Glibc
import Testing
@testable import CatalyzerFS

/// Mounting like any other filesystem: mount(8) with the helper, fstab, umount, SIGTERM, errors.
@Suite("catalyzerfs mounting", .serialized)
struct MountTests {
    /// The helper in this tree; mount(8) only looks for helpers in /sbin.
    static let helperSource = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("mount-helpers/mount.catalyzerfs").path
    static let installedHelper = "/sbin/mount.catalyzerfs"

    /// Makes sure mount(8) runs this tree's helper, installing it for the test if needed.
    /// Returns whether it was installed here (and so must be removed again).
    static func installHelper() throws -> Bool {
        let source = try FileBytes.read(helperSource)
        if FileManager.default.fileExists(atPath: installedHelper) {
            try #require(try FileBytes.read(installedHelper) == source,
                         "\(installedHelper) differs from \(helperSource): install the current helper (Scripts/bootstrap.sh)")
            return false
        }
        try FileManager.default.copyItem(atPath: helperSource, toPath: installedHelper)
        return true
    }

    /// Runs mount(8) with the helper pointed at the built daemon.
    static func mount(_ arguments: [String]) throws -> CommandResult {
        try Command.run("mount", arguments, environment: ["CATALYZERFS_BIN": Command.binary("catalyzerfs")])
    }

    static func isMounted(_ path: String) -> Bool {
        MountTable.entries().contains { $0.mountpoint == path && $0.fsType == "fuse.catalyzerfs" }
    }

    @Test("mount -t catalyzerfs mounts, umount unmounts and the daemon exits")
    func mountAndUmountWithMount8() throws {
        try requireMounting()
        let installed = try Self.installHelper()
        defer { if installed { unlink(Self.installedHelper) } }
        let fixture = try MountedStore("mount8")
        defer { fixture.unmount() }
        let memory = TestMemory.bytes(size: 500_000)
        let exported = try fixture.createImage("fn", memory: memory)

        let result = try Self.mount(["-t", "catalyzerfs", fixture.store.root, fixture.mountpoint, "-o", "ro,cache_size=16M,log=\(fixture.logPath)"])
        try #require(result.status == 0, "mount: \(result)")
        #expect(Self.isMounted(fixture.mountpoint))
        #expect(Daemon.pids(mountpoint: fixture.mountpoint).count == 1)
        #expect(try FileBytes.read(fixture.path("fn/memory")) == FileBytes.read(exported))

        let unmount = try Command.run("umount", [fixture.mountpoint])
        #expect(unmount.status == 0, "umount: \(unmount)")
        #expect(!Self.isMounted(fixture.mountpoint))
        #expect(Daemon.waitForExit(mountpoint: fixture.mountpoint), "the daemon must exit after umount")
    }

    @Test("an fstab entry mounts with `mount MOUNTPOINT`")
    func fstabEntry() throws {
        try requireMounting()
        let installed = try Self.installHelper()
        defer { if installed { unlink(Self.installedHelper) } }
        let fixture = try MountedStore("fstab")
        defer { fixture.unmount() }
        try fixture.createImage("fn", memory: TestMemory.bytes(size: 300_000))

        let fstab = "/etc/fstab"
        let original = FileManager.default.contents(atPath: fstab)
        defer {
            if let original { _ = FileManager.default.createFile(atPath: fstab, contents: original) } else { unlink(fstab) }
        }
        let line = "\(fixture.store.root) \(fixture.mountpoint) catalyzerfs ro,cache_size=32M,prefetch=off,log=\(fixture.logPath),noauto 0 0\n"
        try #require(FileManager.default.createFile(atPath: fstab, contents: (original ?? Data()) + Data(line.utf8)))

        let result = try Self.mount([fixture.mountpoint])
        try #require(result.status == 0, "mount: \(result)")
        #expect(Self.isMounted(fixture.mountpoint))
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.mountpoint).sorted() == [".stats", "fn"])
        #expect(try Command.run("umount", [fixture.mountpoint]).status == 0)
        #expect(Daemon.waitForExit(mountpoint: fixture.mountpoint))
    }

    @Test("SIGTERM unmounts and the daemon exits")
    func sigtermUnmounts() throws {
        try requireMounting()
        let fixture = try MountedStore("sigterm")
        defer { fixture.unmount() }
        try fixture.createImage("fn", memory: TestMemory.bytes(size: 100_000))
        try fixture.mount()
        let pids = Daemon.pids(mountpoint: fixture.mountpoint)
        try #require(pids.count == 1)
        kill(pids[0], SIGTERM)
        #expect(Daemon.waitForExit(mountpoint: fixture.mountpoint))
        #expect(!Self.isMounted(fixture.mountpoint))
    }

    @Test("a killed daemon leaves ENOTCONN, which umount clears")
    func killedDaemon() throws {
        try requireMounting()
        let fixture = try MountedStore("killed")
        defer { fixture.unmount() }
        try fixture.createImage("fn", memory: TestMemory.bytes(size: 100_000))
        try fixture.mount()
        let pids = Daemon.pids(mountpoint: fixture.mountpoint)
        try #require(pids.count == 1)
        kill(pids[0], SIGKILL)
        #expect(Daemon.waitForExit(pid: pids[0]))
        // A request already queued when the connection died fails ECONNABORTED; later ones ENOTCONN.
        var code: Int32 = 0
        for _ in 0..<50 {
            var info = stat()
            code = stat(fixture.path("fn"), &info) == 0 ? 0 : errno
            if code != ECONNABORTED { break }
            usleep(100_000)
        }
        #expect(code == ENOTCONN, "stat after the daemon was killed: errno \(code)")
        #expect(try Command.run("umount", [fixture.mountpoint]).status == 0)
        #expect(!Self.isMounted(fixture.mountpoint))
    }

    @Test("a missing store, a missing or busy mountpoint and bad options fail with mount(8) statuses")
    func mountErrors() throws {
        try requireMounting()
        let installed = try Self.installHelper()
        defer { if installed { unlink(Self.installedHelper) } }
        let fixture = try MountedStore("errors")
        defer { fixture.unmount() }
        try fixture.createImage("fn", memory: TestMemory.bytes(size: 100_000))
        let daemon = Command.binary("catalyzerfs")

        let noStore = try Command.run(daemon, [fixture.directory.file("nothing"), fixture.mountpoint])
        #expect(noStore.status == 32 && noStore.stderr.contains("does not exist"), "\(noStore)")
        let noMountpoint = try Command.run(daemon, [fixture.store.root, fixture.directory.file("nothing")])
        #expect(noMountpoint.status == 32 && noMountpoint.stderr.contains("mkdir -p"), "\(noMountpoint)")
        let badOption = try Command.run(daemon, [fixture.store.root, fixture.mountpoint, "-o", "cache_size=lots"])
        #expect(badOption.status == 1 && badOption.stderr.contains("cache_size"), "\(badOption)")
        let notAStore = try Command.run(daemon, [fixture.directory.path, fixture.mountpoint])
        #expect(notAStore.status == 32 && notAStore.stderr.contains("oci-layout"), "\(notAStore)")

        try fixture.mount()
        let busy = try Self.mount(["-t", "catalyzerfs", fixture.store.root, fixture.mountpoint])
        #expect(busy.status == 32 && busy.stderr.contains("busy"), "\(busy)")
        let helperUsage = try Command.run(Self.helperSource, [fixture.store.root])
        #expect(helperUsage.status == 1, "\(helperUsage)")
    }

    @Test("sha256sum and fio (mmap engine) read the memory file as exported")
    func foreignClients() throws {
        try requireMounting()
        let fixture = try MountedStore("foreign")
        defer { fixture.unmount() }
        let exported = try fixture.createImage("fn", memory: TestMemory.bytes())
        try fixture.mount()

        let sums = try Command.run("sha256sum", [exported, fixture.path("fn/memory")])
        try #require(sums.status == 0, "\(sums)")
        let digests = sums.stdout.split(separator: "\n").map { $0.split(separator: " ").first.map(String.init) ?? "" }
        #expect(digests.count == 2 && digests[0] == digests[1], "\(sums.stdout)")

        let fio = try Command.run("fio", ["--name=catalyzerfs", "--filename=\(fixture.path("fn/memory"))", "--readonly",
                                          "--ioengine=mmap", "--rw=randread", "--bs=4k", "--size=100%", "--numjobs=4",
                                          "--group_reporting", "--output-format=terse"])
        #expect(fio.status == 0, "\(fio)")
        #expect(try fixture.statistics(of: "fn").errors == 0)
    }
}
