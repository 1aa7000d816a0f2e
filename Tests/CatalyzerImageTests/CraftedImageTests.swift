import CatalyzerTestSupport
import Foundation
import Glibc
import Testing
@testable import CatalyzerImage

/// Images crafted by an attacker with write access to a store (or a registry): manifests and
/// digests valid, content hostile. Each gives `catalyzer: error: ...` naming the image and what
/// to do, exits 1 within a bounded time, and leaves the other images usable. Every command runs
/// under `timeout -s KILL`, so a regression that hangs fails here instead of hanging the suite.
@Suite struct CraftedImageTests {
    typealias Scene = BadInputTests.Scene

    /// Seconds any one command may take: each finishes in well under one.
    static let bound = 20

    static func run(_ scene: Scene, _ arguments: [String]) throws -> CommandResult {
        try Command.bounded(bound, Command.binary("catalyzer"), arguments + ["--store", scene.root])
    }

    /// Exit 1 (not a crash, not the timeout's 137), `catalyzer: error:` and every fragment.
    static func expectError(_ scene: Scene, _ arguments: [String], saying fragments: [String],
                            sourceLocation: SourceLocation = #_sourceLocation) throws {
        let result = try run(scene, arguments)
        #expect(result.status == 1, "\(arguments): \(result)", sourceLocation: sourceLocation)
        #expect(result.stderr.contains("catalyzer: error: "), "\(arguments): \(result)", sourceLocation: sourceLocation)
        for fragment in fragments {
            #expect(result.stderr.contains(fragment), "\(arguments): stderr lacks '\(fragment)': \(result)", sourceLocation: sourceLocation)
        }
    }

