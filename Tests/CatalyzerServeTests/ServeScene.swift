import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Glibc
import Synchronization
import Testing

/// One store for the whole target, checkpointed once (checkpoints are the slow part): `hello`
/// and `heavy` from the Python rootfs, `sleepy`, a test function that sleeps, exits or writes
/// to stderr on request, and `broken`, a damaged copy of hello. Its managed catalyzerfs mount is unmounted when the test process exits.
final class ServeScene: Sendable {
    let directory: TemporaryDirectory
    let storeRoot: String
    let runDirectory: String

    var environment: [String: String] { ["CATALYZER_STORE": storeRoot, "CATALYZER_RUN_DIR": runDirectory] }

    static let runner = ["/usr/bin/python3", "/opt/catalyzer/runner.py"]

    /// `handler(event)`: `exit` → the process exits at once, `log` → printed to stderr, `sleep` →
    /// seconds slept; returns what it did.
    static let sleepyModule = """
        import os, sys, time
        def handler(event):
            if "exit" in event:
                os._exit(event["exit"])
            if "log" in event:
                print(event["log"], file=sys.stderr, flush=True)
            if "sleep" in event:
                time.sleep(event["sleep"])
            return {"slept": event.get("sleep", 0), "tag": event.get("tag")}
        """

    /// Writes the module to /tmp before the ready point, then runs the runner on it (as
    /// CatalyzerRuntimeTests' ConcurrentFunctionTests do), so the rootfs needs no extra file.
    static var sleepyCommand: [String] {
        ["/usr/bin/python3", "-c", """
            import runpy, sys
            with open("/tmp/function.py", "w") as f:
                f.write('''\(sleepyModule)''')
            sys.argv = ["runner.py", "/tmp/function.py"]
            runpy.run_path("/opt/catalyzer/runner.py", run_name="__main__")
            """]
    }

    private static let shared = Mutex<Result<ServeScene, any Error>?>(nil)

    /// The scene, made on first use by whichever test comes first.
    static func get() throws -> ServeScene {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (to mount catalyzerfs)")))
        try #require(TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("/dev/kvm")))
        try #require(TestEnvironment.hasFUSE, Comment(rawValue: TestEnvironment.requirementMessage("/dev/fuse")))
        try #require(FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/boto3"),
                     Comment(rawValue: TestEnvironment.requirementMessage("Debian's python3-boto3 (Scripts/bootstrap.sh installs it)")))
        return try shared.withLock { slot in
            if slot == nil {
                slot = Result { try ServeScene() }
                atexit { ServeScene.unmountShared() }
            }
            return try slot!.get()
        }
    }

    private static func unmountShared() {
        guard case .success(let scene)? = shared.withLock({ $0 }) else { return }
        _ = try? Command.run(Command.binary("catalyzer"), ["mount", "--unmount"], environment: scene.environment)
        scene.directory.remove()
    }

    private init() throws {
        directory = try TemporaryDirectory("serve")
        storeRoot = directory.path + "/store"
        runDirectory = directory.path + "/run"
        let rootfs = try PythonRootfs.path()
        try checkpoint("hello", rootfs: rootfs, Self.runner + ["/functions/hello.py"])
        try checkpoint("heavy", rootfs: rootfs, Self.runner + ["/functions/heavy.py"])
        try checkpoint("sleepy", rootfs: rootfs, Self.sleepyCommand)
        // `broken`: hello with a state blob no restore can decode, the service's `cannotStart`.
        let store = ImageStore(root: storeRoot)
        try StoreSurgery.copy(store, "hello", to: "broken")
        try StoreSurgery.replaceState(store, "broken", with: Array("not a monitor state".utf8))
    }

    @discardableResult
    func catalyzer(_ arguments: [String], stdin: Data? = nil) throws -> CommandResult {
        try Command.run(Command.binary("catalyzer"), arguments, stdin: stdin, environment: environment)
    }

    private func checkpoint(_ name: String, rootfs: String, _ command: [String]) throws {
        let result = try catalyzer(["checkpoint", "--rootfs", rootfs, "--name", name, "--memory", "128M", "--"] + command)
        try #require(result.status == 0, "checkpoint \(name) failed: \(result)")
    }

    /// What `catalyzer invoke NAME --input EVENT` answers: the runner's `result`.
    func invokeResult(_ name: String, _ event: String) throws -> NSObject? {
        let result = try catalyzer(["invoke", name, "--input", event])
        try #require(result.status == 0, "catalyzer invoke \(name) failed: \(result)")
        let line = try #require(LambdaClient.value(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) as? NSDictionary)
        return line["result"] as? NSObject
    }

    /// Starts a daemon on this store.
    func daemon(_ arguments: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) throws -> ServeDaemon {
        try ServeDaemon(arguments, environment: environment, sourceLocation: sourceLocation)
    }

    /// A keys file (mode 600) listing `keys`.
    func keysFile(_ keys: [(String, String)], mode: mode_t = 0o600) throws -> String {
        let path = directory.path + "/keys-\(UUID().uuidString)"
        try (["# test keys"] + keys.map { "\($0.0) \($0.1)" }).joined(separator: "\n").write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, mode)
        return path
    }
}

