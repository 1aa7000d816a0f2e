import CatalyzerTestSupport
import Foundation
import Testing
@testable import CatalyzerImage

/// Damaged stores and hostile manifests: each gives a specific error naming image and blob, a
/// non-zero exit, and leaves every other image intact and the name list free of partial images.
@Suite struct BadInputTests {
    /// A store with two images: `victim` (damaged by each test) and `bystander` (must survive).
    struct Scene {
        let dir: TemporaryDirectory
        let store: ImageStore
        var root: String { store.root }

        init() throws {
            dir = try TemporaryDirectory("bad")
            store = ImageStore(root: dir.file("store"))
            var options = ImageCreateOptions()
            options.chunkSize = 64 << 10
            try Fixtures.write(try Fixtures.random(5 * 65536 + 100), to: dir.file("victim.mem"))
            try Fixtures.write(try Fixtures.zeroHeavy(2 << 20), to: dir.file("bystander.mem"))
            _ = try store.createImage(named: "victim", fromFile: dir.file("victim.mem"), options: options)
            _ = try store.createImage(named: "bystander", fromFile: dir.file("bystander.mem"), options: options)
        }

        func catalyzer(_ arguments: [String]) throws -> CommandResult {
            try Command.catalyzer(arguments + ["--store", root])
        }

        /// The command fails with status 1, and its stderr says `fragments`.
        func expectFailure(_ arguments: [String], saying fragments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
            let result = try catalyzer(arguments)
            #expect(result.status == 1, "\(arguments): \(result)", sourceLocation: sourceLocation)
            for fragment in fragments {
                #expect(result.stderr.contains(fragment), "\(arguments): stderr lacks '\(fragment)': \(result)", sourceLocation: sourceLocation)
            }
        }

        /// The bystander still verifies, and `ls` lists exactly the two names.
        func expectStoreConsistent(sourceLocation: SourceLocation = #_sourceLocation) throws {
            let verified = try catalyzer(["image", "verify", "bystander"])
            #expect(verified.status == 0 && verified.stdout.contains("bystander: ok"), "\(verified)", sourceLocation: sourceLocation)
            #expect(try store.names() == ["bystander", "victim"], sourceLocation: sourceLocation)
            dir.remove()
        }
    }

    @Test func flippedByteInAChunkBlob() throws {
        let scene = try Scene()
        let path = try StoreSurgery.chunkBlobPath(scene.store, "victim", chunk: 2)
        var bytes = try Fixtures.read(path)
        bytes[bytes.count / 2] ^= 0x01
        try Fixtures.write(bytes, to: path)
        let digest = "sha256:" + URL(fileURLWithPath: path).lastPathComponent
        try scene.expectFailure(["image", "verify", "victim"], saying: ["image 'victim'", "chunk 2", digest, "corrupt"])
        try scene.expectFailure(["image", "export", "victim", scene.dir.file("out")], saying: ["chunk 2", "corrupt"])
        #expect(!FileManager.default.fileExists(atPath: scene.dir.file("out")), "a failed export left a partial file")
        try scene.expectStoreConsistent()
    }

    @Test func truncatedChunkBlob() throws {
        let scene = try Scene()
        let path = try StoreSurgery.chunkBlobPath(scene.store, "victim", chunk: 0)
        #expect(truncate(path, 1000) == 0)
        try scene.expectFailure(["image", "verify", "victim"], saying: ["image 'victim'", "chunk 0", "has 1000 bytes, expected 65536"])
        try scene.expectStoreConsistent()
    }

    @Test func missingChunkBlob() throws {
        let scene = try Scene()
        let path = try StoreSurgery.chunkBlobPath(scene.store, "victim", chunk: 4)
        #expect(unlink(path) == 0)
        try scene.expectFailure(["image", "verify", "victim"], saying: ["image 'victim'", "chunk 4", "is missing"])
        try scene.expectFailure(["image", "export", "victim", scene.dir.file("out")], saying: ["chunk 4", "is missing"])
        try scene.expectStoreConsistent()
    }

    @Test func missingManifestBlob() throws {
        let scene = try Scene()
        let digest = try scene.store.manifestDescriptor(named: "victim").digest
        #expect(unlink(scene.store.blobPath(digest)) == 0)
        try scene.expectFailure(["image", "inspect", "victim"], saying: ["image 'victim'", "manifest blob \(digest) is missing"])
        // gc refuses to run rather than guess which blobs are garbage.
        try scene.expectFailure(["image", "gc"], saying: ["without deleting anything", "victim"])
        try scene.expectStoreConsistent()
    }

