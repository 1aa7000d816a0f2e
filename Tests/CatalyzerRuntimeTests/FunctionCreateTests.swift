import CatalyzerImage
import CatalyzerRuntime
import CatalyzerTestSupport
import Foundation
import Testing

/// `catalyzer function create`: a code directory and a requirements file (wheels from PyPI) built
/// into runtime, dependencies and code layers, checkpointed with the handler imported, and run
/// restored and forked with the same answers as on the host.
@Suite("function create", .serialized)
struct FunctionCreateTests {
    static let yamlFunction = """
        import json, yaml
        def handler(event, context):
            document = yaml.safe_load(event["yaml"])
            return {"json": json.dumps(document, sort_keys=True), "function": context.function_name,
                    "yaml version": yaml.__version__}
        """

    /// Writes a code directory with `app.py` and a requirements file.
    static func codeDirectory(_ parent: TemporaryDirectory, _ name: String, app: String, requirements: String? = nil) throws -> String {
        let directory = parent.file(name)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try app.write(toFile: directory + "/app.py", atomically: true, encoding: .utf8)
        if let requirements { try requirements.write(toFile: directory + "/requirements.txt", atomically: true, encoding: .utf8) }
        return directory
    }

    static func create(_ scene: RestoreScene, _ name: String, code: String, options: [String] = []) throws -> CommandResult {
        try scene.catalyzer(["function", "create", name, "--code", code, "--runtime-rootfs", try PythonRootfs.path(), "--json"] + options)
    }

