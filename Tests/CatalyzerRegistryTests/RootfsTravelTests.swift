import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// A function checkpointed on one "node" (store, run directory, rootfs directory) restores on
/// another that never had the rootfs: the image carries it as an OCI layer through the registry,
/// and the restore unpacks it once per layer digest under the store.
@Suite("the rootfs travels with the image", .serialized)
struct RootfsTravelTests {
    struct Node {
        let store: String
        let run: String
        var environment: [String: String] { ["CATALYZER_STORE": store, "CATALYZER_RUN_DIR": run] }

        func catalyzer(_ arguments: [String], stdin: Data? = nil) throws -> CommandResult {
            try CLI.run(arguments, stdin: stdin, environment: environment, seconds: 120)
        }

        func unmount() { _ = try? catalyzer(["mount", "--unmount"]) }
    }

    @Test func restoresOnANodeWithoutTheRootfs() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM && TestEnvironment.hasFUSE,
                     Comment(rawValue: TestEnvironment.requirementMessage("root, /dev/kvm and /dev/fuse")))
        let dir = try TemporaryDirectory("rootfs-travel")
        defer { dir.remove() }
        let rootfs = dir.file("rootfs")
        let copied = try Command.bounded(60, "cp", ["-a", try PythonRootfs.path(), rootfs])
        try #require(copied.status == 0, "\(copied)")
        let registry = try RegistryServer(directory: dir.file("registry"))
        defer { registry.remove() }
        let nodeA = Node(store: dir.file("a/store"), run: dir.file("a/run"))
        let nodeB = Node(store: dir.file("b/store"), run: dir.file("b/run"))
        defer { nodeA.unmount(); nodeB.unmount() }

        let function = ["/usr/bin/python3", "/opt/catalyzer/runner.py", "/functions/hello.py"]
        let checkpoint = try nodeA.catalyzer(["checkpoint", "--rootfs", rootfs, "--name", "hello", "--memory", "128M", "--json", "--"] + function)
        try #require(checkpoint.status == 0, "\(checkpoint)")
        let request = Data(#"{"name": "node"}"#.utf8 + [10])
        let onA = try nodeA.catalyzer(["invoke", "hello"], stdin: request)
        #expect(onA.status == 0, "\(onA)")
        #expect(try nodeA.catalyzer(["push", "hello", "\(registry.address)/fn/hello:v1", "--insecure", "--quiet"]).status == 0)

        // Node B: its own store, no rootfs anywhere (the checkpoint's directory is gone).
        let pulled = try nodeB.catalyzer(["pull", "\(registry.address)/fn/hello:v1", "--name", "hello", "--insecure", "--json"])
        #expect(pulled.status == 0, "\(pulled)")
        #expect(Events(pulled.stdout).blobs().contains { $0["role"] as? String == "rootfs layer" })
        try FileManager.default.moveItem(atPath: rootfs, toPath: rootfs + ".gone")
        let onB = try nodeB.catalyzer(["invoke", "hello"], stdin: request)
        #expect(onB.status == 0, "\(onB)")
        #expect(onB.stdout == onA.stdout && onB.stdout.contains("Hello, node!"))

        // Unpacked once: a second restore finds the same directory untouched.
        let layer = try #require(try ImageStore(root: nodeB.store).open("hello").config.rootfs?.layers.first)
        let unpacked = ImageStore(root: nodeB.store).rootfsPath(for: [layer])
        var before = stat(), after = stat()
        #expect(stat(unpacked, &before) == 0)
        #expect(try nodeB.catalyzer(["invoke", "hello"], stdin: request).stdout == onA.stdout)
        #expect(stat(unpacked, &after) == 0 && after.st_ino == before.st_ino && after.st_ctim.tv_nsec == before.st_ctim.tv_nsec)

        // An image that does not carry its rootfs says so on such a node.
        try FileManager.default.moveItem(atPath: rootfs + ".gone", toPath: rootfs)
        let bare = try nodeA.catalyzer(["checkpoint", "--rootfs", rootfs, "--name", "bare", "--memory", "128M", "--no-rootfs-layer", "--"] + function)
        try #require(bare.status == 0, "\(bare)")
        #expect(try nodeA.catalyzer(["push", "bare", "\(registry.address)/fn/bare:v1", "--insecure", "--quiet"]).status == 0)
        #expect(try nodeB.catalyzer(["pull", "\(registry.address)/fn/bare:v1", "--name", "bare", "--insecure", "--quiet"]).status == 0)
        try FileManager.default.moveItem(atPath: rootfs, toPath: rootfs + ".gone")
        let refused = try nodeB.catalyzer(["invoke", "bare"], stdin: request)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("carries no rootfs layers"), "\(refused)")
    }
}

