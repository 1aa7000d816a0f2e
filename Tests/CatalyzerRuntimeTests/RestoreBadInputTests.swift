import CatalyzerImage
import CatalyzerRuntime
import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// What `checkpoint` and `invoke` do with bad images, changed rootfses and failing programs:
/// a specific message, a non-zero exit, no sandbox run on bad state, and a store left untouched.
@Suite("checkpoint and restore: bad input", .serialized)
struct RestoreBadInputTests {
    static let hello = ["/usr/bin/python3", "/opt/catalyzer/runner.py", "/functions/hello.py"]

    func expectRefused(_ result: CommandResult, saying fragments: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == 1, "\(result)", sourceLocation: sourceLocation)
        #expect(result.stdout.isEmpty, "no response may come from a refused restore: \(result)", sourceLocation: sourceLocation)
        for fragment in fragments {
            #expect(result.stderr.contains(fragment), "missing '\(fragment)' in: \(result.stderr)", sourceLocation: sourceLocation)
        }
    }

    @Test("unknown name, other format version, state that does not parse: clear errors, no sandbox, store untouched")
    func unrestorableImages() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("bad-images")
        defer { scene.close() }
        try scene.checkpoint("hello", rootfs: rootfs, Self.hello)
        let state = try scene.store.open("hello").readState()
        for name in ["newer", "plain", "truncated", "garbled"] {
            try scene.checkpoint(name, rootfs: rootfs, Self.hello)
        }
        try StoreSurgery.editConfig(scene.store, "newer") { $0["formatVersion"] = 3 }
        try StoreSurgery.replaceState(scene.store, "plain", with: [])
        try StoreSurgery.replaceState(scene.store, "truncated", with: Array(state.prefix(state.count / 2)))
        var garbled = state
        for index in stride(from: 200, to: min(garbled.count, 4000), by: 7) { garbled[index] ^= 0xA5 }
        try StoreSurgery.replaceState(scene.store, "garbled", with: garbled)
        let before = try scene.storeListing()

        expectRefused(try scene.invoke("nosuch", input: "{}"), saying: ["no image named 'nosuch'"])
        expectRefused(try scene.invoke("newer", input: "{}"), saying: ["newer", "format version 3 is not supported"])
        expectRefused(try scene.invoke("plain", input: "{}"), saying: ["plain", "not catalyzer checkpoint state"])
        expectRefused(try scene.invoke("truncated", input: "{}"), saying: ["truncated", "state blob does not parse", "re-create"])
        let result = try scene.invoke("garbled", input: "{}")
        #expect(result.status != 0 && result.stdout.isEmpty, "\(result)")
        #expect(result.stderr.contains("garbled"), "\(result)")
        // The good image still restores, and nothing in the store changed.
        #expect(try scene.invoke("hello", input: "{}").status == 0)
        #expect(try scene.storeListing() == before)
    }

    @Test("a corrupt memory chunk fails the invocation with an error naming image and chunk")
    func corruptMemoryChunk() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("bad-chunk")
        defer { scene.close() }
        try scene.checkpoint("victim", rootfs: rootfs, Self.hello)
        try scene.checkpoint("bystander", rootfs: rootfs, ["/usr/bin/python3", "-c", "import sys\nfor l in sys.stdin: print('ok', flush=True)"])
        let image = try scene.store.open("victim")
        let bystanderChunks = Set(try scene.store.open("bystander").config.chunks.map(\.digest))
        // Chunk 0 holds the page tables, which every restore reads first.
        let blob = try StoreSurgery.chunkBlobPath(scene.store, "victim", chunk: 0)
        #expect(!bystanderChunks.contains(image.chunk(at: 0)!.digest))
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: blob)))
        bytes[bytes.count / 2] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: blob))
        let before = try scene.storeListing()
        expectRefused(try scene.invoke("victim", input: "{}"), saying: ["image 'victim'", "chunk 0", "catalyzer image verify victim"])
        #expect(try scene.storeListing() == before, "a failed restore must leave the store as it was")
        // Corrupting every chunk but 0 instead: the program's own first touches fail.
        for entry in image.config.chunks where entry.index != 0 && !bystanderChunks.contains(entry.digest) {
            let path = scene.store.blobPath(entry.digest)
            var data = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
            data[0] ^= 0xFF
            try Data(data).write(to: URL(fileURLWithPath: path))
        }
        bytes[bytes.count / 2] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: blob))
        let everyOther = try scene.invoke("victim", input: "{}")
        expectRefused(everyOther, saying: ["image 'victim'", "chunk"])
        #expect(!everyOther.stderr.contains("chunk 0 "), "\(everyOther.stderr)")
        // The daemon survived, and serves the bystander.
        #expect(try scene.invoke("bystander", input: "x").stdout == "ok\n")
    }

    @Test("a corrupt chunk the guest itself touches first (its next instruction) is named too")
    func corruptChunkUnderTheNextInstruction() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("bad-code-chunk")
        defer { scene.close() }
        try scene.checkpoint("victim", rootfs: rootfs, Self.hello)
        let image = try scene.store.open("victim")
        // Where the program resumes: RIP (kvm_regs offset 128), walked through the checkpoint's
        // page tables in the exported memory to the chunk that holds its code.
        let state = try CheckpointState(decoding: try image.readState(), image: "victim")
        let rip = state.kernel.vcpu.registers.withUnsafeBytes { $0.load(fromByteOffset: 128, as: UInt64.self) }
        let exported = scene.directory.path + "/victim.mem"
        try #require(try scene.catalyzer(["image", "export", "victim", exported]).status == 0)
        let memory = try Data(contentsOf: URL(fileURLWithPath: exported))
        var table = state.kernel.pageTableRoot
        for level in stride(from: 3, through: 0, by: -1) {
            let slot = Int(table + ((rip >> (12 + 9 * UInt64(level))) & 0x1FF) * 8)
            table = memory.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: slot, as: UInt64.self) } & 0x000F_FFFF_FFFF_F000
        }
        let chunk = Int(table) / image.config.chunkSize
        try #require(chunk != 0, "the code page shares chunk 0 with the page tables; the test needs them apart")
        let blob = try StoreSurgery.chunkBlobPath(scene.store, "victim", chunk: chunk)
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: blob)))
        bytes[bytes.count / 2] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: blob))
        expectRefused(try scene.invoke("victim", input: "{}"), saying: ["image 'victim'", "chunk \(chunk) ", "catalyzer image verify victim"])
    }

    @Test("restoring against a changed rootfs is refused; a fresh checkpoint of it restores")
    func changedRootfs() throws {
        let scene = try RestoreScene("rootfs")
        defer { scene.close() }
        let busybox = try BusyboxRootfs(in: scene.directory)
        try scene.checkpoint("echo", rootfs: busybox.path, memory: "32M", BusyboxRootfs.echoFunction)
        #expect(try scene.invoke("echo", input: "hi").stdout == "got hi (v1)\n")
        try "v2\n".write(toFile: busybox.path + "/etc/version", atomically: false, encoding: .utf8)
        expectRefused(try scene.invoke("echo", input: "hi"), saying: ["rootfs", "changed since the checkpoint", "/etc/version", "catalyzer checkpoint"])
        try scene.checkpoint("echo", rootfs: busybox.path, memory: "32M", BusyboxRootfs.echoFunction)
        #expect(try scene.invoke("echo", input: "hi").stdout == "got hi (v2)\n")
        // The image carries its rootfs as a layer: with the directory gone, the restore unpacks it
        // under the store (the fingerprint still matches: mtimes travel to the nanosecond).
        try FileManager.default.removeItem(atPath: busybox.path)
        #expect(try scene.invoke("echo", input: "hi").stdout == "got hi (v2)\n")
        // An image made without its rootfs is refused where the directory is gone.
        _ = try BusyboxRootfs(in: scene.directory)
        try scene.checkpoint("bare", rootfs: busybox.path, memory: "32M", options: ["--no-rootfs-layer"], BusyboxRootfs.echoFunction)
        try FileManager.default.removeItem(atPath: busybox.path)
        expectRefused(try scene.invoke("bare", input: "hi"), saying: ["rootfs", busybox.path, "carries no rootfs layers"])
    }

    @Test("a restored instance that runs forever is stopped at --timeout; one that exhausts its memory fails cleanly")
    func runawayRestoredInstance() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("runaway")
        defer { scene.close() }
        let function = ["/usr/bin/python3", "-c", """
            import sys
            hoard = []
            for line in sys.stdin:
                if line.strip() == "spin":
                    while True: pass
                try:
                    while True: hoard.append(bytearray(1 << 20))
                except MemoryError:
                    print("out of memory after", len(hoard), "MiB", flush=True)
                    hoard.clear()
            """]
        try scene.checkpoint("runaway", rootfs: rootfs, memory: "64M", function)
        let started = Date()
        let spun = try scene.invoke("runaway", input: "spin", options: ["--timeout", "1s"])
        #expect(spun.status == 124, "\(spun)")
        #expect(spun.stderr.contains("timed out after 1s"), "\(spun)")
        #expect(Date().timeIntervalSince(started) < 10)
        let hoarded = try scene.invoke("runaway", input: "hoard")
        #expect(hoarded.status == 0, "\(hoarded)")
        let mebibytes = Int(hoarded.stdout.split(separator: " ").dropFirst(4).first ?? "") ?? 0
        #expect(hoarded.stdout.hasPrefix("out of memory after ") && mebibytes > 10 && mebibytes < 64, "\(hoarded)")
    }

    @Test("a restored instance is confined like a cold one: no host files outside its rootfs, no writes to it")
    func restoredInstanceIsConfined() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("confined")
        defer { scene.close() }
        let secret = "/var/tmp/catalyzer-secret-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try "host secret\n".write(toFile: secret, atomically: false, encoding: .utf8)
        defer { unlink(secret) }
        let prober = ["/usr/bin/python3", "-c", """
            import errno, os, sys
            def attempt(path, mode):
                try:
                    with open(path, mode) as f:
                        return "read " + f.read() if "r" in mode else "wrote"
                except OSError as e:
                    return errno.errorcode[e.errno]
            for line in sys.stdin:
                path = line.strip()
                print(attempt(path, "r"), attempt("/.." + path, "r"), attempt("../../../.." + path, "r"),
                      attempt("/usr/lib/python3.11/os.py", "a"), attempt("/planted", "w"), flush=True)
            """]
        try scene.checkpoint("prober", rootfs: rootfs, prober)
        let result = try scene.invoke("prober", input: secret)
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "ENOENT ENOENT ENOENT EROFS EROFS\n")
        #expect(!FileManager.default.fileExists(atPath: rootfs + "/planted"))
    }

    @Test("a program that exits or times out before its ready point makes no image and shows its output")
    func noReadyPoint() throws {
        let scene = try RestoreScene("not-ready")
        defer { scene.close() }
        let busybox = try BusyboxRootfs(in: scene.directory)
        let exits = try scene.catalyzer(["checkpoint", "--rootfs", busybox.path, "--name", "broken", "--memory", "32M", "--",
                                         "/bin/busybox", "sh", "-c", "echo loading config; echo 'config is missing' >&2; exit 3"])
        #expect(exits.status == 1, "\(exits)")
        #expect(exits.stderr.contains("exited with status 3 before its ready point"), "\(exits)")
        #expect(exits.stderr.contains("loading config") && exits.stderr.contains("config is missing"), "\(exits)")
        let spins = try scene.catalyzer(["checkpoint", "--rootfs", busybox.path, "--name", "spinner", "--memory", "32M", "--timeout", "1s",
                                         "--", "/bin/busybox", "sh", "-c", "while :; do :; done"])
        #expect(spins.status == 1 && spins.stderr.contains("did not reach its ready point within"), "\(spins)")
        let listing = try scene.catalyzer(["image", "ls", "--json"])
        #expect(!listing.stdout.contains("broken") && !listing.stdout.contains("spinner"), "\(listing)")
    }

    @Test("output floods are bounded: init output is shown by its end, --json refuses more than 64 MiB")
    func floodingProgram() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("flood")
        defer { scene.close() }
        let flood = try scene.catalyzer(["checkpoint", "--rootfs", rootfs, "--name", "flood", "--memory", "64M", "--",
                                         "/usr/bin/python3", "-c",
                                         "import sys\nfor i in range(20000): print('x' * 1000)\nprint('last words')\nsys.exit(4)"])
        #expect(flood.status == 1, "\(flood)")
        #expect(flood.stderr.contains("exited with status 4 before its ready point"))
        #expect(flood.stderr.contains("earlier bytes left out") && flood.stderr.contains("last words"))
        #expect(flood.stderr.utf8.count < 64 << 10, "20 MB of output must not be kept and printed whole")

        // A restored function that floods its responses: --json refuses to gather more than 64 MiB.
        try scene.checkpoint("talker", rootfs: rootfs, memory: "64M", ["/usr/bin/python3", "-c", """
            import sys
            for line in sys.stdin:
                for i in range(70000): sys.stdout.write("y" * 1000 + "\\n")
                sys.stdout.flush()
            """])
        let flooded = try scene.invoke("talker", input: "go", options: ["--json"])
        #expect(flooded.status == 1 && flooded.stderr.contains("more than the 64 MiB --json collects"), "\(flooded.status) \(flooded.stderr)")
        #expect(flooded.stdout.isEmpty)
    }
}
