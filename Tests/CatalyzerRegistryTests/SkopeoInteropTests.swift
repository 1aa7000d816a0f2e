import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Testing

/// skopeo, the standard client, and catalyzer read each other's pushes.
@Suite("skopeo interop", .serialized)
struct SkopeoInteropTests {
    @Test func skopeoInspectsCopiesAndPushesCatalyzerImages() throws {
        let dir = try TemporaryDirectory("registry-skopeo")
        defer { dir.remove() }
        let registry = try RegistryServer(directory: dir.file("registry"))
        defer { registry.remove() }
        let source = try SourceImage.make(in: dir, bytes: try MemoryFixtures.zeroHeavy(2 << 20))
        let target = "\(registry.address)/functions/fn:v1"
        #expect(try CLI.run(["push", "fn", target, "--insecure", "--quiet", "--store", source.store.root]).status == 0)
        let digest = try source.digest

        func skopeo(_ arguments: [String]) throws -> CommandResult {
            try Command.bounded(60, "skopeo", arguments)
        }
        // `skopeo inspect` without --raw refuses every artifact ("unsupported image-specific
        // operation on artifact"): it summarizes container images only. The raw manifest and
        // config are what it can show, and they are ours byte for byte.
        let inspected = try skopeo(["inspect", "--raw", "--tls-verify=false", "docker://\(target)"])
        #expect(inspected.status == 0, "\(inspected)")
        #expect(Digest(of: Array(inspected.stdout.utf8)) == digest)
        let config = try skopeo(["inspect", "--raw", "--config", "--tls-verify=false", "docker://\(target)"])
        #expect(config.status == 0, "\(config)")
        #expect(Digest(of: Array(config.stdout.utf8)) == (try source.store.open("fn").manifest.config.digest))

        // Registry to registry (another repository), then pulled by catalyzer.
        let copied = try skopeo(["copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                                 "docker://\(target)", "docker://\(registry.address)/copies/fn:v1"])
        #expect(copied.status == 0, "\(copied)")
        let storeB = ImageStore(root: dir.file("store-b"))
        let pulled = try CLI.run(["pull", "\(registry.address)/copies/fn:v1", "--name", "fn", "--insecure", "--quiet", "--store", storeB.root])
        #expect(pulled.status == 0, "\(pulled)")
        #expect(pulled.stdout == digest.description + "\n", "skopeo kept the manifest byte for byte")

        // Registry to an OCI layout: a store catalyzer verifies.
        let layout = dir.file("layout")
        let toLayout = try skopeo(["copy", "--src-tls-verify=false", "docker://\(target)", "oci:\(layout):fn"])
        #expect(toLayout.status == 0, "\(toLayout)")
        let verified = try CLI.run(["image", "verify", "fn", "--store", layout])
        #expect(verified.status == 0, "\(verified)")
        #expect(try exportMatches(ImageStore(root: layout), "fn", source.memory, in: dir))

        // skopeo pushes from catalyzer's store (an OCI layout); catalyzer pulls what it pushed.
        let pushed = try skopeo(["copy", "--dest-tls-verify=false", "oci:\(source.store.root):fn", "docker://\(registry.address)/by-skopeo/fn:v2"])
        #expect(pushed.status == 0, "\(pushed)")
        let storeC = ImageStore(root: dir.file("store-c"))
        let fromSkopeo = try CLI.run(["pull", "\(registry.address)/by-skopeo/fn:v2", "--insecure", "--json", "--store", storeC.root])
        #expect(fromSkopeo.status == 0, "\(fromSkopeo)")
        #expect(try CLI.run(["image", "verify", "fn-v2", "--store", storeC.root]).status == 0)
        #expect(try exportMatches(storeC, "fn-v2", source.memory, in: dir))
    }
}