    static func layers(_ result: CommandResult) throws -> [String: (digest: String, reused: Bool)] {
        let document = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result)")
        let report = try #require(document["function"] as? [String: Any], "\(result)")
        let layers = try #require(report["layers"] as? [[String: Any]])
        return Dictionary(uniqueKeysWithValues: layers.map { ($0["role"] as! String, ($0["digest"] as! String, $0["reused"] as! Bool)) })
    }

    @Test("a function with PyYAML from PyPI: restored, forked and on the host it answers the same; a second function shares the dependencies layer, a code change rebuilds only the code layer")
    func createInvokeAndShare() async throws {
        let scene = try RestoreScene("function-create")
        defer { scene.close() }
        let code = try Self.codeDirectory(scene.directory, "yaml2json", app: Self.yamlFunction, requirements: "PyYAML==6.0.2\n")
        let created = try Self.create(scene, "yaml2json", code: code, options: ["--requirements", code + "/requirements.txt",
                                                                                "--record-working-set", "--working-set-input", #"{"yaml": "a: 1"}"#])
        try #require(created.status == 0, "\(created)")
        let recorded = try #require(try JSONSerialization.jsonObject(with: Data(created.stdout.utf8)) as? [String: Any])["workingSet"] as? [String: Any]
        #expect((recorded?["chunks"] as? Int ?? 0) > 0, "\(created)")
        #expect(try scene.store.open("yaml2json").config.workingSet?.isEmpty == false)
        let first = try Self.layers(created)
        #expect(Set(first.keys) == ["runtime", "dependencies", "code"], "\(created)")

        let event = #"{"yaml": "b: [1, 2]\na: {c: true}"}"#
        let restored = try scene.invoke("yaml2json", input: event)
        #expect(restored.status == 0, "\(restored)")
        let expected = #"{"ok":true,"result":{"json":"{\"a\": {\"c\": true}, \"b\": [1, 2]}","function":"yaml2json","yaml version":"6.0.2"}}"# + "\n"
        #expect(restored.stdout == expected, "\(restored)")

        // The host: the same rootfs (the layers unpacked), the same runner and handler, under chroot.
        let image = try scene.store.open("yaml2json")
        let rootfs = scene.store.rootfsPath(for: try #require(image.config.rootfs?.layers))
        let host = try Command.run("/usr/bin/env", ["-i", "PATH=/usr/bin:/bin", "CATALYZER_FUNCTION_NAME=yaml2json", "/usr/sbin/chroot", rootfs,
                                                    "/usr/bin/python3", "/opt/catalyzer/runner.py", "/var/task", "app.handler"],
                                   stdin: Data((event + "\n").utf8))
        #expect(host.stdout == expected, "\(host)")

        let service = try scene.forkingService()
        defer { service.shutdown() }
        guard let bytes = try await scene.forkedResult(service, "yaml2json", event) else { return }
        #expect("{\"ok\":true,\"result\":" + String(decoding: bytes, as: UTF8.self) + "}\n" == expected)

        // Another function with the same requirements shares the runtime and dependencies layers.
        let other = try Self.codeDirectory(scene.directory, "other", app: "import yaml\ndef handler(event):\n    return yaml.safe_dump(event)\n")
        let second = try Self.layers(try Self.create(scene, "other", code: other, options: ["--requirements", code + "/requirements.txt"]))
        #expect(second["dependencies"]?.digest == first["dependencies"]?.digest && second["dependencies"]?.reused == true)
        #expect(second["runtime"]?.reused == true && second["code"]?.digest != first["code"]?.digest)
        #expect(try scene.invoke("other", input: #"{"k": 1}"#).stdout == #"{"ok":true,"result":"k: 1\n"}"# + "\n")

        // ls, inspect and rm see functions, not other images.
        let listed = try scene.catalyzer(["function", "ls"])
        #expect(listed.stdout.contains("yaml2json") && listed.stdout.contains("app.handler"), "\(listed)")
        let inspected = try scene.catalyzer(["function", "inspect", "yaml2json"])
        #expect(inspected.stdout.contains("handler     app.handler\n") && inspected.stdout.contains("timeout     30.0 s\n")
                && inspected.stdout.contains("layer       dependencies"), "\(inspected)")
        #expect(try scene.catalyzer(["function", "rm", "other"]).status == 0)
        #expect(try scene.catalyzer(["function", "inspect", "other"]).status != 0)

        // The function's timeout bounds its invocations when invoke is not given one.
        let slow = try Self.codeDirectory(scene.directory, "slow", app: "import time\ndef handler(event, context):\n    time.sleep(30)\n")
        #expect(try Self.create(scene, "slow", code: slow, options: ["--timeout", "1s"]).status == 0)
        let started = Date()
        let timedOut = try scene.invoke("slow", input: "{}")
        #expect(timedOut.status == 124 && Date().timeIntervalSince(started) < 10, "\(timedOut)")

        // A change of the code alone rebuilds the code layer alone.
        try (Self.yamlFunction + "\n# changed\n").write(toFile: code + "/app.py", atomically: true, encoding: .utf8)
        let third = try Self.layers(try Self.create(scene, "yaml2json", code: code, options: ["--requirements", code + "/requirements.txt"]))
        #expect(third["runtime"]?.reused == true && third["dependencies"]?.reused == true && third["code"]?.reused == false,
                "first \(first), third \(third)")
        #expect(third["code"]?.digest != first["code"]?.digest)
    }

    @Test("bad input fails at create with a clear error and publishes nothing: a requirement with no wheel, a module that does not import, a handler that does not resolve, a symlink out of the code, code over the size limit")
    func badInputFailsAtCreate() throws {
        let scene = try RestoreScene("function-bad")
        defer { scene.close() }
        let good = "def handler(event, context):\n    return 1\n"
        var cases: [(name: String, code: String, options: [String], message: String)] = []

        let missing = try Self.codeDirectory(scene.directory, "missing", app: good, requirements: "catalyzer-no-such-package-x==1.0\n")
        cases.append(("missing", missing, ["--requirements", missing + "/requirements.txt"],
                      "No matching distribution found for catalyzer-no-such-package-x==1.0"))
        let broken = try Self.codeDirectory(scene.directory, "broken", app: "import not_installed_anywhere\ndef handler(e, c): pass\n")
        cases.append(("broken", broken, [], "ModuleNotFoundError: No module named 'not_installed_anywhere'"))
        let unresolved = try Self.codeDirectory(scene.directory, "unresolved", app: good)
        cases.append(("unresolved", unresolved, ["--handler", "app.nothing"], "defines no nothing(event, context) function"))
        cases.append(("badhandler", unresolved, ["--handler", "app"], "is not MODULE.FUNCTION"))
        let leaking = try Self.codeDirectory(scene.directory, "leaking", app: good)
        try FileManager.default.createSymbolicLink(atPath: leaking + "/passwd", withDestinationPath: "../../../../../../etc/passwd")
        cases.append(("leaking", leaking, [], "points outside it"))
        let large = try Self.codeDirectory(scene.directory, "large", app: good)
        FileManager.default.createFile(atPath: large + "/data.bin", contents: nil)
        #expect(truncate(large + "/data.bin", 251_000_000) == 0)  // sparse: no disk used
        cases.append(("large", large, [], "over the limit of 250000000"))

        for test in cases {
            let result = try Self.create(scene, test.name, code: test.code, options: test.options)
            #expect(result.status != 0, "\(test.name): \(result)")
            #expect(result.stderr.contains(test.message), "\(test.name): \(result)")
        }
        let listed = try scene.catalyzer(["image", "ls"])
        for test in cases { #expect(!listed.stdout.contains(test.name), "\(test.name) was published: \(listed)") }
    }

    @Test("a Python function that made an SSL context at import (OpenSSL seeded before the checkpoint) gets its own OpenSSL random bytes in every restored instance")
    func openSSLIsReseededPerInstance() throws {
        let scene = try RestoreScene("function-openssl")
        defer { scene.close() }
        // As a boto3 client or requests session made at import does: SSL_CTX_new draws from the DRBG.
        let code = try Self.codeDirectory(scene.directory, "tls", app: """
            import ssl
            client_context = ssl.create_default_context()
            def handler(event, context):
                return {"openssl": ssl.RAND_bytes(16).hex()}
            """)
        let created = try Self.create(scene, "tls", code: code)
        try #require(created.status == 0, "\(created)")
        let answers = try (0..<2).map { _ in try scene.invoke("tls", input: "{}").stdout }
        #expect(answers.allSatisfy { $0.hasPrefix(#"{"ok":true"#) } && Set(answers).count == 2, "OpenSSL's bytes repeat across instances: \(answers)")
    }
}
