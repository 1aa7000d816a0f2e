import CatalyzerImage
import CatalyzerRuntime
import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// A temporary store and run directory (so the managed catalyzerfs mount is this scene's own),
/// and the `catalyzer` CLI run against them. Call `close()` in a `defer`: it unmounts.
final class RestoreScene {
    let directory: TemporaryDirectory
    let store: ImageStore
    let runDirectory: String

    init(_ label: String) throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (to mount catalyzerfs)")))
        try #require(TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("/dev/kvm")))
        try #require(TestEnvironment.hasFUSE, Comment(rawValue: TestEnvironment.requirementMessage("/dev/fuse")))
        directory = try TemporaryDirectory("restore-\(label)")
        store = ImageStore(root: directory.path + "/store")
        runDirectory = directory.path + "/run"
    }

    var environment: [String: String] { ["CATALYZER_STORE": store.root, "CATALYZER_RUN_DIR": runDirectory] }

    @discardableResult
    func catalyzer(_ arguments: [String], stdin: Data? = nil) throws -> CommandResult {
        try Command.run(Command.binary("catalyzer"), arguments, stdin: stdin, environment: environment)
    }

    /// Checkpoints `command` run against `rootfs` as `name`; the checkpoint must succeed.
    func checkpoint(_ name: String, rootfs: String, memory: String = "128M", options: [String] = [], _ command: [String],
                    sourceLocation: SourceLocation = #_sourceLocation) throws {
        let result = try catalyzer(["checkpoint", "--rootfs", rootfs, "--name", name, "--memory", memory] + options + ["--"] + command)
        try #require(result.status == 0, "checkpoint \(name) failed: \(result)", sourceLocation: sourceLocation)
    }

    func invoke(_ name: String, input: String? = nil, stdin: Data? = nil, options: [String] = []) throws -> CommandResult {
        try catalyzer(["invoke", name] + (input.map { ["--input", $0] } ?? []) + options, stdin: stdin)
    }

    /// Every file of the store with its size, modification time and (for small files) contents:
    /// what must not change while images are only restored.
    func storeListing() throws -> [String] {
        let root = store.root
        var listing: [String] = []
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let relative = enumerator?.nextObject() as? String {
            let path = root + "/" + relative
            var status = stat()
            guard lstat(path, &status) == 0 else { continue }
            var line = "\(relative) \(status.st_mode) \(status.st_size) \(status.st_mtim.tv_sec).\(status.st_mtim.tv_nsec)"
            if status.st_mode & S_IFMT == S_IFREG, status.st_size < 1 << 20 {
                line += " " + String((try? Data(contentsOf: URL(fileURLWithPath: path)))?.hashValue ?? 0)
            }
            listing.append(line)
        }
        return listing.sorted()
    }

    func close() {
        _ = try? catalyzer(["mount", "--unmount"])
        directory.remove()
    }
}

extension RestoreScene {
    /// The store mounted (`catalyzer mount`, undone by `close()`) and a fork service over it with
    /// a pool of one VM; the caller shuts it down.
    func forkingService(sourceLocation: SourceLocation = #_sourceLocation) throws -> ForkingFunctionService {
        let mounted = try catalyzer(["mount", "--store", store.root])
        try #require(mounted.status == 0, "\(mounted)", sourceLocation: sourceLocation)
        return try ForkingFunctionService(store: store, mount: mounted.stdout.trimmingCharacters(in: .whitespacesAndNewlines), poolSize: 1)
    }

    /// What a fork of `function` answers `event`: the handler's result, or nil (recorded as an
    /// issue) for any other outcome.
    func forkedResult(_ service: ForkingFunctionService, _ function: String, _ event: String,
                      sourceLocation: SourceLocation = #_sourceLocation) async throws -> [UInt8]? {
        let forked = try await service.invoke(FunctionRequest(function: function, event: Array(event.utf8), timeoutSeconds: 30))
        guard case .result(let bytes) = forked.outcome else {
            Issue.record("expected a result, got \(forked.outcome)", sourceLocation: sourceLocation)
            return nil
        }
        return bytes
    }
}

/// A tiny busybox rootfs whose function reads one line and answers it, for tests that change the
/// rootfs or need a program that fails before its ready point.
struct BusyboxRootfs {
    let path: String

    init(in directory: TemporaryDirectory) throws {
        path = directory.path + "/busybox-rootfs"
        let setup = try Command.run("/bin/sh", ["-c", "mkdir -p \(path)/bin \(path)/etc && cp /bin/busybox \(path)/bin/busybox && echo v1 > \(path)/etc/version"])
        try #require(setup.status == 0, "cannot build the busybox rootfs: \(setup)")
    }

    /// Reads /etc/version while initializing, then answers each line with `got LINE (VERSION)`.
    static let echoFunction = ["/bin/busybox", "sh", "-c", "v=$(/bin/busybox cat /etc/version); while read line; do echo \"got $line ($v)\"; done"]
}
