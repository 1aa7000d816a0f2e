import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// `catalyzer push` and `pull` against Debian's docker-registry on a loopback port.
@Suite("push and pull", .serialized)
struct PushPullTests {
    @Test func pushPullVerifyAndByteEquality() throws {
        let dir = try TemporaryDirectory("registry-roundtrip")
        defer { dir.remove() }
        let registry = try RegistryServer(directory: dir.file("registry"))
        defer { registry.remove() }
        let source = try SourceImage.make(in: dir, bytes: try MemoryFixtures.zeroHeavy(6 << 20 + 1234))
        let target = "\(registry.address)/functions/fn:v1"

        let pushed = try CLI.run(["push", "fn", target, "--insecure", "--json", "--store", source.store.root])
        #expect(pushed.status == 0, "\(pushed)")
        let pushEvents = Events(pushed.stdout)
        let planned = try #require(pushEvents.plannedBlobs)
        #expect(pushEvents.blobs("uploaded").count == planned)
        #expect(pushEvents.done?["digest"] as? String == (try source.digest.description))

        // Into a second store, verified, byte for byte the same memory and the same manifest.
        let storeB = ImageStore(root: dir.file("store-b"))
        let pulled = try CLI.run(["pull", target, "--name", "copy", "--insecure", "--json", "--store", storeB.root])
        #expect(pulled.status == 0, "\(pulled)")
        #expect(Events(pulled.stdout).blobs("downloaded").count == planned)
        let verified = try CLI.run(["image", "verify", "copy", "--store", storeB.root])
        #expect(verified.status == 0, "\(verified)")
        #expect(try storeB.manifestDescriptor(named: "copy").digest == source.digest)
        #expect(try storeB.manifestDescriptor(named: "copy").annotations?[ImageStore.originAnnotation] == "\(registry.address)/functions/fn@\(try source.digest)")
        #expect(try exportMatches(storeB, "copy", source.memory, in: dir))

        // Pushing again moves nothing; pulling again downloads nothing.
        let again = Events(try CLI.run(["push", "fn", target, "--insecure", "--json", "--store", source.store.root]).stdout)
        #expect(again.blobs("existing").count == planned && again.blobs("uploaded").isEmpty)
        let repull = Events(try CLI.run(["pull", target, "--name", "copy", "--insecure", "--json", "--store", storeB.root]).stdout)
        #expect(repull.blobs("existing").count == planned && repull.blobs("downloaded").isEmpty)

        // Another repository of the same registry: every blob is mounted, none uploaded.
        let mounted = Events(try CLI.run(["push", "fn", "\(registry.address)/other/fn", "--insecure", "--json", "--store", source.store.root]).stdout)
        #expect(mounted.blobs("mounted").count == planned, "\(mounted.objects)")
        #expect(mounted.blobs("uploaded").isEmpty)

        // By digest, with --quiet: only the digest is printed; the default name is the repository's.
        let storeC = ImageStore(root: dir.file("store-c"))
        let byDigest = try CLI.run(["pull", "\(registry.address)/other/fn@\(try source.digest)", "--insecure", "--quiet", "--store", storeC.root])
        #expect(byDigest.status == 0, "\(byDigest)")
        #expect(byDigest.stdout == (try source.digest.description) + "\n")
        #expect(try storeC.names() == ["fn"])
    }

    @Test func registryErrorsAreSpecific() throws {
        let dir = try TemporaryDirectory("registry-errors")
        defer { dir.remove() }
        let registry = try RegistryServer(directory: dir.file("registry"))
        defer { registry.remove() }
        let source = try SourceImage.make(in: dir, bytes: try MemoryFixtures.zeroHeavy(1 << 20))

        let missing = try CLI.run(["pull", "\(registry.address)/nothing/here:v9", "--insecure", "--store", dir.file("b")])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("does not exist in the registry"), "\(missing)")
        // `invoke REFERENCE` pulls as `pull --lazy` does, with the same errors, and publishes
        // nothing (it starts the store's managed mount meanwhile: taken down at the end).
        defer { _ = try? CLI.run(["mount", "--unmount", "--store", dir.file("b")]) }
        let invokedMissing = try CLI.run(["invoke", "\(registry.address)/nothing/here:v9", "--insecure", "--input", "{}", "--store", dir.file("b")])
        #expect(invokedMissing.status == 1)
        #expect(invokedMissing.stderr.contains("does not exist in the registry"), "\(invokedMissing)")
        let invokedBadReference = try CLI.run(["invoke", "\(registry.address)/Upper/Case", "--input", "{}", "--store", dir.file("b")])
        #expect(invokedBadReference.status != 0 && invokedBadReference.stderr.contains("not a valid repository name"), "\(invokedBadReference)")