    @Test func configWithWrongMediaType() throws {
        let scene = try Scene()
        try StoreSurgery.editManifest(scene.store, "victim") { $0.config.mediaType = "application/vnd.oci.image.config.v1+json" }
        try scene.expectFailure(["image", "inspect", "victim"], saying: ["image 'victim'", "application/vnd.oci.image.config.v1+json", "not a catalyzer image"])
        try scene.expectStoreConsistent()
    }

    @Test func manifestWithWrongMediaType() throws {
        let scene = try Scene()
        try StoreSurgery.editManifest(scene.store, "victim") { $0.mediaType = "application/vnd.docker.distribution.manifest.v2+json" }
        try scene.expectFailure(["image", "verify", "victim"], saying: ["image 'victim'", "media type 'application/vnd.docker.distribution.manifest.v2+json'"])
        try scene.expectStoreConsistent()
    }

    @Test func unknownFormatVersion() throws {
        let scene = try Scene()
        try StoreSurgery.editConfig(scene.store, "victim") { $0["formatVersion"] = 3 }
        try scene.expectFailure(["image", "inspect", "victim"], saying: ["image 'victim'", "format version 3 is not supported"])
        try scene.expectStoreConsistent()
    }

    @Test func unknownCodec() throws {
        let scene = try Scene()
        try StoreSurgery.editConfig(scene.store, "victim") { config in
            var chunks = config["chunks"] as! [[String: Any]]
            chunks[1]["codec"] = "xz"
            config["chunks"] = chunks
        }
        try scene.expectFailure(["image", "export", "victim", scene.dir.file("out")], saying: ["image 'victim'", "chunks[1].codec", "unknown codec 'xz'"])
        try scene.expectStoreConsistent()
    }

    @Test func overlappingChunkTable() throws {
        let scene = try Scene()
        try StoreSurgery.editConfig(scene.store, "victim") { config in
            var chunks = config["chunks"] as! [[String: Any]]
            chunks[2]["index"] = chunks[1]["index"]
            config["chunks"] = chunks
        }
        try scene.expectFailure(["image", "inspect", "victim"], saying: ["image 'victim'", "both claim chunk 1", "overlap"])
        try scene.expectStoreConsistent()
    }

    @Test func chunkTablePastMemorySize() throws {
        let scene = try Scene()
        try StoreSurgery.editConfig(scene.store, "victim") { config in
            var chunks = config["chunks"] as! [[String: Any]]
            chunks[chunks.count - 1]["index"] = 6
            config["chunks"] = chunks
        }
        try scene.expectFailure(["image", "verify", "victim"], saying: ["image 'victim'", "chunk 6", "past the memory size"])
        try scene.expectStoreConsistent()
    }

    @Test func chunkNotListedAsALayer() throws {
        let scene = try Scene()
        try StoreSurgery.editManifest(scene.store, "victim") { $0.layers.removeLast() }
        try scene.expectFailure(["image", "inspect", "victim"], saying: ["image 'victim'", "is not a layer of the manifest"])
        try scene.expectStoreConsistent()
    }

    @Test func unknownImageName() throws {
        let scene = try Scene()
        for command in [["image", "inspect", "nosuch"], ["image", "verify", "nosuch"], ["image", "rm", "nosuch"], ["image", "export", "nosuch", scene.dir.file("x")]] {
            try scene.expectFailure(command, saying: ["no image named 'nosuch'", scene.root])
        }
        try scene.expectFailure(["image", "inspect", "../etc"], saying: ["not a valid image name"])
        try scene.expectStoreConsistent()
    }

    @Test func emptyAndMissingInput() throws {
        let scene = try Scene()
        #expect(FileManager.default.createFile(atPath: scene.dir.file("empty"), contents: Data()))
        try scene.expectFailure(["image", "create", "--from", scene.dir.file("empty"), "--name", "e"], saying: ["is empty"])
        try scene.expectFailure(["image", "create", "--from", scene.dir.file("absent"), "--name", "e"], saying: ["absent", "No such file"])
        try scene.expectFailure(["image", "create", "--from", scene.dir.file("victim.mem"), "--name", "e", "--chunk-size", "3000"], saying: ["power of two"])
        try scene.expectStoreConsistent()
    }

