import CatalyzerTestSupport
import Foundation
import Testing
@testable import CatalyzerImage

/// image create → export gives back the exact bytes, for every codec and kind of memory.
@Suite struct RoundTripTests {
    enum Content: String, CaseIterable { case random, zeroHeavy, pythonProcess }

    @Test(arguments: Codec.allCases, Content.allCases)
    func exportIsByteIdentical(codec: Codec, content: Content) throws {
        let dir = try TemporaryDirectory("roundtrip")
        defer { dir.remove() }
        let input = dir.file("input.mem")
        switch content {
        case .random: try Fixtures.write(try Fixtures.random(3 * 262_144 + 12345), to: input)
        case .zeroHeavy: try Fixtures.write(try Fixtures.zeroHeavy(16 << 20), to: input)
        case .pythonProcess: _ = try Fixtures.pythonMemory(in: dir).withCString { rename($0, input) }
        }
        let store = ImageStore(root: dir.file("store"))
        var options = ImageCreateOptions()
        options.codec = codec
        options.chunkSize = 64 << 10
        let report = try store.createImage(named: "img", fromFile: input, options: options)
        let original = try Fixtures.read(input)
        #expect(report.memorySize == Int64(original.count))
        if content == .zeroHeavy { #expect(report.zeroChunks > report.chunkCount / 2) }
        if content == .random { #expect(report.zeroChunks == 0) }

        try store.open("img").export(to: dir.file("export.mem"))
        let exported = try Fixtures.read(dir.file("export.mem"))
        #expect(exported.count == original.count)
        #expect(exported == original)
        #expect(try store.verify("img").ok)
    }

    @Test func cliCreateInspectExportRoundTrip() throws {
        let dir = try TemporaryDirectory("cli")
        defer { dir.remove() }
        let input = dir.file("input.mem")
        try Fixtures.write(try Fixtures.zeroHeavy(5 << 20), to: input)
        let store = dir.file("store")

        let created = try Command.catalyzer(["image", "create", "--store", store, "--from", input, "--name", "fn", "--codec", "lz4", "--chunk-size", "128K", "--json"])
        #expect(created.status == 0, "\(created)")
        let report = try JSONDecoder().decode(ImageCreateReport.self, from: Data(created.stdout.utf8))
        #expect(report.chunkSize == 131_072 && report.codec == .lz4 && report.memorySize == 5 << 20)

        let listed = try Command.catalyzer(["image", "ls", "--store", store])
        #expect(listed.status == 0 && listed.stdout.contains("fn") && listed.stdout.contains("lz4"), "\(listed)")

        let inspected = try Command.catalyzer(["image", "inspect", "--store", store, "fn", "--json"])
        #expect(inspected.status == 0, "\(inspected)")
        let json = try JSONSerialization.jsonObject(with: Data(inspected.stdout.utf8)) as? [String: Any]
        let config = json?["config"] as? [String: Any]
        #expect(config?["memorySize"] as? Int == 5 << 20)
        #expect(config?["chunkSize"] as? Int == 131_072)
        #expect((config?["chunks"] as? [Any])?.count == report.storedChunks)

        let exported = try Command.catalyzer(["image", "export", "--store", store, "fn", dir.file("out.mem")])
        #expect(exported.status == 0, "\(exported)")
        #expect(try Fixtures.read(dir.file("out.mem")) == Fixtures.read(input))

        // Exported to a pipe, the stream is the same bytes.
        let streamed = try Command.run("bash", ["-c", "set -o pipefail; \"$0\" image export --store \"$1\" fn - | sha256sum", Command.binary("catalyzer"), store])
        let expected = try Command.run("sha256sum", [], stdin: Data(try Fixtures.read(input)))
        #expect(streamed.status == 0 && streamed.stdout == expected.stdout, "\(streamed)")

        // CATALYZER_STORE selects the store when --store is absent.
        let viaEnvironment = try Command.run(Command.binary("catalyzer"), ["image", "verify", "fn"], environment: ["CATALYZER_STORE": store])
        #expect(viaEnvironment.status == 0 && viaEnvironment.stdout.contains("fn: ok"), "\(viaEnvironment)")
    }

    @Test func createStreamsFromStandardInput() throws {
        let dir = try TemporaryDirectory("stdin")
        defer { dir.remove() }
        let bytes = try Fixtures.zeroHeavy(3 << 20)
        let created = try Command.catalyzer(["image", "create", "--store", dir.file("store"), "--from", "-", "--name", "piped"], stdin: Data(bytes))
        #expect(created.status == 0, "\(created)")
        try ImageStore(root: dir.file("store")).open("piped").export(to: dir.file("out"))
        #expect(try Fixtures.read(dir.file("out")) == bytes)
    }

    @Test func stateBlobAndWorkingSetAreStored() throws {
        let dir = try TemporaryDirectory("state")
        defer { dir.remove() }
        try Fixtures.write(try Fixtures.zeroHeavy(1 << 20), to: dir.file("m"))
        let store = ImageStore(root: dir.file("store"))
        var options = ImageCreateOptions()
        options.state = Array("vcpu and kernel state".utf8)
        options.workingSet = [3, 0, 2]
        _ = try store.createImage(named: "s", fromFile: dir.file("m"), options: options)
        let image = try store.open("s")
        #expect(try image.readState() == options.state)
        #expect(image.config.workingSet == [3, 0, 2])
        #expect(image.manifest.layers.first?.mediaType == MediaType.state)
        #expect(image.manifest.artifactType == MediaType.imageArtifact)
    }
}

/// Identical chunks are stored once, across images.
@Suite struct DeduplicationTests {
    @Test func imagesSharingNinetyPercentStoreSharedChunksOnce() throws {
        let dir = try TemporaryDirectory("dedup")
        defer { dir.remove() }
        let chunk = 64 << 10
        let chunks = 40
        let base = try Fixtures.random(chunk * chunks)
        var variant = base
        // Change 4 of 40 chunks (10%).
        let fresh = try Fixtures.random(chunk * 4)
        for (n, index) in [5, 17, 23, 39].enumerated() {
            variant.replaceSubrange(index * chunk..<(index + 1) * chunk, with: fresh[n * chunk..<(n + 1) * chunk])
        }
        try Fixtures.write(base, to: dir.file("a"))
        try Fixtures.write(variant, to: dir.file("b"))
        let store = ImageStore(root: dir.file("store"))
        var options = ImageCreateOptions()
        options.chunkSize = chunk
        options.codec = .none
        let first = try store.createImage(named: "a", fromFile: dir.file("a"), options: options)
        let second = try store.createImage(named: "b", fromFile: dir.file("b"), options: options)
        #expect(first.newBytes == Int64(chunk * chunks))
        #expect(second.newBytes == Int64(chunk * 4), "the second image wrote \(second.newBytes) new chunk bytes")

        // Blobs on disk: 44 distinct chunks, 1 empty state, 2 configs, 2 manifests.
        let blobs = try FileManager.default.contentsOfDirectory(atPath: store.blobsDirectory)
        #expect(blobs.count == 44 + 1 + 2 + 2)
        let chunkBytes = try blobs.map { try FileManager.default.attributesOfItem(atPath: store.blobsDirectory + "/" + $0)[.size] as! Int }
            .filter { $0 == chunk }.reduce(0, +)
        #expect(chunkBytes == 44 * chunk)
    }

    @Test func identicalChunksWithinOneImageShareABlob() throws {
        let dir = try TemporaryDirectory("dedup1")
        defer { dir.remove() }
        let page = try Fixtures.random(65536)
        try Fixtures.write(Array([[UInt8]](repeating: page, count: 8).joined()), to: dir.file("m"))
        let store = ImageStore(root: dir.file("store"))
        var options = ImageCreateOptions()
        options.chunkSize = 65536
        let report = try store.createImage(named: "r", fromFile: dir.file("m"), options: options)
        let image = try store.open("r")
        #expect(report.storedChunks == 8)
        #expect(Set(image.config.chunks.map(\.digest)).count == 1)
        #expect(image.manifest.layers.count == 2, "state plus one chunk blob")
    }
}
