import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Glibc
import Synchronization
import Testing
@testable import CatalyzerRuntime

/// The managed catalyzerfs mount (`catalyzer mount`, `CatalyzerMount`): made once, reused, made
/// again when gone, one mount however many invocations race, and the checks on a user's mount.
@Suite("managed catalyzerfs mount", .serialized)
struct ManagedMountTests {
    @Test("catalyzer mount mounts the store, prints the mountpoint, and memory reads as exported")
    func mountPrintsTheMountpointAndServesTheStore() throws {
        try Self.requireMounting()
        let scene = try Scene("print")
        defer { scene.cleanUp() }
        let exported = try scene.createImage("fn")

        let mountpoint = try scene.mount()
        #expect(mountpoint == scene.expectedMountpoint)
        let mounts = scene.mounts()
        try #require(mounts.count == 1, "one mount at \(mountpoint): \(mounts)")
        #expect(mounts[0].fsType == "fuse.catalyzerfs")
        #expect(mounts[0].source == scene.store.root)
        #expect(try Self.read(mountpoint + "/fn/memory") == Self.read(exported))
        #expect(FileManager.default.fileExists(atPath: mountpoint + ".log"))

        let located = try scene.catalyzer(["mount", "--mount-dir", "--store", scene.store.root])
        #expect(located.status == 0 && located.stdout == mountpoint + "\n", "\(located)")
    }

    @Test("a second catalyzer mount reuses the mount and its daemon")
    func secondCallReusesTheMount() throws {
        try Self.requireMounting()
        let scene = try Scene("reuse")
        defer { scene.cleanUp() }
        try scene.createImage("fn")

        let first = try scene.mount()
        let mountIDs = scene.mounts().map(\.mountID)
        let daemons = scene.daemonPIDs()
        #expect(daemons.count == 1, "one daemon: \(daemons)")
        #expect(try scene.mount() == first)
        #expect(scene.mounts().map(\.mountID) == mountIDs, "the same mount, not a new one")
        #expect(scene.daemonPIDs() == daemons, "the same daemon")
    }

    @Test("6 concurrent catalyzer mount processes end with exactly one mount")
    func concurrentCallsMakeOneMount() throws {
        try Self.requireMounting()
        let scene = try Scene("race")
        defer { scene.cleanUp() }
        let exported = try scene.createImage("fn")

        let results = Mutex<[Result<CommandResult, any Error>]>([])
        DispatchQueue.concurrentPerform(iterations: 6) { _ in
            let result = Result { try scene.catalyzer(["mount", "--store", scene.store.root]) }
            results.withLock { $0.append(result) }
        }
        for result in results.withLock({ $0 }) {
            let output = try result.get()
            #expect(output.status == 0 && output.stdout == scene.expectedMountpoint + "\n", "\(output)")
        }
        #expect(scene.mounts().count == 1, "exactly one mount: \(scene.mounts())")
        #expect(scene.daemonPIDs().count == 1, "exactly one daemon: \(scene.daemonPIDs())")
        #expect(try Self.read(scene.expectedMountpoint + "/fn/memory") == Self.read(exported))
    }

    @Test("after umount, the next catalyzer mount mounts again")
    func mountsAgainAfterUmount() throws {
        try Self.requireMounting()
        let scene = try Scene("umount")
        defer { scene.cleanUp() }
        let exported = try scene.createImage("fn")

        let mountpoint = try scene.mount()
        let before = scene.daemonPIDs()
        let unmounted = try Command.run("umount", [mountpoint])
        try #require(unmounted.status == 0, "umount: \(unmounted)")
        #expect(scene.waitForDaemonsToExit())
        #expect(scene.mounts().isEmpty)

        #expect(try scene.mount() == mountpoint)
        #expect(scene.mounts().count == 1, "one mount: \(scene.mounts())")
        let after = scene.daemonPIDs()
        #expect(after.count == 1 && after != before, "a new daemon: \(after), before \(before)")
        #expect(try Self.read(mountpoint + "/fn/memory") == Self.read(exported))
    }