        // HTTPS to a plain-HTTP registry: a TLS error that points at --insecure.
        let plain = try CLI.run(["pull", "\(registry.address)/fn/x:v1", "--store", dir.file("b")])
        #expect(plain.status == 1)
        #expect(plain.stderr.contains("TLS") && plain.stderr.contains("--insecure"), "\(plain)")

        // Nothing listens: bounded retries, then "cannot reach".
        registry.stop()
        let started = Date()
        let down = try CLI.run(["push", "fn", "\(registry.address)/fn/x:v1", "--insecure", "--store", source.store.root])
        #expect(down.status == 1)
        #expect(down.stderr.contains("cannot reach the registry at \(registry.address)"), "\(down)")
        #expect(Date().timeIntervalSince(started) < 20)

        let bad = try CLI.run(["pull", "no-registry-part", "--store", dir.file("b")])
        #expect(bad.status == 1 && bad.stderr.contains("is not an image reference"), "\(bad)")
        #expect(try ImageStore(root: dir.file("b")).names().isEmpty)
    }

    @Test func killedMidPushFailsClearlyAndARerunSendsOnlyWhatIsMissing() throws {
        let dir = try TemporaryDirectory("registry-kill-push")
        defer { dir.remove() }
        let registry = try RegistryServer(directory: dir.file("registry"))
        defer { registry.remove() }
        let source = try SourceImage.make(in: dir, bytes: try MemoryFixtures.random(12 << 20))
        let target = "\(registry.address)/functions/big:v1"

        let push = try CLI.start(["push", "fn", target, "--insecure", "--json", "--jobs", "1", "--store", source.store.root])
        push.read(until: { Events(lines: $0).blobs("uploaded").count >= 20 })
        registry.crash()
        let failed = push.finish()
        #expect(failed.status == 1, "\(failed)")
        #expect(failed.stderr.contains("cannot reach the registry at \(registry.address)"), "\(failed)")
        #expect(Date().timeIntervalSince(push.started) < 30)
        let before = Events(failed.stdout)
        let planned = try #require(before.plannedBlobs)
        let uploadedBefore = before.blobs("uploaded").count
        #expect(uploadedBefore >= 20 && uploadedBefore < planned)

        try registry.start()
        // No partial image: the tag does not exist.
        let early = try CLI.run(["pull", target, "--insecure", "--store", dir.file("probe")])
        #expect(early.status == 1 && early.stderr.contains("does not exist"), "\(early)")

        let rerun = try CLI.run(["push", "fn", target, "--insecure", "--json", "--store", source.store.root])
        #expect(rerun.status == 0, "\(rerun)")
        let after = Events(rerun.stdout)
        #expect(after.blobs("existing").count >= uploadedBefore)
        #expect(after.blobs("uploaded").count == planned - after.blobs("existing").count)
        #expect(after.blobs("uploaded").count < planned)

        let storeB = ImageStore(root: dir.file("store-b"))
        #expect(try CLI.run(["pull", target, "--name", "big", "--insecure", "--quiet", "--store", storeB.root]).status == 0)
        #expect(try exportMatches(storeB, "big", source.memory, in: dir))
    }

    @Test func killedMidPullLeavesNoImageAndARerunFetchesOnlyWhatIsMissing() throws {
        let dir = try TemporaryDirectory("registry-kill-pull")
        defer { dir.remove() }
        let registry = try RegistryServer(directory: dir.file("registry"))
        defer { registry.remove() }
        let source = try SourceImage.make(in: dir, bytes: try MemoryFixtures.random(12 << 20))
        let target = "\(registry.address)/functions/big:v1"
        #expect(try CLI.run(["push", "fn", target, "--insecure", "--quiet", "--store", source.store.root]).status == 0)

        let storeB = ImageStore(root: dir.file("store-b"))
        let pull = try CLI.start(["pull", target, "--name", "big", "--insecure", "--json", "--jobs", "1", "--store", storeB.root])
        pull.read(until: { Events(lines: $0).blobs("downloaded").count >= 20 })
        registry.crash()
        let failed = pull.finish()
        #expect(failed.status == 1, "\(failed)")
        #expect(failed.stderr.contains("cannot reach the registry at \(registry.address)"), "\(failed)")
        let before = Events(failed.stdout)
        let planned = try #require(before.plannedBlobs)
        let downloadedBefore = before.blobs("downloaded").count
        #expect(downloadedBefore >= 20 && downloadedBefore < planned)
        #expect(try storeB.names().isEmpty, "a failed pull publishes no image")

        try registry.start()
        let rerun = try CLI.run(["pull", target, "--name", "big", "--insecure", "--json", "--store", storeB.root])
        #expect(rerun.status == 0, "\(rerun)")
        let after = Events(rerun.stdout)
        #expect(after.blobs("existing").count >= downloadedBefore)
        #expect(after.blobs("downloaded").count == planned - after.blobs("existing").count)
        #expect(try CLI.run(["image", "verify", "big", "--store", storeB.root]).status == 0)
        #expect(try exportMatches(storeB, "big", source.memory, in: dir))
    }

    @Test func aBlobServedWrongIsRefusedAsADigestMismatch() throws {
        let dir = try TemporaryDirectory("registry-wrong-blob")
        defer { dir.remove() }
        let registry = try RegistryServer(directory: dir.file("registry"))
        defer { registry.remove() }
        let source = try SourceImage.make(in: dir, bytes: try MemoryFixtures.zeroHeavy(2 << 20))
        let target = "\(registry.address)/functions/fn:v1"
        #expect(try CLI.run(["push", "fn", target, "--insecure", "--quiet", "--store", source.store.root]).status == 0)

        // Damage one chunk blob in the registry's storage: same size, other bytes.
        let chunk = try #require(try source.store.open("fn").config.chunks.last)
        let path = registry.blobDataPath(chunk.digest.hex)
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count / 2] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: path))

        let storeB = ImageStore(root: dir.file("store-b"))
        let pulled = try CLI.run(["pull", target, "--insecure", "--store", storeB.root])
        #expect(pulled.status == 1)
        #expect(pulled.stderr.contains("served bytes hashing to \(Digest(of: bytes))"), "\(pulled)")
        #expect(pulled.stderr.contains("chunk \(chunk.index) blob \(chunk.digest)"), "\(pulled)")
        #expect(try storeB.names().isEmpty)
        #expect(!storeB.hasBlob(chunk.digest, size: chunk.size), "the wrong bytes were not stored")
    }

    @Test func serverErrorsAreRetriedWithBackoff() throws {
        let dir = try TemporaryDirectory("registry-503")
        defer { dir.remove() }
        let registry = try RegistryServer(directory: dir.file("registry"))
        defer { registry.remove() }
        let proxy = try FlakyProxy(directory: dir.file("proxy"), upstream: registry.address)
        defer { proxy.stop() }
        let source = try SourceImage.make(in: dir, bytes: try MemoryFixtures.zeroHeavy(1 << 20))
        let target = "\(proxy.address)/functions/fn:v1"

        // Every blob's first HEAD (push) and first GET (pull) is answered 503.
        let pushed = try CLI.run(["push", "fn", target, "--insecure", "--json", "--store", source.store.root])
        #expect(pushed.status == 0, "\(pushed)")
        let retries = Events(pushed.stdout).objects.filter { $0["event"] as? String == "retry" }
        let planned = try #require(Events(pushed.stdout).plannedBlobs)
        #expect(retries.count >= planned, "one retry per blob at least: \(retries.count) for \(planned)")
        #expect(retries.allSatisfy { ($0["reason"] as? String)?.contains("HTTP 503") == true })
        let storeB = ImageStore(root: dir.file("store-b"))
        let pulled = try CLI.run(["pull", target, "--name", "fn", "--insecure", "--json", "--store", storeB.root])
        #expect(pulled.status == 0, "\(pulled)")
        #expect(Events(pulled.stdout).objects.filter { $0["event"] as? String == "retry" }.count >= planned)
        #expect(proxy.refused.contains { $0.hasPrefix("GET ") } && proxy.refused.contains { $0.hasPrefix("HEAD ") })
        #expect(try exportMatches(storeB, "fn", source.memory, in: dir))
    }
}
