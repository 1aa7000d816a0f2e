import CatalyzerBench
import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Testing

/// Two nodes and a registry in their own network namespaces, joined by veth pairs, 5 ms of
/// round-trip delay on the registry's side. Node A checkpoints hello and heavy and pushes them;
/// node B (its own store, no rootfs, no earlier pull) pulls them lazily and invokes them, and
/// answers exactly as node A; its catalyzerfs fetched from the registry only chunks the instances
/// read, beyond the working sets the pulls brought.
@Suite("two nodes", .serialized)
struct TwoNodeTests {
    @Test func nodeBRunsWhatNodeACheckpointed() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM && TestEnvironment.hasFUSE,
                     Comment(rawValue: TestEnvironment.requirementMessage("root, /dev/kvm and /dev/fuse")))
        let dir = try TemporaryDirectory("two-nodes")
        defer { dir.remove() }
        let rootfs = dir.file("rootfs")
        let copied = try Command.bounded(60, "cp", ["-a", try PythonRootfs.path(), rootfs])
        try #require(copied.status == 0, "\(copied)")
        let lab = try RemoteLab(nodes: ["node-a", "node-b"], delayMillis: 5)
        defer { lab.tearDown() }
        func catalyzer(_ node: String, _ arguments: [String], stdin: Data? = nil) throws -> RemoteLab.Result {
            try lab.run(on: node, Command.binary("catalyzer"), arguments, environment: [
                "CATALYZER_STORE": dir.file("\(node)/store"), "CATALYZER_RUN_DIR": dir.file("\(node)/run"),
                "DOCKER_CONFIG": "/nonexistent-docker-config",
            ], stdin: stdin, seconds: 180)
        }
        defer {
            _ = try? catalyzer("node-a", ["mount", "--unmount"])
            _ = try? catalyzer("node-b", ["mount", "--unmount"])
        }
        let requests = ["hello": #"{"name": "node-b"}"#, "heavy": #"{"customer": "customer-7"}"#]
        var answers: [String: String] = [:]
        for (function, request) in requests.sorted(by: { $0.key < $1.key }) {
            let checkpoint = try catalyzer("node-a", ["checkpoint", "--rootfs", rootfs, "--name", function, "--memory", "128M",
                                                      "--record-working-set", "--working-set-input", request, "--",
                                                      "/usr/bin/python3", "/opt/catalyzer/runner.py", "/functions/\(function).py"])
            try #require(checkpoint.status == 0, "\(checkpoint.stderr)")
            let answer = try catalyzer("node-a", ["invoke", function, "--input", request])
            #expect(answer.status == 0, "\(answer.stderr)")
            answers[function] = answer.stdout
            let pushed = try catalyzer("node-a", ["push", function, "\(RemoteLab.registryAddress)/functions/\(function):v1", "--insecure", "--quiet"])
            #expect(pushed.status == 0, "\(pushed.stderr)")
        }
        try FileManager.default.moveItem(atPath: rootfs, toPath: rootfs + ".gone")

        let storeB = ImageStore(root: dir.file("node-b/store"))
        for (function, request) in requests.sorted(by: { $0.key < $1.key }) {
            let pulled = try catalyzer("node-b", ["pull", "\(RemoteLab.registryAddress)/functions/\(function):v1", "--name", function,
                                                  "--lazy", "--insecure", "--quiet"])
            #expect(pulled.status == 0, "\(pulled.stderr)")
            let before = Set(((try? FileManager.default.contentsOfDirectory(atPath: storeB.defaultBlobCacheDirectory)) ?? []).compactMap { Digest("sha256:" + $0) })
            let answer = try catalyzer("node-b", ["invoke", function, "--input", request, "--timings", "--json"])
            #expect(answer.status == 0, "\(answer.stderr)")
            let document = try JSONSerialization.jsonObject(with: Data(answer.stdout.utf8)) as? [String: Any]
            let responses = (document?["responses"] as? [Any])?.compactMap { try? JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys]) }
            let expected = try answers[function].map { try JSONSerialization.jsonObject(with: Data($0.utf8)) }.map { try JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys]) }
            #expect(responses?.first == expected, "\(function): \(answer.stdout) vs \(answers[function] ?? "")")

            // What catalyzerfs fetched: chunk blobs of this image outside its working set (the pull
            // brought those), and no more than it loaded for this instance.
            let image = try storeB.open(function)
            let fetched = Set(try FileManager.default.contentsOfDirectory(atPath: storeB.defaultBlobCacheDirectory).compactMap { Digest("sha256:" + $0) })
                .subtracting(before)
            let workingSet = Set((image.config.workingSet ?? []).compactMap { image.config.chunk(at: $0)?.digest })
            let chunks = Set(image.config.chunks.map(\.digest))
            #expect(fetched.isSubset(of: chunks.subtracting(workingSet)), "\(function): fetched blobs outside the image's remote chunks")
            let loadedBytes = (document?["timings"] as? [String: Any])?["fuseBytesFetched"] as? Int ?? 0
            let fetchedBytes = image.config.chunks.filter { fetched.contains($0.digest) }.reduce(Int64(0)) { $0 + $1.size }
            #expect(fetchedBytes <= Int64(loadedBytes), "\(function): fetched \(fetchedBytes) bytes but the instance read \(loadedBytes)")
        }
    }
}
