import CatalyzerTestSupport
import Foundation
import Testing

/// Functions made by `catalyzer function create`, Python and Node.js, served by `catalyzer serve`
/// and called with boto3: the answers `catalyzer invoke` gives, each function's own recorded
/// timeout, Lambda's error shape for a Node.js exception, and the instance's log in the tail.
@Suite("serve: functions from function create", .serialized)
struct FunctionServeTests {
    static let pythonApp = """
        import hashlib, zlib
        def handler(event, context):
            data = bytes((i * 7919) % 251 for i in range(event["size"]))
            print("compressing", len(data), "bytes")
            return {"zlib": len(zlib.compress(data, 6)), "sha256": hashlib.sha256(data).hexdigest(),
                    "function": context.function_name, "memory": context.memory_limit_in_mb}
        """

    static let nodeApp = """
        const crypto = require('crypto');
        exports.handler = async (event, context) => {
          console.log('transforming', event.words.length, 'words');
          if (event.fail) null.property;
          if (event.spin) await new Promise((resolve) => setInterval(() => {}, 1000));
          const words = event.words.map((word) => word.toUpperCase());
          return { words, sha1: crypto.createHash('sha1').update(words.join(' ')).digest('hex'), function: context.functionName,
                   memory: context.memoryLimitInMB };
        };
        """

    @Test("boto3 invokes a Python and a Node.js function as catalyzer invoke answers them; a Node.js exception is Lambda's Unhandled error; a function's own --timeout 1s holds; Tail returns its console output")
    func createdFunctionsAreServed() throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (to mount catalyzerfs)")))
        try #require(TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("/dev/kvm")))
        try #require(TestEnvironment.hasFUSE, Comment(rawValue: TestEnvironment.requirementMessage("/dev/fuse")))
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/node"),
                     Comment(rawValue: TestEnvironment.requirementMessage("node (Scripts/bootstrap.sh installs Debian's nodejs)")))
        let directory = try TemporaryDirectory("function-serve")
        let environment = ["CATALYZER_STORE": directory.path + "/store", "CATALYZER_RUN_DIR": directory.path + "/run"]
        defer {
            _ = try? Command.run(Command.binary("catalyzer"), ["mount", "--unmount"], environment: environment)
            directory.remove()
        }
        func catalyzer(_ arguments: [String]) throws -> CommandResult {
            try Command.run(Command.binary("catalyzer"), arguments, environment: environment)
        }
        for (name, file, app) in [("squeeze", "app.py", Self.pythonApp), ("shout", "app.js", Self.nodeApp)] {
            try FileManager.default.createDirectory(atPath: directory.file(name), withIntermediateDirectories: true)
            try app.write(toFile: directory.file(name) + "/" + file, atomically: true, encoding: .utf8)
        }
        let python = try catalyzer(["function", "create", "squeeze", "--code", directory.file("squeeze"), "--memory", "192M",
                                    "--runtime-rootfs", try PythonRootfs.path()])
        try #require(python.status == 0, "\(python)")
        let node = try catalyzer(["function", "create", "shout", "--runtime", "nodejs", "--code", directory.file("shout"), "--timeout", "1s",
                                  "--runtime-rootfs", try NodeRootfs.path()])
        try #require(node.status == 0, "\(node)")

        let pythonEvent = #"{"size": 50000}"#, nodeEvent = #"{"words": ["alpha", "beta"]}"#
        func invoked(_ name: String, _ event: String) throws -> NSObject? {
            let result = try catalyzer(["invoke", name, "--input", event])
            try #require(result.status == 0, "\(result)")
            return (LambdaClient.value(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) as? NSDictionary)?["result"] as? NSObject
        }

        let daemon = try ServeDaemon([], environment: environment)
        defer { #expect(daemon.stop() == 0) }
        let results = try LambdaClient.run(daemon.endpoint, [
            ["op": "invoke", "function": "squeeze", "payload": pythonEvent, "log": "Tail"],
            ["op": "invoke", "function": "shout", "payload": nodeEvent, "log": "Tail"],
            ["op": "invoke", "function": "shout", "payload": #"{"words": [], "fail": true}"#],
            ["op": "invoke", "function": "shout", "payload": #"{"words": [], "spin": true}"#],
            ["op": "invoke", "function": "shout", "payload": nodeEvent],
        ])
        #expect(results[0]["status"] as? Int == 200 && results[0]["functionError"] is NSNull, "\(results[0])")
        #expect(LambdaClient.value(results[0]["payload"] as? String) == (try invoked("squeeze", pythonEvent)), "\(results[0])")
        #expect((results[0]["payload"] as? String)?.contains(#""memory":192"#) == true, "\(results[0])")
        #expect((results[0]["log"] as? String)?.contains("compressing 50000 bytes") == true, "\(results[0])")

        #expect(results[1]["status"] as? Int == 200 && results[1]["functionError"] is NSNull, "\(results[1])")
        let nodeResult = try invoked("shout", nodeEvent)
        #expect(LambdaClient.value(results[1]["payload"] as? String) == nodeResult, "\(results[1])")
        #expect((nodeResult as? NSDictionary)?["words"] as? [String] == ["ALPHA", "BETA"], "\(String(describing: nodeResult))")
        #expect((results[1]["log"] as? String)?.contains("transforming 2 words") == true, "\(results[1])")

        #expect(results[2]["functionError"] as? String == "Unhandled", "\(results[2])")
        let thrown = try #require(LambdaClient.value(results[2]["payload"] as? String) as? [String: Any], "\(results[2])")
        #expect(thrown["errorType"] as? String == "TypeError", "\(thrown)")
        #expect((thrown["errorMessage"] as? String)?.contains("reading 'property'") == true, "\(thrown)")
        #expect((thrown["stackTrace"] as? [String])?.isEmpty == false, "\(thrown)")

        // The function's own timeout (1 s, from function create), not the daemon's default.
        let timedOut = try #require(LambdaClient.value(results[3]["payload"] as? String) as? [String: Any], "\(results[3])")
        #expect(timedOut["errorType"] as? String == "Sandbox.Timedout", "\(timedOut)")
        #expect((timedOut["errorMessage"] as? String)?.contains("Task timed out after 1.") == true, "\(timedOut)")
        #expect(LambdaClient.value(results[4]["payload"] as? String) == nodeResult, "a fresh instance serves after a timeout: \(results[4])")
    }
}
