import CatalyzerTestSupport
import Foundation
import Testing
@testable import CatalyzerImage

@Suite struct StoreTests {
    @Test func layoutIsAnOCIImageLayout() throws {
        let dir = try TemporaryDirectory("layout")
        defer { dir.remove() }
        try Fixtures.write(try Fixtures.zeroHeavy(1 << 20), to: dir.file("m"))
        let store = ImageStore(root: dir.file("store"))
        _ = try store.createImage(named: "fn", fromFile: dir.file("m"))
        let layout = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: store.layoutPath))) as? [String: String]
        #expect(layout == ["imageLayoutVersion": "1.0.0"])
        let index = try JSONDecoder().decode(OCIIndex.self, from: Data(contentsOf: URL(fileURLWithPath: store.indexPath)))
        #expect(index.schemaVersion == 2)
        #expect(index.manifests.count == 1)
        #expect(index.manifests[0].annotations?[OCIIndex.refNameAnnotation] == "fn")
        // Every blob file is named by the sha256 of its content.
        for file in try FileManager.default.contentsOfDirectory(atPath: store.blobsDirectory) {
            let bytes = try Fixtures.read(store.blobsDirectory + "/" + file)
            #expect(Digest(of: bytes).hex == file)
        }
    }

    @Test func recreatingANameReplacesItAndGCFreesTheOldBlobs() throws {
        let dir = try TemporaryDirectory("replace")
        defer { dir.remove() }
        try Fixtures.write(try Fixtures.random(256 << 10), to: dir.file("one"))
        try Fixtures.write(try Fixtures.random(256 << 10), to: dir.file("two"))
        let store = ImageStore(root: dir.file("store"))
        _ = try store.createImage(named: "fn", fromFile: dir.file("one"))
        _ = try store.createImage(named: "fn", fromFile: dir.file("two"))
        #expect(try store.names() == ["fn"])
        let dumped = dir.file("out")
        try store.open("fn").export(to: dumped)
        #expect(try Fixtures.read(dumped) == Fixtures.read(dir.file("two")))

        let report = try store.gc()
        #expect(report.blobsRemoved == 3, "old chunk, config and manifest")
        #expect(report.bytesRemoved >= 256 << 10)
        #expect(try store.verify("fn").ok)
        try store.remove("fn")
        #expect(try store.names().isEmpty)
        #expect(try store.gc().blobsKept == 0)
    }

    @Test func gcRemovesLeftoversOfInterruptedWrites() throws {
        let dir = try TemporaryDirectory("leftovers")
        defer { dir.remove() }
        try Fixtures.write(try Fixtures.zeroHeavy(1 << 20), to: dir.file("m"))
        let store = ImageStore(root: dir.file("store"))
        _ = try store.createImage(named: "keep", fromFile: dir.file("m"))
        // What a killed create leaves: a temporary file and a complete but unnamed blob.
        try Fixtures.write(Array("partial".utf8), to: store.ingestDirectory + "/tmp-1-2")
        let orphan = try store.storeBlob(Array("orphan chunk".utf8)).digest
        #expect(try store.names() == ["keep"])
        let report = try store.gc()
        #expect(report.temporaryFilesRemoved == 1)
        #expect(report.blobsRemoved == 1)
        #expect(!FileManager.default.fileExists(atPath: store.blobPath(orphan)))
        #expect(try store.verify("keep").ok)
    }

    @Test func settingTheWorkingSetKeepsEveryBlob() throws {
        let dir = try TemporaryDirectory("workingset")
        defer { dir.remove() }
        try Fixtures.write(try Fixtures.random(1 << 20), to: dir.file("m"))
        let store = ImageStore(root: dir.file("store"))
        var options = ImageCreateOptions()
        options.chunkSize = 64 << 10
        let created = try store.createImage(named: "fn", fromFile: dir.file("m"), options: options)
        let chunksBefore = try store.open("fn").config.chunks
        let updated = try store.setWorkingSet("fn", chunks: [7, 1, 15])
        #expect(updated != created.manifestDigest)
        let image = try store.open("fn")
        #expect(image.config.workingSet == [7, 1, 15])
        #expect(image.config.chunks == chunksBefore)
        // Only the old config and manifest become garbage.
        #expect(try store.gc().blobsRemoved == 2)
        #expect(try store.verify("fn").ok)
        #expect(throws: ImageError.self) { try store.setWorkingSet("fn", chunks: [16]) }
    }

    /// A create killed mid-stream leaves no name and nothing gc cannot remove.
    @Test func killedCreateLeavesNoImage() throws {
        let dir = try TemporaryDirectory("killed")
        defer { dir.remove() }
        let store = dir.file("store")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Command.binary("catalyzer"))
        process.arguments = ["image", "create", "--store", store, "--from", "-", "--name", "half", "--chunk-size", "64K"]
        let input = Pipe()
        process.standardInput = input
        try process.run()
        input.fileHandleForWriting.write(Data(try Fixtures.random(6 << 20)))
        // Let it store some chunk blobs, then kill it while it waits for the rest of its input.
        var blobs: [String] = []
        for _ in 0..<200 where blobs.count < 10 {
            usleep(10_000)
            blobs = (try? FileManager.default.contentsOfDirectory(atPath: store + "/blobs/sha256")) ?? []
        }
        #expect(blobs.count >= 10, "the create stored no blobs before it was killed")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(try ImageStore(root: store).names().isEmpty)
        let collected = try ImageStore(root: store).gc()
        #expect(collected.blobsRemoved >= 10 && collected.blobsKept == 0)
    }

    @Test func concurrentCreatesAndGCNeverLoseABlob() throws {
        let dir = try TemporaryDirectory("concurrent")
        defer { dir.remove() }
        let store = dir.file("store")
        for n in 0..<4 { try Fixtures.write(try Fixtures.zeroHeavy((2 + n) << 20), to: dir.file("m\(n)")) }
        let results = UnsafeMutableBufferPointer<Int32>.allocate(capacity: 8)
        defer { results.deallocate() }
        let shared = UncheckedSendable(results)
        DispatchQueue.concurrentPerform(iterations: 8) { n in
            let arguments = n % 2 == 0
                ? ["image", "create", "--store", store, "--from", dir.file("m\(n / 2)"), "--name", "img\(n / 2)", "--chunk-size", "64K"]
                : ["image", "gc", "--store", store]
            shared.value[n] = (try? Command.catalyzer(arguments).status) ?? -1
        }
        #expect(Array(results) == [Int32](repeating: 0, count: 8))
        let verified = try Command.catalyzer(["image", "verify", "--store", store, "--all"])
        #expect(verified.status == 0, "\(verified)")
        #expect(try ImageStore(root: store).names() == ["img0", "img1", "img2", "img3"])
    }

    /// skopeo, a client no one here wrote, reads the store as an OCI layout and copies an image
    /// into another layout, which catalyzer then verifies and exports byte for byte.
    @Test func skopeoCopiesAnImageBetweenLayouts() throws {
        let dir = try TemporaryDirectory("skopeo")
        defer { dir.remove() }
        try Fixtures.write(try Fixtures.zeroHeavy(3 << 20), to: dir.file("m"))
        _ = try ImageStore(root: dir.file("a")).createImage(named: "fn", fromFile: dir.file("m"))
        let inspected = try Command.run("skopeo", ["inspect", "--raw", "oci:\(dir.file("a")):fn"])
        #expect(inspected.status == 0 && inspected.stdout.contains(MediaType.imageArtifact), "\(inspected) (bootstrap installs skopeo)")
        let copied = try Command.run("skopeo", ["copy", "oci:\(dir.file("a")):fn", "oci:\(dir.file("b")):copy"])
        #expect(copied.status == 0, "\(copied)")
        let verified = try Command.catalyzer(["image", "verify", "--store", dir.file("b"), "copy"])
        #expect(verified.status == 0, "\(verified)")
        try ImageStore(root: dir.file("b")).open("copy").export(to: dir.file("out"))
        #expect(try Fixtures.read(dir.file("out")) == Fixtures.read(dir.file("m")))
    }

    @Test func listingAMissingStoreIsEmpty() throws {
        let dir = try TemporaryDirectory("missing")
        defer { dir.remove() }
        let result = try Command.catalyzer(["image", "ls", "--store", dir.file("nothing-here"), "--json"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[\n\n]" || result.stdout.contains("[]"), "\(result)")
    }

    @Test func everyCommandHasHelp() throws {
        for command in [[], ["image"], ["image", "create"], ["image", "ls"], ["image", "inspect"], ["image", "verify"],
                        ["image", "rm"], ["image", "gc"], ["image", "export"], ["bench", "image"]] {
            let result = try Command.catalyzer(command + ["--help"])
            #expect(result.status == 0 && result.stdout.contains("USAGE"), "\(command): \(result)")
        }
    }
}