    @Test func notAnImageStore() throws {
        let dir = try TemporaryDirectory("notastore")
        defer { dir.remove() }
        try Fixtures.write(Array("{}".utf8), to: dir.file("oci-layout"))
        let result = try Command.catalyzer(["image", "ls", "--store", dir.path])
        #expect(result.status == 1 && result.stderr.contains("not a usable image store"), "\(result)")
    }
}

/// Failures of the store's filesystem: read-only, and full. These need root to mount a tmpfs.
@Suite(.serialized) struct StoreFilesystemTests {
    /// Mounts a tmpfs of `size` at a new directory; the caller unmounts it.
    static func mountTmpfs(size: String) throws -> TemporaryDirectory {
        let dir = try TemporaryDirectory("tmpfs")
        let mounted = try Command.run("mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", dir.path])
        guard mounted.status == 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "mount tmpfs: \(mounted)"]) }
        return dir
    }

    static func unmount(_ dir: TemporaryDirectory) {
        _ = try? Command.run("umount", ["-l", dir.path])
        dir.remove()
    }

    @Test func storeNotWritable() throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (to mount a read-only tmpfs)")))
        let mount = try Self.mountTmpfs(size: "16M")
        defer { Self.unmount(mount) }
        let store = mount.file("store")
        let input = mount.file("m")
        try Fixtures.write(try Fixtures.zeroHeavy(1 << 20), to: input)
        #expect(try Command.catalyzer(["image", "create", "--store", store, "--from", input, "--name", "before"]).status == 0)
        #expect(try Command.run("mount", ["-o", "remount,ro", mount.path]).status == 0)

        let result = try Command.catalyzer(["image", "create", "--store", store, "--from", input, "--name", "after"])
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr.contains("image store at \(store) is not writable"), "\(result)")
        // Reading a read-only store works.
        let listed = try Command.catalyzer(["image", "ls", "--store", store])
        #expect(listed.status == 0 && listed.stdout.contains("before") && !listed.stdout.contains("after"), "\(listed)")
        #expect(try Command.catalyzer(["image", "verify", "--store", store, "--all"]).status == 0)
        let removed = try Command.catalyzer(["image", "rm", "--store", store, "before"])
        #expect(removed.status == 1 && removed.stderr.contains("not writable"), "\(removed)")
    }

    @Test func diskFullDuringCreate() throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (to mount a small tmpfs)")))
        let mount = try Self.mountTmpfs(size: "3M")
        defer { Self.unmount(mount) }
        let work = try TemporaryDirectory("diskfull")
        defer { work.remove() }
        let store = mount.file("store")
        try Fixtures.write(try Fixtures.random(512 << 10), to: work.file("small"))
        try Fixtures.write(try Fixtures.random(8 << 20), to: work.file("large"))
        #expect(try Command.catalyzer(["image", "create", "--store", store, "--from", work.file("small"), "--name", "small"]).status == 0)

        let result = try Command.catalyzer(["image", "create", "--store", store, "--from", work.file("large"), "--name", "large"])
        #expect(result.status == 1, "\(result)")
        #expect(result.stderr.contains("no space left"), "\(result)")
        #expect(result.stderr.contains("nothing was published"), "\(result)")

        let listed = try Command.catalyzer(["image", "ls", "--store", store, "--json"])
        #expect(listed.status == 0 && listed.stdout.contains("small") && !listed.stdout.contains("large"), "\(listed)")
        #expect(try Command.catalyzer(["image", "verify", "--store", store, "small"]).status == 0)
        // gc frees what the failed create wrote, and leaves nothing in ingest/.
        let collected = try Command.catalyzer(["image", "gc", "--store", store, "--json"])
        #expect(collected.status == 0, "\(collected)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: store + "/ingest").isEmpty)
        #expect(try Command.catalyzer(["image", "verify", "--store", store, "small"]).status == 0)
        // With the space back, the same create succeeds.
        #expect(try Command.catalyzer(["image", "rm", "--store", store, "small"]).status == 0)
        _ = try Command.catalyzer(["image", "gc", "--store", store])
        let retried = try Command.catalyzer(["image", "create", "--store", store, "--from", work.file("small"), "--name", "again", "--codec", "none"])
        #expect(retried.status == 0, "\(retried)")
    }
}
