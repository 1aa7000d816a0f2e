import CatalyzerTestSupport
import Foundation
import Testing

/// The Python function rootfs is self-contained and the runner keeps its contract. Run under
/// chroot(8) on the host, so a missing library or stdlib module fails here before it can fail
/// inside a sandbox.
@Suite(.serialized) struct RootfsTests {
    func runner(_ function: String, _ requests: [String]) throws -> (CommandResult, [RunnerResponse]) {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (for chroot)")))
        let root = try PythonRootfs.path()
        let result = try Command.run("chroot", [root, "/usr/bin/python3", "/opt/catalyzer/runner.py", "/functions/\(function).py"],
                                     stdin: RunnerResponse.input(requests))
        return (result, try RunnerResponse.parse(result.stdout))
    }

    @Test func helloAnswersEveryRequestIncludingFailures() throws {
        var requests: [String] = []
        for i in 0..<100 { requests.append(i % 10 == 9 ? #"{"raise": "request \#(i)"}"# : #"{"name": "user\#(i)"}"#) }
        let (result, responses) = try runner("hello", requests)
        #expect(result.status == 0, "\(result)")
        #expect(responses.count == 100)
        for (i, response) in responses.enumerated() {
            if i % 10 == 9 {
                #expect(!response.ok && response.error?.type == "ValueError" && response.error?.message == "asked to fail: request \(i)")
                #expect(response.error?.traceback.contains("Traceback (most recent call last)") == true)
            } else {
                #expect(response.ok && response.result?["greeting"] == .string("Hello, user\(i)!"), "request \(i)")
            }
        }
    }

    @Test func heavyQueriesItsDatabase() throws {
        let requests = (0..<100).map { #"{"customer": "customer-\#($0 % 500)"}"# } + [#"{"customer": "robert'); DROP TABLE orders;--"}"#, "not json"]
        let (result, responses) = try runner("heavy", requests)
        #expect(result.status == 0, "\(result)")
        #expect(responses.count == 102)
        for (i, response) in responses.prefix(100).enumerated() {
            #expect(response.ok && response.result?["orders"] == .number(40) && response.result?["customer"] == .string("customer-\(i % 500)"), "request \(i)")
        }
        #expect(responses[100].error?.type == "ValueError")
        #expect(responses[101].error?.type == "JSONDecodeError")
    }

    @Test func standardLibraryIsCompleteAndPrecompiled() throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (for chroot)")))
        let root = try PythonRootfs.path()
        let script = "import json, re, decimal, datetime, email.parser, urllib.parse, hashlib, sqlite3, ssl, lzma, bz2, ctypes, asyncio, zoneinfo; import sys; print(sys.prefix)"
        let result = try Command.run("chroot", [root, "/usr/bin/python3", "-c", script])
        #expect(result.status == 0 && result.stdout == "/usr\n", "\(result)")
        #expect(FileManager.default.fileExists(atPath: root + "/usr/lib/python3.11/json/__pycache__/__init__.cpython-311.pyc"))
        #expect(!FileManager.default.fileExists(atPath: root + "/usr/lib/python3.11/test"))
    }

    @Test func threadsExitCleanlyWithLibgccS() throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (for chroot)")))
        let root = try PythonRootfs.path()
        // glibc dlopens libgcc_s.so.1 for pthread_exit; CPython calls it when a daemon thread
        // wakes up during interpreter shutdown. Without the library the process aborts (134).
        #expect(FileManager.default.fileExists(atPath: root + "/lib/x86_64-linux-gnu/libgcc_s.so.1"))
        let script = """
            import threading, time
            def spin():
                while True: time.sleep(0.0001)
            for _ in range(4): threading.Thread(target=spin, daemon=True).start()
            t = threading.Thread(target=lambda: None); t.start(); t.join()
            time.sleep(0.05)
            print("done")
            """
        for _ in 0..<3 {
            let result = try Command.run("chroot", [root, "/usr/bin/python3", "-c", script])
            #expect(result.status == 0 && result.stdout == "done\n" && !result.stderr.contains("libgcc_s"), "\(result)")
        }
    }

    @Test func localhostResolvesFromEtcHosts() throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (for chroot)")))
        let root = try PythonRootfs.path()
        let hosts = try String(contentsOfFile: root + "/etc/hosts", encoding: .utf8)
        #expect(hosts.contains("127.0.0.1\tlocalhost") && hosts.contains("::1\tlocalhost"), "\(hosts)")
        let script = """
            import socket
            print(socket.gethostbyname("localhost"))
            print(sorted({a[4][0] for a in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)}))
            """
        let result = try Command.run("chroot", [root, "/usr/bin/python3", "-c", script])
        #expect(result.status == 0 && result.stdout == "127.0.0.1\n['127.0.0.1', '::1']\n", "\(result)")
    }

    @Test func everyInstanceGetsItsOwnInstanceId() throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (for chroot)")))
        // A function that reports its instance id (set by the runner on the first request).
        let root = try PythonRootfs.path()
        let probe = "import os, random\ndef handler(event):\n    return {'id': os.environ['CATALYZER_INSTANCE_ID'], 'r': str(random.random())}\n"
        let dir = try TemporaryDirectory("probe")
        defer { dir.remove() }
        try probe.write(toFile: dir.file("probe.py"), atomically: true, encoding: .utf8)
        // The probe goes in as /tmp through a bind mount in a mount namespace of the run's own:
        // the rootfs is shared, and a mount other tests could see would change what they pack.
        let setup = "mount --bind \"$1\" \"$0/tmp\" && exec /usr/sbin/chroot \"$0\" /usr/bin/python3 /opt/catalyzer/runner.py /tmp/probe.py"
        var seen: Set<String> = []
        for _ in 0..<2 {
            let result = try Command.run(HostNamespace.unshare, HostNamespace.arguments(["--mount"], script: setup, [root, dir.path]), stdin: Data("{}\n".utf8))
            #expect(result.status == 0, "\(result)")
            seen.insert(result.stdout)
        }
        #expect(seen.count == 2, "two instances answered identically: \(seen)")
    }
}
