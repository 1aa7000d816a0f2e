import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Glibc
import Testing
@testable import CatalyzerKernel
@testable import CatalyzerRuntime

/// Crafted function images against `invoke` and `image verify`, and the mount they restore
/// through: each is refused with a specific error and exit 1, promptly (every command runs under
/// `timeout -s KILL`, so a hang fails the test instead of the run), and good images of the same
/// store keep working through the same mount. Also: what a dead daemon and a user without
/// permission on a healthy mount are told.
@Suite("crafted function images", .serialized)
struct CraftedImageRestoreTests {
    /// Seconds any one command may take; each needs well under a second.
    static let bound = 30

    static func run(_ scene: RestoreScene, _ arguments: [String], as user: String? = nil) throws -> CommandResult {
        let command = (user.map { ["setpriv", "--reuid=\($0)", "--regid=nogroup", "--clear-groups"] } ?? []) + [Command.binary("catalyzer")] + arguments
        return try Command.bounded(bound, command[0], Array(command.dropFirst()), environment: scene.environment)
    }

    static func expectRefused(_ result: CommandResult, saying fragments: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == 1, "\(result)", sourceLocation: sourceLocation)
        #expect(result.stdout.isEmpty || result.stdout.contains("problem"), "\(result)", sourceLocation: sourceLocation)
        #expect(result.stderr.contains("catalyzer: error: "), "\(result)", sourceLocation: sourceLocation)
        for fragment in fragments {
            #expect(result.stderr.contains(fragment), "missing '\(fragment)' in: \(result.stderr)", sourceLocation: sourceLocation)
        }
    }

    /// Unmounts the scene's managed mount within the bound and waits for its daemon to exit;
    /// true if it did (a daemon stuck in a read ignores SIGTERM).
    static func unmount(_ scene: RestoreScene, mountpoint: String) throws -> Bool {
        let result = try run(scene, ["mount", "--unmount"])
        #expect(result.status == 0, "\(result)")
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if daemons(serving: mountpoint).isEmpty { return true }
            usleep(50_000)
        }
        return false
    }

    /// The catalyzerfs processes serving `mountpoint`, by their command line.
    static func daemons(serving mountpoint: String) -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init).filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return arguments.first?.hasSuffix("catalyzerfs") == true && arguments.contains(mountpoint)
        }
    }

    @Test("crafted state and config: invoke and verify refuse them by name; the good image still runs")
    func craftedStateAndConfig() throws {
        let scene = try RestoreScene("crafted-state")
        defer { scene.close() }
        let busybox = try BusyboxRootfs(in: scene.directory)
        try scene.checkpoint("echo", rootfs: busybox.path, memory: "32M", BusyboxRootfs.echoFunction)
        let state = try scene.store.open("echo").readState()
        for name in ["oversized", "device", "truncated", "garbled", "unaligned"] {
            try StoreSurgery.copy(scene.store, "echo", to: name)
        }
        // The kernel state's memory-size field (after the 8-byte magic and the 4-byte version),
        // as large as it gets: the decoder trapped converting it to Int.
        var oversized = state
        for byte in 12..<20 { oversized[byte] = 0xFF }
        try StoreSurgery.replaceState(scene.store, "oversized", with: oversized)
        // A state that reopens the host's /dev/kvm read-write on restore.
        var device = try CheckpointState(decoding: state, image: "echo")
        device.kernel.files.append(.init(kind: .hostDevice(path: "/dev/kvm"), guestPath: "/dev/kvm", statusFlags: O_RDWR))
        device.kernel.descriptors.append(.init(fd: 9, file: device.kernel.files.count - 1, closeOnExec: false))
        try StoreSurgery.replaceState(scene.store, "device", with: device.encoded())
        try StoreSurgery.replaceState(scene.store, "truncated", with: Array(state.prefix(state.count / 2)))
        // Garbled where the structure is: lengths and counts of the first fields.
        var garbled = state
        for index in stride(from: 20, to: 400, by: 3) { garbled[index] ^= 0xA5 }
        try StoreSurgery.replaceState(scene.store, "garbled", with: garbled)
        // Memory that is not whole pages: every chunk still checks out, only a restore objects.
        try StoreSurgery.editConfig(scene.store, "unaligned") { $0["memorySize"] = ($0["memorySize"] as! Int) + 100 }

        for (name, fragment) in [("oversized", "memory size 18446744073709551615 is out of range"),
                                 ("device", "host device /dev/kvm"),
                                 ("truncated", "state blob does not parse"),
                                 ("garbled", "state blob does not parse"),
                                 ("unaligned", "not a whole number of 4096-byte pages")] {
            Self.expectRefused(try Self.run(scene, ["image", "verify", name]), saying: ["image '\(name)'", fragment])
            Self.expectRefused(try Self.run(scene, ["invoke", name, "--input", "hi"]), saying: ["image '\(name)'", fragment])
        }
        let verified = try Self.run(scene, ["image", "verify", "--all"])
        #expect(verified.status == 1 && verified.stdout.contains("echo: ok"), "\(verified)")
        let served = try Self.run(scene, ["invoke", "echo", "--input", "hi"])
        #expect(served.status == 0 && served.stdout == "got hi (v1)\n", "\(served)")
    }

    @Test("chunk and state blobs that are FIFOs: invoke fails at once naming them, the mount serves the rest and unmounts")
    func fifoBlobs() throws {
        let scene = try RestoreScene("fifo-blobs")
        defer { scene.close() }
        let busybox = try BusyboxRootfs(in: scene.directory)
        try scene.checkpoint("bystander", rootfs: busybox.path, memory: "32M", BusyboxRootfs.echoFunction)
        try scene.checkpoint("victim", rootfs: busybox.path, memory: "32M",
                             ["/bin/busybox", "sh", "-c", "x=victim; while read line; do echo \"$x $line\"; done"])
        #expect(try Self.run(scene, ["invoke", "bystander", "--input", "warm"]).status == 0)
        let mountpoint = try Self.run(scene, ["mount"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!mountpoint.isEmpty && !Self.daemons(serving: mountpoint).isEmpty)

        // Every chunk blob the victim does not share with the bystander becomes a FIFO: the
        // victim's own script is in one of them, so its invocation reads at least one.
        let bystanderBlobs = Set(try scene.store.open("bystander").config.chunks.map(\.digest))
        let victimOnly = Set(try scene.store.open("victim").config.chunks.map(\.digest)).subtracting(bystanderBlobs)
        try #require(!victimOnly.isEmpty)
        for digest in victimOnly { try StoreSurgery.replaceWithFIFO(scene.store.blobPath(digest)) }
        // A state blob of its own for a copy of the bystander, then made a FIFO.
        try StoreSurgery.copy(scene.store, "bystander", to: "statefifo")
        let state = try scene.store.open("bystander").readState() + [0]
        try StoreSurgery.replaceState(scene.store, "statefifo", with: state)
        try StoreSurgery.replaceWithFIFO(scene.store.blobPath(Digest(of: state)))

        let started = Date()
        Self.expectRefused(try Self.run(scene, ["invoke", "victim", "--input", "x", "--timeout", "5s"]), saying: ["image 'victim'", "chunk"])
        Self.expectRefused(try Self.run(scene, ["invoke", "statefifo", "--input", "x", "--timeout", "5s"]), saying: ["image 'statefifo'", "state"])
        #expect(Date().timeIntervalSince(started) < 10, "a FIFO must never be waited on")
        Self.expectRefused(try Self.run(scene, ["image", "verify", "victim"]), saying: ["image 'victim'", "blob", "is a FIFO, not a regular file"])
        Self.expectRefused(try Self.run(scene, ["image", "verify", "statefifo"]), saying: ["state blob", "is a FIFO, not a regular file"])
        // The same daemon still serves the good image, and stops when unmounted.
        let served = try Self.run(scene, ["invoke", "bystander", "--input", "hi"])
        #expect(served.status == 0 && served.stdout == "got hi (v1)\n", "\(served)")
        #expect(try Self.unmount(scene, mountpoint: mountpoint), "the daemon did not exit after the unmount")
    }

    @Test("a daemon that dies mid-invocation is blamed, not the image")
    func daemonDiesMidInvocation() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("daemon-dies")
        defer { scene.close() }
        // 24 MiB touched only after the request's sleep: pages no restore has read yet.
        try scene.checkpoint("toucher", rootfs: rootfs, memory: "128M", ["/usr/bin/python3", "-c", """
            import os, sys, time
            data = os.urandom(24 << 20)
            for line in sys.stdin:
                time.sleep(3)
                print(sum(data[::4096]), flush=True)
            """])
        let mountpoint = try Self.run(scene, ["mount"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let daemon = try #require(Self.daemons(serving: mountpoint).first)
        let invocation = Process()
        invocation.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        invocation.arguments = ["-s", "KILL", String(Self.bound), Command.binary("catalyzer"), "invoke", "toucher", "--input", "go"]
        invocation.environment = ProcessInfo.processInfo.environment.merging(scene.environment) { $1 }
        let errors = Foundation.Pipe(), output = Foundation.Pipe()
        invocation.standardError = errors
        invocation.standardOutput = output
        try invocation.run()
        usleep(1_500_000)  // restored and sleeping in the request
        #expect(kill(daemon, SIGKILL) == 0)
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        invocation.waitUntilExit()
        #expect(invocation.terminationStatus == 1, "\(stderr)")
        #expect(stderr.contains("catalyzer: error: image 'toucher'"), "\(stderr)")
        #expect(stderr.contains("the catalyzerfs daemon serving \(mountpoint) has died"), "\(stderr)")
        #expect(!stderr.contains("corrupt or missing chunk blob") && !stderr.contains("image verify"), "\(stderr)")
        // The next invocation mounts the store again and runs (until the sleep's end).
        let again = try Self.run(scene, ["invoke", "toucher", "--input", "go"])
        #expect(again.status == 0 && !again.stdout.isEmpty, "\(again)")
    }

    @Test("a user without permission on a healthy root-only mount is told so, not to unmount it")
    func otherUserOnRootOnlyMount() throws {
        let scene = try RestoreScene("other-user")
        defer { scene.close() }
        let busybox = try BusyboxRootfs(in: scene.directory)
        try scene.checkpoint("echo", rootfs: busybox.path, memory: "32M", BusyboxRootfs.echoFunction)
        let mountpoint = try Self.run(scene, ["mount"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        // Let nobody reach the store (it is private by default) so that the mount is what stops it.
        for path in [scene.directory.path, scene.store.root] { #expect(chmod(path, 0o755) == 0) }
        for arguments in [["invoke", "echo", "--input", "hi", "--mount", mountpoint], ["invoke", "echo", "--input", "hi"]] {
            let result = try Self.run(scene, arguments, as: "nobody")
            Self.expectRefused(result, saying: ["permission denied on the catalyzerfs mount \(mountpoint)", "the mount is healthy"])
            #expect(!result.stderr.contains("umount"), "\(result)")
        }
        #expect(try Self.run(scene, ["invoke", "echo", "--input", "hi"]).stdout == "got hi (v1)\n", "the mount is untouched")
    }
}