    @Test("after kill -9 of the daemon (ENOTCONN/ECONNABORTED), the next catalyzer mount replaces the dead mount")
    func mountsAgainAfterTheDaemonIsKilled() throws {
        try Self.requireMounting()
        let scene = try Scene("killed")
        defer { scene.cleanUp() }
        let exported = try scene.createImage("fn")

        let mountpoint = try scene.mount()
        let daemons = scene.daemonPIDs()
        try #require(daemons.count == 1, "one daemon: \(daemons)")
        kill(daemons[0], SIGKILL)
        #expect(scene.waitForDaemonsToExit())
        var info = stat()
        let status = stat(mountpoint + "/.stats", &info)
        let code = errno
        #expect(status != 0 && (code == ENOTCONN || code == ECONNABORTED), "a dead FUSE mount fails requests, got errno \(code)")
        let dead = Self.error { try CatalyzerMount.existing(at: mountpoint, store: scene.store) }
        #expect(dead?.description.contains("does not answer") == true && dead?.description.contains("umount -l \(mountpoint)") == true,
                "\(String(describing: dead))")

        #expect(try scene.mount() == mountpoint)
        #expect(scene.mounts().count == 1, "the dead mount is gone, one live mount: \(scene.mounts())")
        let replacement = scene.daemonPIDs()
        #expect(replacement.count == 1 && replacement != daemons, "a new daemon: \(replacement)")
        #expect(try Self.read(mountpoint + "/fn/memory") == Self.read(exported))
    }

    @Test("catalyzer mount --unmount unmounts, and is fine when nothing is mounted")
    func unmountOptionUnmounts() throws {
        try Self.requireMounting()
        let scene = try Scene("unmount")
        defer { scene.cleanUp() }
        try scene.createImage("fn")

        _ = try scene.mount()
        let unmounted = try scene.catalyzer(["mount", "--unmount", "--store", scene.store.root])
        #expect(unmounted.status == 0 && unmounted.stdout.isEmpty, "\(unmounted)")
        #expect(scene.mounts().isEmpty)
        #expect(scene.waitForDaemonsToExit(), "the daemon exits once unmounted")
        let again = try scene.catalyzer(["mount", "--unmount", "--store", scene.store.root])
        #expect(again.status == 0, "\(again)")
    }

    @Test("paths with spaces and backslashes (escaped in mountinfo) are recognised")
    func escapedPaths() throws {
        try Self.requireMounting()
        let scene = try Scene("odd name\\ with spaces")
        defer { scene.cleanUp() }
        let exported = try scene.createImage("fn")

        let mountpoint = try scene.mount()
        #expect(mountpoint == scene.expectedMountpoint)
        #expect(scene.mounts().map(\.source) == [scene.store.root])
        #expect(try scene.mount() == mountpoint, "reused, not mounted again")
        #expect(scene.daemonPIDs().count == 1)
        let mount = try CatalyzerMount.existing(at: mountpoint, store: scene.store)
        #expect(try Self.read(mount.memoryPath("fn")) == Self.read(exported))
    }

    @Test("a daemon that is missing or fails is a clear error and leaves nothing mounted")
    func daemonFailuresAreClearErrors() throws {
        try Self.requireMounting()
        let scene = try Scene("daemon")
        defer { scene.cleanUp() }
        try scene.createImage("fn")
        let arguments = ["mount", "--store", scene.store.root]

        let missing = try Command.run(Command.binary("catalyzer"), arguments,
                                      environment: scene.environment.merging(["CATALYZERFS_BIN": scene.root + "/nothing"]) { $1 })
        #expect(missing.status == 1 && missing.stderr.contains("CATALYZERFS_BIN is \(scene.root)/nothing, which is not an executable"), "\(missing)")

        let failing = try Command.run(Command.binary("catalyzer"), arguments,
                                      environment: scene.environment.merging(["CATALYZERFS_BIN": "/bin/false"]) { $1 })
        #expect(failing.status == 1, "\(failing)")
        #expect(failing.stderr.contains("/bin/false exited with status 1 instead of mounting the store"), "\(failing)")
        #expect(failing.stderr.contains("its log: \(scene.expectedMountpoint).log"), "\(failing)")
        #expect(scene.mounts().isEmpty)

        #expect(try scene.mount() == scene.expectedMountpoint, "the real daemon mounts afterwards")
    }

    @Test("a missing store is a clear error and mounts nothing")
    func missingStoreIsAClearError() throws {
        try Self.requireMounting()
        let scene = try Scene("missing")
        defer { scene.cleanUp() }
        let absent = scene.root + "/absent"

        let result = try scene.catalyzer(["mount", "--store", absent])
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr.contains("catalyzer: error: no image store at \(absent)"), "\(result)")
        #expect(result.stderr.contains("catalyzer image create --store \(absent)"), "\(result)")
        #expect(!FileManager.default.fileExists(atPath: scene.runDirectory), "nothing made in the run directory")
        #expect(throws: MountError.storeMissing(store: absent)) {
            try CatalyzerMount.managed(store: ImageStore(root: absent), runDirectory: scene.runDirectory)
        }
    }

    @Test("existing(at:) accepts a catalyzerfs mount of the store and rejects anything else")
    func existingChecksTheMount() throws {
        try Self.requireMounting()
        let scene = try Scene("existing")
        defer { scene.cleanUp() }
        try scene.createImage("fn")
        let other = try Scene("existing-other")
        defer { other.cleanUp() }
        try other.createImage("fn")
        let mountpoint = try scene.mount()

        let mount = try CatalyzerMount.existing(at: mountpoint, store: scene.store)
        #expect(mount.mountpoint == mountpoint && mount.storeRoot == scene.store.root && !mount.isManaged)
        #expect(FileManager.default.fileExists(atPath: mount.memoryPath("fn")))
        #expect(FileManager.default.fileExists(atPath: mount.statsPath))

        let plain = scene.root + "/plain"
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: false)
        let notAMount = Self.error { try CatalyzerMount.existing(at: plain, store: scene.store) }
        #expect(notAMount == .notAMount(path: plain, store: scene.store.root))
        #expect(notAMount?.description.contains("\(plain) is not a mount point") == true, "\(String(describing: notAMount))")

        let wrongStore = Self.error { try CatalyzerMount.existing(at: mountpoint, store: other.store) }
        #expect(wrongStore == .servesOtherStore(path: mountpoint, served: scene.store.root, expected: other.store.root))
        #expect(wrongStore?.description.contains("serves the store \(scene.store.root), not \(other.store.root)") == true)
        #expect(wrongStore?.description.contains("pass --store \(scene.store.root)") == true)

        #expect(Self.error { try CatalyzerMount.existing(at: "/proc", store: scene.store) }
                == .notCatalyzerFS(path: "/proc", fsType: "proc", store: scene.store.root))
        #expect(Self.error { try CatalyzerMount.existing(at: plain + "/nowhere", store: scene.store) }
                == .mountDirectoryMissing(path: plain + "/nowhere"))
    }

    @Test("managed() on a healthy mount takes no lock: it returns while another process holds the mount lock")
    func fastPathTakesNoLock() throws {
        try Self.requireMounting()
        let scene = try Scene("fast")
        defer { scene.cleanUp() }
        try scene.createImage("fn")
        let mountpoint = try scene.mount()
        let mountIDs = scene.mounts().map(\.mountID)
        let storeRoot = try #require(realpath(scene.store.root, nil).map { String(cString: $0) })
        let lockPath = ManagedMountLocation(storeRoot: storeRoot, runDirectory: scene.runDirectory).lockPath
        let lock = open(lockPath, O_RDWR | O_CLOEXEC)
        try #require(lock >= 0 && flock(lock, LOCK_EX) == 0, "cannot take \(lockPath)")
        defer { close(lock) }

        let found = Mutex<String?>(nil)
        let done = DispatchSemaphore(value: 0)
        let (store, runDirectory) = (scene.store, scene.runDirectory)
        Thread.detachNewThread {
            let mount = try? CatalyzerMount.managed(store: store, runDirectory: runDirectory)
            found.withLock { $0 = mount?.mountpoint }
            done.signal()
        }
        let finished = done.wait(timeout: .now() + 20) == .success
        flock(lock, LOCK_UN)
        if !finished { done.wait() }
        #expect(finished, "managed() waited for the mount lock although the mount was healthy")
        #expect(found.withLock { $0 } == mountpoint)
        #expect(scene.mounts().map(\.mountID) == mountIDs, "no new mount")
    }

    // MARK: Helpers

    static func requireMounting() throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (to mount FUSE filesystems)")))
        try #require(TestEnvironment.hasFUSE, Comment(rawValue: TestEnvironment.requirementMessage("/dev/fuse")))
    }

    static func read(_ path: String) throws -> Data {
        try Data(contentsOf: URL(fileURLWithPath: path))
    }

    /// The MountError `body` throws, nil if it throws none (or another error).
    static func error(_ body: () throws -> CatalyzerMount) -> MountError? {
        do {
            _ = try body()
            return nil
        } catch {
            return error as? MountError
        }
    }

    /// A store with images and a private run directory, both in a fresh temporary directory.
    /// Always call `cleanUp()` (in a `defer`): it unmounts whatever the test mounted.
    struct Scene: Sendable {
        let directory: TemporaryDirectory
        /// The directory's canonical path, as mountinfo shows paths.
        let root: String
        let store: ImageStore
        let runDirectory: String

        init(_ label: String) throws {
            directory = try TemporaryDirectory("mount-\(label)")
            root = URL(fileURLWithPath: directory.path).resolvingSymlinksInPath().path
            store = ImageStore(root: root + "/store")
            runDirectory = root + "/run"
        }

        /// The run directory as the CLI sees it: the test's, never the machine's /run/catalyzer.
        var environment: [String: String] { ["CATALYZER_RUN_DIR": runDirectory] }

        /// `RUN/mounts/` + 16 hex digits of the sha256 of the store's path.
        var expectedMountpoint: String {
            runDirectory + "/mounts/" + Digest(of: Array(store.root.utf8)).hex.prefix(16)
        }

        func catalyzer(_ arguments: [String]) throws -> CommandResult {
            try Command.run(Command.binary("catalyzer"), arguments, environment: environment)
        }

        /// Creates image `name` with `catalyzer image create` from random and all-zero chunks;
        /// returns the path of its `catalyzer image export`.
        @discardableResult
        func createImage(_ name: String) throws -> String {
            var memory = [UInt8](repeating: 0, count: 1_000_000 + 4321)
            for index in memory.indices where (index / 65536) % 3 != 2 { memory[index] = UInt8.random(in: 0...255) }
            let raw = root + "/\(name).raw"
            try Data(memory).write(to: URL(fileURLWithPath: raw))
            let created = try catalyzer(["image", "create", "--store", store.root, "--from", raw, "--name", name, "--chunk-size", "64K"])
            try #require(created.status == 0, "catalyzer image create: \(created)")
            let exported = root + "/\(name).export"
            let export = try catalyzer(["image", "export", name, exported, "--store", store.root])
            try #require(export.status == 0, "catalyzer image export: \(export)")
            return exported
        }

        /// `catalyzer mount`, which must succeed; the printed mountpoint.
        func mount() throws -> String {
            let result = try catalyzer(["mount", "--store", store.root])
            try #require(result.status == 0, "catalyzer mount: \(result)")
            return result.stdout.trimmingCharacters(in: .newlines)
        }

        /// The mounts stacked on the expected mountpoint.
        func mounts() -> [MountInfoTable.Entry] { MountInfoTable.entries(at: expectedMountpoint) }

        /// The live catalyzerfs daemons serving the expected mountpoint, by their command line.
        func daemonPIDs() -> [Int32] {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            return entries.compactMap(Int32.init).sorted().filter { pid in
                guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
                let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
                return arguments.first?.hasSuffix("catalyzerfs") == true && arguments.contains(expectedMountpoint)
            }
        }

        /// Waits up to 10 s for every daemon of the mountpoint to exit; true if they did.
        func waitForDaemonsToExit() -> Bool {
            for _ in 0..<200 {
                if daemonPIDs().isEmpty { return true }
                usleep(50_000)
            }
            return false
        }

        /// Unmounts everything on the mountpoint (lazily if busy), waits for the daemons, and
        /// removes the directory.
        func cleanUp() {
            while !mounts().isEmpty {
                guard umount2(expectedMountpoint, 0) == 0 || umount2(expectedMountpoint, Int32(MNT_DETACH)) == 0 else { break }
            }
            _ = waitForDaemonsToExit()
            directory.remove()
        }
    }
}
