import CatalyzerImage
import CatalyzerRuntime
import CatalyzerTestSupport
import Foundation
import Testing

/// `catalyzer function create --runtime nodejs`: a Node.js handler with a vendored dependency,
/// checkpointed after node has started its threads and epoll loop, restored and forked with the
/// answers node gives on the host, and with randomness of its own in every instance.
@Suite("Node.js functions", .serialized)
struct NodeFunctionTests {
    /// A JSON transform with crypto.createHash, a timer (the event loop runs while the handler's
    /// promise is pending) and a dependency from node_modules.
    static let transform = """
        const crypto = require('crypto');
        const pad = require('pad-id');
        exports.handler = async (event, context) => {
          console.log('transforming', (event.rows || []).length, 'rows');
          await new Promise((resolve) => setTimeout(resolve, 2));
          const rows = (event.rows || []).map((row) => ({ id: pad(row.id), total: row.items.reduce((a, b) => a + b, 0) }));
          return { rows, sha256: crypto.createHash('sha256').update(JSON.stringify(rows)).digest('hex'),
                   md5: crypto.createHash('md5').update('catalyzer').digest('base64'), function: context.functionName };
        };
        """

    /// What every instance must make its own: OpenSSL's bytes, UUIDs (node caches a batch), Math.random.
    static let randomness = """
        const crypto = require('crypto');
        exports.handler = async () => ({ bytes: crypto.randomBytes(16).toString('hex'), uuid: crypto.randomUUID(),
                                         web: globalThis.crypto.randomUUID(), math: Math.random(),
                                         instance: process.env.CATALYZER_INSTANCE_ID });
        """

    static let event = #"{"rows": [{"id": 7, "items": [1, 2, 3]}, {"id": 42, "items": [10]}]}"#

    /// A code directory: app.js, package.json naming pad-id, package-lock.json locking `lockedVersion`,
    /// and node_modules/pad-id at `version`.
    static func codeDirectory(_ parent: TemporaryDirectory, _ name: String, app: String, version: String = "1.0.0",
                              lockedVersion: String = "1.0.0", vendored: Bool = true) throws -> String {
        let directory = parent.file(name)
        let module = directory + "/node_modules/pad-id"
        try FileManager.default.createDirectory(atPath: vendored ? module : directory, withIntermediateDirectories: true)
        try app.write(toFile: directory + "/app.js", atomically: true, encoding: .utf8)
        try #"{"name": "\#(name)", "version": "1.0.0", "dependencies": {"pad-id": "^1.0.0"}}"#
            .write(toFile: directory + "/package.json", atomically: true, encoding: .utf8)
        try #"{"name": "\#(name)", "lockfileVersion": 3, "packages": {"": {"dependencies": {"pad-id": "^1.0.0"}}, "node_modules/pad-id": {"version": "\#(lockedVersion)"}}}"#
            .write(toFile: directory + "/package-lock.json", atomically: true, encoding: .utf8)
        if vendored {
            try #"{"name": "pad-id", "version": "\#(version)", "main": "index.js"}"#.write(toFile: module + "/package.json", atomically: true, encoding: .utf8)
            try "module.exports = (id) => String(id).padStart(6, '0');\n".write(toFile: module + "/index.js", atomically: true, encoding: .utf8)
        }
        return directory
    }

    static func create(_ scene: RestoreScene, _ name: String, code: String, options: [String] = []) throws -> CommandResult {
        try scene.catalyzer(["function", "create", name, "--runtime", "nodejs", "--code", code, "--runtime-rootfs", try NodeRootfs.path(),
                             "--json"] + options)
    }

