import CatalyzerBenchmarks
import CatalyzerImage
import CatalyzerRuntime
import CatalyzerTestSupport
import Foundation
import Testing

/// Functions in the style of the SeBS serverless benchmark suite: the Python ones of
/// `Examples/functions` (what `catalyzer bench functions` runs), each created with
/// `function create` from its directory and requirements file (wheels from PyPI), plus an HTTP
/// call with requests to a loopback server, restored with `invoke` and compared with the same
/// handler run on the host (the function's rootfs under chroot, the same runner).
@Suite("function suite (SeBS style)", .serialized)
struct FunctionSuiteTests {
    struct Function {
        var name: String
        var directory: String
        var memory = "256M"
        var event: String
    }

    /// The Python examples, from their bench.json, and `fetch`, written here for the test's server.
    static func functions(in scratch: TemporaryDirectory, httpPort: Int) throws -> [Function] {
        var functions = try FunctionsBenchmark.Function.suite(Repository.path("Examples/functions"))
            .filter { $0.runtime == .python311 }
            .map { Function(name: $0.name, directory: $0.directory, memory: "\($0.memory >> 20)M", event: $0.event) }
        let fetch = scratch.file("fetch")
        try FileManager.default.createDirectory(atPath: fetch, withIntermediateDirectories: true)
        try """
            import requests
            session = requests.Session()
            def handler(event, context):
                reply = session.post("http://127.0.0.1:\(httpPort)" + event["path"], json={"echo": event["path"]}, timeout=10)
                return {"status": reply.status_code, "body": reply.json()}
            """.write(toFile: fetch + "/app.py", atomically: true, encoding: .utf8)
        try "requests==2.34.2\n".write(toFile: fetch + "/requirements.txt", atomically: true, encoding: .utf8)
        functions.append(Function(name: "fetch", directory: fetch, event: #"{"path": "/"}"#))
        return functions
    }

    @Test("each SeBS-style function, created from code and requirements, answers restored as it does on the host")
    func functionsMatchTheHost() throws {
        let servers = try LoopbackServers()
        defer { servers.stop() }
        let scene = try RestoreScene("function-suite")
        defer { scene.close() }
        let functions = try Self.functions(in: scene.directory, httpPort: servers.httpPort)
        #expect(functions.count >= 7, "\(functions.map(\.name))")
        for function in functions {
            var options = ["--memory", function.memory, "--net-allow", "127.0.0.1:\(servers.httpPort)"]
            if FileManager.default.fileExists(atPath: function.directory + "/requirements.txt") {
                options += ["--requirements", function.directory + "/requirements.txt"]
            }
            let created = try scene.catalyzer(["function", "create", function.name, "--code", function.directory,
                                               "--runtime-rootfs", try PythonRootfs.path()] + options)
            try #require(created.status == 0, "\(function.name): \(created)")

            let restored = try scene.invoke(function.name, input: function.event)
            let image = try scene.store.open(function.name)
            let rootfs = scene.store.rootfsPath(for: try #require(image.config.rootfs?.layers))
            let host = try Command.run("/usr/bin/env", ["-i", "PATH=/usr/bin:/bin", "CATALYZER_FUNCTION_NAME=\(function.name)",
                                                        "/usr/sbin/chroot", rootfs, "/usr/bin/python3", "/opt/catalyzer/runner.py",
                                                        "/var/task", "app.handler"],
                                       stdin: Data((function.event + "\n").utf8))
            #expect(restored.status == 0 && restored.stdout.hasPrefix(#"{"ok":true"#), "\(function.name): \(restored)")
            #expect(restored.stdout == host.stdout, "\(function.name): sandbox \(restored) host \(host)")
        }
        let listed = try scene.catalyzer(["function", "ls"])
        for function in functions { #expect(listed.stdout.contains(function.name), "\(listed)") }
    }
}