/// `pull --lazy`: only the manifest, config, state, rootfs and working set move at pull time;
/// catalyzerfs fetches the other chunks a restore touches from the registry into the node-wide
/// cache, and a registry outage fails an invocation with an error naming the chunk, in bounded
/// time, never a hang or wrong memory.
@Suite("lazy pull", .serialized)
struct LazyPullTests {
    @Test func lazyRestoreFetchesOnTouchAndSurvivesAnOutage() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM && TestEnvironment.hasFUSE,
                     Comment(rawValue: TestEnvironment.requirementMessage("root, /dev/kvm and /dev/fuse")))
        let dir = try TemporaryDirectory("lazy-pull")
        defer { dir.remove() }
        let rootfs = dir.file("rootfs")
        let copied = try Command.bounded(60, "cp", ["-a", try PythonRootfs.path(), rootfs])
        try #require(copied.status == 0, "\(copied)")
        let registry = try RegistryServer(directory: dir.file("registry"))
        defer { registry.remove() }
        let nodeA = RootfsTravelTests.Node(store: dir.file("a/store"), run: dir.file("a/run"))
        let nodeB = RootfsTravelTests.Node(store: dir.file("b/store"), run: dir.file("b/run"))
        defer { nodeA.unmount(); nodeB.unmount() }

        let function = ["/usr/bin/python3", "/opt/catalyzer/runner.py", "/functions/hello.py"]
        try #require(try nodeA.catalyzer(["checkpoint", "--rootfs", rootfs, "--name", "hello", "--memory", "128M", "--"] + function).status == 0)
        let request = Data(#"{"name": "lazy"}"#.utf8 + [10])
        let onA = try nodeA.catalyzer(["invoke", "hello"], stdin: request)
        #expect(onA.status == 0, "\(onA)")
        #expect(try nodeA.catalyzer(["push", "hello", "\(registry.address)/fn/hello:v1", "--insecure", "--quiet"]).status == 0)
        try FileManager.default.moveItem(atPath: rootfs, toPath: rootfs + ".gone")

        let pulled = try nodeB.catalyzer(["pull", "\(registry.address)/fn/hello:v1", "--name", "hello", "--lazy", "--insecure", "--json"])
        #expect(pulled.status == 0, "\(pulled)")
        let remote = try #require(Events(pulled.stdout).done?["remote"] as? Int)
        let storeB = ImageStore(root: nodeB.store)
        let image = try storeB.open("hello")
        let chunkBlobs = Set(image.config.chunks.map(\.digest))
        #expect(remote == chunkBlobs.count, "no working set recorded: every chunk stays in the registry")
        #expect(image.config.chunks.allSatisfy { chunk in !storeB.hasBlob(chunk.digest, size: chunk.size) })
        #expect(try nodeB.catalyzer(["image", "ls"]).stdout.contains("lazy"))
        #expect(try nodeB.catalyzer(["image", "verify", "hello"]).status == 0)

        let onB = try nodeB.catalyzer(["invoke", "hello"], stdin: request)
        #expect(onB.status == 0, "\(onB)")
        #expect(onB.stdout == onA.stdout)
        // What was fetched went to the node-wide cache: chunk blobs of this image, verified.
        let cached = try FileManager.default.contentsOfDirectory(atPath: storeB.defaultBlobCacheDirectory).compactMap { Digest("sha256:" + $0) }
        #expect(!cached.isEmpty && Set(cached).isSubset(of: chunkBlobs), "\(cached.count) cached")
        #expect(storeB.locality(of: image).cachedBlobs == cached.count)

        // The registry goes away: an invocation touching a chunk nobody fetched yet fails, names
        // the chunk, and ends within the bounded retry time.
        let probe = ImageStore(root: dir.file("c/store"))
        let nodeC = RootfsTravelTests.Node(store: probe.root, run: dir.file("c/run"))
        defer { nodeC.unmount() }
        #expect(try nodeC.catalyzer(["pull", "\(registry.address)/fn/hello:v1", "--name", "hello", "--lazy", "--insecure", "--quiet"]).status == 0)
        registry.crash()
        let started = Date()
        let down = try nodeC.catalyzer(["invoke", "hello"], stdin: request)
        #expect(down.status != 0)
        #expect(down.stderr.contains("image 'hello': guest memory chunk"), "\(down)")
        #expect(Date().timeIntervalSince(started) < 60)
        let log = (try? FileManager.default.contentsOfDirectory(atPath: nodeC.run + "/mounts").filter { $0.hasSuffix(".log") }
            .map { try String(contentsOfFile: nodeC.run + "/mounts/" + $0, encoding: .utf8) }.joined()) ?? ""
        #expect(log.contains("could not be fetched from the registry \(registry.address)/fn/hello"), "\(log)")
        // Node B has what it touched cached: it keeps serving without the registry.
        #expect(try nodeB.catalyzer(["invoke", "hello"], stdin: request).stdout == onA.stdout)

        try registry.start()
        let up = try nodeC.catalyzer(["invoke", "hello"], stdin: request)
        #expect(up.status == 0 && up.stdout == onA.stdout, "\(up)")

        // The daemons that fetched from the registry exit cleanly when unmounted (their HTTP
        // clients shut down first: a debug build used to trap on it as the daemon exited).
        for node in [nodeB, nodeC] {
            node.unmount()
            let logs = (try? FileManager.default.contentsOfDirectory(atPath: node.run + "/mounts").filter { $0.hasSuffix(".log") }) ?? []
            #expect(!logs.isEmpty, "no catalyzerfs log under \(node.run)/mounts")
            for name in logs {
                let text = (try? String(contentsOfFile: node.run + "/mounts/" + name, encoding: .utf8)) ?? ""
                #expect(!text.contains("Fatal error") && !text.contains("Assertion failed"), "\(text)")
            }
        }
    }
}