    static func requireNode() throws {
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/node"),
                     Comment(rawValue: TestEnvironment.requirementMessage("node (Scripts/bootstrap.sh installs Debian's nodejs)")))
    }

    @Test("a Node.js function with a vendored module: restored, forked and on the host it answers the same; node_modules is the dependencies layer, shared by a second function; a code change rebuilds only the code layer")
    func createInvokeAndShare() async throws {
        try Self.requireNode()
        let scene = try RestoreScene("node-function")
        defer { scene.close() }
        let code = try Self.codeDirectory(scene.directory, "transform", app: Self.transform)
        let created = try Self.create(scene, "transform", code: code, options: ["--record-working-set", "--working-set-input", Self.event])
        try #require(created.status == 0, "\(created)")
        let first = try FunctionCreateTests.layers(created)
        #expect(Set(first.keys) == ["runtime", "dependencies", "code"], "\(created)")

        let restored = try scene.invoke("transform", input: Self.event)
        #expect(restored.status == 0 && restored.stdout.hasPrefix(#"{"ok":true,"result":{"rows":[{"id":"000007","total":6},{"id":"000042","total":10}]"#),
                "\(restored)")
        #expect(restored.stderr.contains("transforming 2 rows"), "console.log goes to the instance's log: \(restored)")
        #expect(!restored.stdout.contains("transforming"), "\(restored)")

        // The host: the same rootfs (the layers unpacked), the same node, runner and handler, under chroot.
        let image = try scene.store.open("transform")
        let rootfs = scene.store.rootfsPath(for: try #require(image.config.rootfs?.layers))
        let host = try Command.run("/usr/bin/env", ["-i", "PATH=/usr/bin:/bin", "CATALYZER_FUNCTION_NAME=transform", "/usr/sbin/chroot", rootfs,
                                                    "/usr/bin/node", "/opt/catalyzer/runner.js", "/var/task", "app.handler"],
                                   stdin: Data((Self.event + "\n").utf8))
        #expect(host.status == 0 && restored.stdout == host.stdout, "sandbox \(restored) host \(host)")

        // Forked from a template (sfork), as `catalyzer serve` runs it.
        let service = try scene.forkingService()
        defer { service.shutdown() }
        guard let bytes = try await scene.forkedResult(service, "transform", Self.event) else { return }
        #expect("{\"ok\":true,\"result\":" + String(decoding: bytes, as: UTF8.self) + "}\n" == host.stdout)

        // Same node_modules: the dependencies layer is shared. A code change rebuilds only the code layer.
        let twin = try Self.codeDirectory(scene.directory, "twin", app: Self.transform.replacingOccurrences(of: "rows", with: "lines"))
        let second = try Self.create(scene, "twin", code: twin)
        try #require(second.status == 0, "\(second)")
        let twinLayers = try FunctionCreateTests.layers(second)
        #expect(twinLayers["dependencies"]?.digest == first["dependencies"]?.digest && twinLayers["dependencies"]?.reused == true, "\(second)")
        #expect(twinLayers["runtime"]?.reused == true && twinLayers["code"]?.reused == false, "\(second)")
        let listed = try scene.catalyzer(["function", "inspect", "twin"])
        #expect(listed.stdout.contains("runtime     nodejs"), "\(listed)")
    }

    @Test("every restored or forked Node.js instance draws its own random bytes, UUIDs and Math.random, though node seeded OpenSSL before the checkpoint")
    func instancesDoNotShareRandomness() async throws {
        try Self.requireNode()
        let scene = try RestoreScene("node-random")
        defer { scene.close() }
        let code = scene.directory.file("random")
        try FileManager.default.createDirectory(atPath: code, withIntermediateDirectories: true)
        try Self.randomness.write(toFile: code + "/app.js", atomically: true, encoding: .utf8)
        let created = try Self.create(scene, "random", code: code)
        try #require(created.status == 0, "\(created)")

        var answers: [[String: Any]] = []
        for _ in 0..<2 {
            let restored = try scene.invoke("random", input: "{}")
            try #require(restored.status == 0, "\(restored)")
            let line = try #require(try JSONSerialization.jsonObject(with: Data(restored.stdout.utf8)) as? [String: Any])
            answers.append(try #require(line["result"] as? [String: Any], "\(restored)"))
        }
        let service = try scene.forkingService()
        defer { service.shutdown() }
        for _ in 0..<2 {
            guard let bytes = try await scene.forkedResult(service, "random", "{}") else { return }
            answers.append(try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]))
        }
        for field in ["bytes", "uuid", "web", "math", "instance"] {
            let values = answers.map { "\($0[field] ?? "missing")" }
            #expect(Set(values).count == answers.count, "\(field) repeats across instances: \(values)")
        }
    }

    @Test("Node.js functions that cannot work fail at create and publish nothing: a declared module missing from node_modules, a module at another version than the lockfile's, an unexported handler, --requirements")
    func badFunctionsFailAtCreate() throws {
        try Self.requireNode()
        let scene = try RestoreScene("node-bad")
        defer { scene.close() }
        let missing = try Self.codeDirectory(scene.directory, "missing", app: Self.transform, vendored: false)
        try? FileManager.default.removeItem(atPath: missing + "/package-lock.json")
        let noModules = try Self.create(scene, "missing", code: missing)
        #expect(noModules.status != 0 && noModules.stderr.contains("pad-id") && noModules.stderr.contains("node_modules"), "\(noModules)")

        let skewed = try Self.codeDirectory(scene.directory, "skewed", app: Self.transform, version: "1.1.0", lockedVersion: "1.0.0")
        let skew = try Self.create(scene, "skewed", code: skewed)
        #expect(skew.status != 0 && skew.stderr.contains("pad-id 1.1.0") && skew.stderr.contains("locks 1.0.0"), "\(skew)")

        let unexported = try Self.codeDirectory(scene.directory, "unexported", app: "exports.other = async () => 1;\n")
        let noHandler = try Self.create(scene, "unexported", code: unexported)
        #expect(noHandler.status != 0 && noHandler.stderr.contains("exports no handler"), "\(noHandler)")

        let throwing = try Self.codeDirectory(scene.directory, "throwing", app: "throw new Error('cannot start: no config');\n")
        let failedImport = try Self.create(scene, "throwing", code: throwing)
        #expect(failedImport.status != 0 && failedImport.stderr.contains("cannot start: no config"), "\(failedImport)")

        let pip = try Self.create(scene, "pip", code: unexported, options: ["--requirements", unexported + "/package.json"])
        #expect(pip.status != 0 && pip.stderr.contains("--requirements is a pip requirements file"), "\(pip)")

        let listed = try scene.catalyzer(["function", "ls", "--json"])
        let functions = try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [Any]
        #expect(listed.status == 0 && functions?.isEmpty == true, "\(listed)")
    }
}