    /// `image ls` still lists both images, says the victim is damaged (and why, on stderr), and
    /// the bystander still verifies and exports.
    static func expectOthersUsable(_ scene: Scene, victimSaying fragment: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let listed = try run(scene, ["image", "ls"])
        #expect(listed.status == 0, "\(listed)", sourceLocation: sourceLocation)
        #expect(listed.stdout.contains("bystander") && listed.stdout.contains("victim"), "\(listed)", sourceLocation: sourceLocation)
        #expect(listed.stdout.contains("damaged: run `catalyzer image verify victim`"), "\(listed)", sourceLocation: sourceLocation)
        #expect(listed.stderr.contains("catalyzer: warning: image 'victim'") && listed.stderr.contains(fragment),
                "\(listed)", sourceLocation: sourceLocation)
        let verified = try run(scene, ["image", "verify", "bystander"])
        #expect(verified.status == 0 && verified.stdout.contains("bystander: ok"), "\(verified)", sourceLocation: sourceLocation)
        #expect(try run(scene, ["image", "export", "bystander", scene.dir.file("bystander.out")]).status == 0, sourceLocation: sourceLocation)
        #expect(try Fixtures.read(scene.dir.file("bystander.out")) == Fixtures.read(scene.dir.file("bystander.mem")),
                sourceLocation: sourceLocation)
    }

    @Test("a chunk table entry with index 2^62: an error naming it, not an overflow")
    func chunkIndexTwoToThe62() throws {
        let scene = try Scene()
        defer { scene.dir.remove() }
        try StoreSurgery.editConfig(scene.store, "victim") { config in
            var chunks = config["chunks"] as! [[String: Any]]
            chunks[chunks.count - 1]["index"] = 1 << 62
            config["chunks"] = chunks
        }
        for command in [["image", "inspect", "victim"], ["image", "verify", "victim"], ["image", "export", "victim", scene.dir.file("out")]] {
            try Self.expectError(scene, command, saying: ["image 'victim'", "names chunk 4611686018427387904, past the memory size"])
        }
        try Self.expectOthersUsable(scene, victimSaying: "4611686018427387904")
    }

    @Test("a memory size of 2^60: refused before anything is sized by it")
    func memorySizeTwoToThe60() throws {
        let scene = try Scene()
        defer { scene.dir.remove() }
        try StoreSurgery.editConfig(scene.store, "victim") { $0["memorySize"] = 1 << 60 }
        for command in [["image", "inspect", "victim"], ["image", "verify", "victim"], ["image", "export", "victim", "-"]] {
            try Self.expectError(scene, command, saying: ["image 'victim'", "memory size 1152921504606846976 is more than"])
        }
        try Self.expectOthersUsable(scene, victimSaying: "1152921504606846976")
    }

    @Test("a state blob size beyond what the memory allows is refused before it sizes a buffer")
    func oversizedStateDescriptor() throws {
        let scene = try Scene()
        defer { scene.dir.remove() }
        try StoreSurgery.editConfig(scene.store, "victim") { config in
            var state = config["state"] as! [String: Any]
            state["size"] = 1 << 50
            config["state"] = state
        }
        try Self.expectError(scene, ["image", "verify", "victim"], saying: ["image 'victim'", "state blob size 1125899906842624 is implausible"])
        try Self.expectOthersUsable(scene, victimSaying: "implausible")
    }

    @Test("a chunk blob that is a FIFO: verify and export fail at once, naming it")
    func chunkBlobIsAFIFO() throws {
        let scene = try Scene()
        defer { scene.dir.remove() }
        let path = try StoreSurgery.chunkBlobPath(scene.store, "victim", chunk: 1)
        try StoreSurgery.replaceWithFIFO(path)
        let started = Date()
        try Self.expectError(scene, ["image", "verify", "victim"], saying: ["image 'victim'", "chunk 1 blob", "is a FIFO, not a regular file", path])
        try Self.expectError(scene, ["image", "export", "victim", scene.dir.file("out")], saying: ["chunk 1 blob", "is a FIFO"])
        #expect(Date().timeIntervalSince(started) < 10)
        // The image opens (its manifest and config are fine), so ls lists it normally.
        let listed = try Self.run(scene, ["image", "ls"])
        #expect(listed.status == 0 && listed.stdout.contains("bystander"), "\(listed)")
        #expect(try Self.run(scene, ["image", "verify", "bystander"]).status == 0)
    }

    @Test("a state blob that is a FIFO, or a symbolic link, is not read")
    func stateBlobIsNotARegularFile() throws {
        let scene = try Scene()
        defer { scene.dir.remove() }
        let image = try scene.store.open("victim")
        let path = scene.store.blobPath(image.config.state.digest)
        try StoreSurgery.replaceWithFIFO(path)
        try Self.expectError(scene, ["image", "verify", "victim"], saying: ["image 'victim'", "state blob", "is a FIFO, not a regular file"])
        // A link to a file outside the store with the right content is refused all the same.
        unlink(path)
        try Fixtures.write([], to: scene.dir.file("outside"))
        #expect(symlink(scene.dir.file("outside"), path) == 0)
        try Self.expectError(scene, ["image", "verify", "victim"], saying: ["state blob", "is a symbolic link"])
        // (The bystander shares the empty state blob, so it is damaged too: not checked here.)
    }

    @Test("an index.json that is a FIFO: an error, not a hang")
    func indexIsAFIFO() throws {
        let scene = try Scene()
        defer { scene.dir.remove() }
        try StoreSurgery.replaceWithFIFO(scene.root + "/index.json")
        try Self.expectError(scene, ["image", "ls"], saying: ["index.json is a FIFO, not a regular file"])
    }

    @Test("directories and FIFOs inside blobs/ are left alone and named by gc, which still collects garbage")
    func gcWithForeignEntriesInBlobs() throws {
        let scene = try Scene()
        defer { scene.dir.remove() }
        let blobs = scene.root + "/blobs/sha256"
        let directory = blobs + "/" + String(repeating: "ab", count: 32)
        #expect(mkdir(directory, 0o700) == 0)
        try Fixtures.write([1, 2, 3], to: directory + "/inside")
        #expect(mkfifo(blobs + "/not-a-blob", 0o600) == 0)
        let orphan = try scene.store.storeBlob(Array("garbage".utf8)).digest

        let result = try Self.run(scene, ["image", "gc"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stderr.contains("catalyzer: warning: \(directory) (a directory) is not a blob"), "\(result)")
        #expect(result.stderr.contains("not-a-blob (a FIFO) is not a blob"), "\(result)")
        #expect(result.stdout.contains("removed 1 blobs"), "\(result)")
        #expect(!FileManager.default.fileExists(atPath: scene.store.blobPath(orphan)))
        #expect(FileManager.default.fileExists(atPath: directory + "/inside"), "gc must not delete what it did not write")
        #expect(try Self.run(scene, ["image", "verify", "victim", "bystander"]).status == 0)
    }

    // MARK: Who may read what

    @Test("a new store is private: directories 0700, files 0600")
    func newStoreIsPrivate() throws {
        let scene = try Scene()
        defer { scene.dir.remove() }
        var files = 0
        for path in [scene.root] + (FileManager.default.enumerator(atPath: scene.root)?.allObjects as? [String] ?? []).map({ scene.root + "/" + $0 }) {
            var info = stat()
            #expect(lstat(path, &info) == 0)
            let mode = info.st_mode & 0o777
            if info.st_mode & S_IFMT == S_IFDIR {
                #expect(mode == 0o700, "\(path) has mode \(String(mode, radix: 8))")
            } else {
                #expect(mode == 0o600, "\(path) has mode \(String(mode, radix: 8))")
                files += 1
            }
        }
        #expect(files > 5)
        let listed = try Self.run(scene, ["image", "ls"])
        #expect(listed.status == 0 && !listed.stderr.contains("warning"), "\(listed)")
    }

    @Test("a store others can read is warned about on every command, with the fix")
    func readableStoreIsWarnedAbout() throws {
        let scene = try Scene()
        defer { scene.dir.remove() }
        #expect(chmod(scene.root, 0o755) == 0)
        let listed = try Self.run(scene, ["image", "ls"])
        #expect(listed.status == 0, "\(listed)")
        #expect(listed.stderr.contains("catalyzer: warning: the image store \(scene.root) can be read by every user on this host (mode 755)"), "\(listed)")
        #expect(listed.stderr.contains("chmod -R go= \(scene.root)"), "\(listed)")
        #expect(chmod(scene.root, 0o750) == 0)
        let verified = try Self.run(scene, ["image", "verify", "bystander"])
        #expect(verified.status == 0 && verified.stderr.contains("can be read by the members of its group"), "\(verified)")
    }

    @Test("another user is told the store is private, not that it is missing or empty")
    func otherUserIsDeniedWithAReason() throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (to run a command as nobody)")))
        let scene = try Scene()
        defer { scene.dir.remove() }
        // The temporary directory above the store must be passable for the store's own mode to matter.
        #expect(chmod(scene.dir.path, 0o755) == 0)
        let result = try Command.bounded(Self.bound, "setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                                                 Command.binary("catalyzer"), "image", "ls", "--store", scene.root])
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr.contains("catalyzer: error: permission denied on the image store at \(scene.root)"), "\(result)")
    }
}
