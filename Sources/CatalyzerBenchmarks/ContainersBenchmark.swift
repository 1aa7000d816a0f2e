import CLinux
import CatalyzerBench
import CatalyzerKernel
import Foundation
import Glibc

/// `podman run --rm IMAGE python3 -c pass` under OCI runtimes side by side: catalyzer-runtime,
/// runc and runsc (gVisor), on one image podman imports from a rootfs, with storage of the
/// benchmark's own. Each sample is the wall time of the whole `podman run` (podman, conmon, the
/// runtime, the program, teardown), as a user sees it. Rounds interleave the runtimes, so drift
/// (page cache, CPU frequency) falls on all alike; one warm-up run per runtime is left out.
public struct ContainersBenchmark {
    public struct Runtime: Sendable {
        public var name: String
        public var path: String
        /// podman flags this runtime needs (runsc: `--runtime-flag network=none`, since gVisor's
        /// netstack refuses the root network namespace podman's `--network none` leaves it).
        public var podmanFlags: [String]

        public init(name: String, path: String, podmanFlags: [String] = []) {
            self.name = name
            self.path = path
            self.podmanFlags = podmanFlags
        }
    }

    public struct Row: Sendable, Codable {
        public var runtime: String
        public var medianMillis: Double
        public var p99Millis: Double
        /// Median and p99 over runc's, from the same run.
        public var medianOverRunc: Double?
        public var p99OverRunc: Double?
        public var samplesMillis: [Double]
    }

    public enum BenchmarkError: Error, CustomStringConvertible {
        case missing(String)
        case setup(step: String, status: Int32, output: String)
        case failed(runtime: String, status: Int32, output: String)

        public var description: String {
            switch self {
            case .missing(let what): "the containers benchmark needs \(what)"
            case .setup(let step, let status, let output): "\(step) failed (status \(status)): \(output)"
            case .failed(let runtime, let status, let output): "podman run under \(runtime) failed (status \(status)): \(output)"
            }
        }
    }

    public var rootfs: String
    public var runtimes: [Runtime]
    public var runs = 20
    /// Time a function-like container to its first output instead: cold under every runtime
    /// (`podman run -d` until "ready" is in its log), and `podman container restore` of its
    /// checkpoint under catalyzer-runtime (until its first line after the restore).
    public var measuresRestore = false
    /// The function-like container: an import-heavy initialization, then a line every 2 ms.
    public static let functionScript = """
        import json, decimal, sqlite3, asyncio, email.parser, http.client, xml.etree.ElementTree, unittest
        print('ready', flush=True)
        import time
        while True:
            time.sleep(0.002)
            print('tick', flush=True)
        """
    public var workDirectory = NSTemporaryDirectory()
    public var arguments = ["/usr/bin/python3", "-c", "pass"]

    public init(rootfs: String, runtimes: [Runtime]) {
        self.rootfs = rootfs
        self.runtimes = runtimes
    }

    static let image = "localhost/catalyzer-bench-containers:latest"
    static let limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "none"]

    public func run(progress: (String) -> Void = { _ in }) throws -> [Row] {
        guard access("/usr/bin/podman", X_OK) == 0 else { throw BenchmarkError.missing("podman (/usr/bin/podman; Scripts/bootstrap.sh installs it)") }
        for runtime in runtimes where access(runtime.path, X_OK) != 0 {
            throw BenchmarkError.missing("the \(runtime.name) runtime at \(runtime.path)")
        }
        let directory = workDirectory + "/catalyzer-bench-containers-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // podman refuses a runroot over 50 characters; its sockets and pid files go to a short one.
        var template = Array("/tmp/cbc-XXXXXX".utf8CString)
        guard let runRoot = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else {
            try? FileManager.default.removeItem(atPath: directory)
            throw BenchmarkError.missing("a directory under /tmp (\(String(cString: strerror(errno))))")
        }
        let storage = PodmanStorage(directory: directory, runRoot: runRoot)
        defer { storage.remove() }
        progress("importing \(rootfs) into podman")
        let tarball = directory + "/rootfs.tar"
        try storage.check(Self.spawn(["/bin/tar", "-C", rootfs, "-cf", tarball, "."]), "tar of \(rootfs)")
        try storage.check(Self.spawn(["/usr/bin/podman"] + storage.flags + ["import", tarball, Self.image]), "podman import")
        if measuresRestore { return try restoreRows(storage: storage, progress: progress) }
        var samples = [String: Samples]()
        for round in 0...runs {
            for runtime in runtimes {
                let command = ["/usr/bin/podman"] + storage.flags + ["--runtime", runtime.path] + runtime.podmanFlags
                    + ["run", "--rm"] + Self.limits + [Self.image] + arguments
                let started = Self.now()
                let result = try Self.spawn(command)
                let elapsed = Double(Self.now() - started) / 1e6
                guard result.status == 0 else { throw BenchmarkError.failed(runtime: runtime.name, status: result.status, output: result.output) }
                if round > 0 { samples[runtime.name, default: Samples()].add(elapsed) }
            }
            if round > 0 && round % 5 == 0 { progress("round \(round) of \(runs)") }
        }
        let runc = samples["runc"]
        return runtimes.map { runtime in
            let times = samples[runtime.name] ?? Samples()
            return Row(runtime: runtime.name, medianMillis: times.median, p99Millis: times.p99,
                       medianOverRunc: runc.map { times.median / max($0.median, 1e-9) },
                       p99OverRunc: runc.map { times.p99 / max($0.p99, 1e-9) }, samplesMillis: times.values)
        }
    }

    /// Cold starts to "ready" under every runtime, and restores of one checkpoint under ours
    /// (`restore --keep`, then `kill`, each round), interleaved.
    private func restoreRows(storage: PodmanStorage, progress: (String) -> Void) throws -> [Row] {
        guard let ours = runtimes.first(where: { $0.name == "catalyzer-runtime" }) else { throw BenchmarkError.missing("catalyzer-runtime") }
        func podman(_ runtime: Runtime?, _ arguments: [String]) throws -> (status: Int32, output: String) {
            try Self.spawn(["/usr/bin/podman"] + storage.flags + (runtime.map { ["--runtime", $0.path] + $0.podmanFlags } ?? []) + arguments)
        }
        func required(_ result: (status: Int32, output: String), _ what: String) throws -> String {
            guard result.status == 0 else { throw BenchmarkError.setup(step: what, status: result.status, output: result.output) }
            return result.output.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let runArguments = ["run", "-d"] + Self.limits + [Self.image, "/usr/bin/python3", "-c", Self.functionScript]
        // The container whose checkpoint every restore round starts from.
        let template = try required(podman(ours, runArguments), "podman run -d of the container to checkpoint")
        let templateLog = try required(podman(nil, ["inspect", template, "--format", "{{.HostConfig.LogConfig.Path}}"]), "podman inspect")
        guard LogWatch.waitFor("ready", in: templateLog, from: 0, seconds: 60) != nil else {
            throw BenchmarkError.setup(step: "the container to checkpoint", status: 1, output: "it never printed ready")
        }
        _ = try required(podman(ours, ["container", "checkpoint", template]), "podman container checkpoint")
        progress("checkpointed the function container; \(runs) rounds")
        var samples = [String: Samples]()
        let restoreName = "catalyzer-runtime restore"
        for round in 0...runs {
            for runtime in runtimes {
                let started = Self.now()
                let id = try required(podman(runtime, runArguments), "podman run -d under \(runtime.name)")
                let log = try required(podman(nil, ["inspect", id, "--format", "{{.HostConfig.LogConfig.Path}}"]), "podman inspect")
                guard let ready = LogWatch.waitFor("ready", in: log, from: 0, seconds: 60) else {
                    throw BenchmarkError.failed(runtime: runtime.name, status: 1, output: "the container never printed ready")
                }
                if round > 0 { samples[runtime.name + " run", default: Samples()].add(Double(ready - started) / 1e6) }
                _ = try podman(runtime, ["rm", "--force", "--time", "0", id])
            }
            let offset = LogWatch.size(templateLog)
            let started = Self.now()
            _ = try required(podman(ours, ["container", "restore", "--keep", template]), "podman container restore")
            guard let ticked = LogWatch.waitFor("tick", in: templateLog, from: offset, seconds: 60) else {
                throw BenchmarkError.failed(runtime: restoreName, status: 1, output: "the restored container printed nothing")
            }
            if round > 0 { samples[restoreName, default: Samples()].add(Double(ticked - started) / 1e6) }
            _ = try podman(ours, ["kill", template])
            _ = try podman(nil, ["wait", template])
            if round > 0 && round % 5 == 0 { progress("round \(round) of \(runs)") }
        }
        _ = try podman(ours, ["rm", "--force", "--time", "0", template])
        let runc = samples["runc run"]
        let names = runtimes.map { $0.name + " run" } + [restoreName]
        return names.map { name in
            let times = samples[name] ?? Samples()
            return Row(runtime: name, medianMillis: times.median, p99Millis: times.p99,
                       medianOverRunc: runc.map { times.median / max($0.median, 1e-9) },
                       p99OverRunc: runc.map { times.p99 / max($0.p99, 1e-9) }, samplesMillis: times.values)
        }
    }

    /// Watching a container's log file (podman's k8s-file log, written by conmon) for a line.
    enum LogWatch {
        static func size(_ path: String) -> Int {
            var status = stat()
            return stat(path, &status) == 0 ? Int(status.st_size) : 0
        }

        /// When `marker` first appears past `offset` (CLOCK_MONOTONIC ns), polling every 0.5 ms;
        /// nil after `seconds`.
        static func waitFor(_ marker: String, in path: String, from offset: Int, seconds: Double) -> UInt64? {
            let deadline = ContainersBenchmark.now() + UInt64(seconds * 1e9)
            let needle = Array(marker.utf8)
            var position = offset
            var pending: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 64 << 10)
            while ContainersBenchmark.now() < deadline {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                if fd >= 0 {
                    while true {
                        let count = pread(fd, &buffer, buffer.count, off_t(position))
                        guard count > 0 else { break }
                        pending += buffer.prefix(count)
                        position += count
                    }
                    close(fd)
                    if pending.count >= needle.count,
                       (0...(pending.count - needle.count)).contains(where: { pending[$0..<$0 + needle.count].elementsEqual(needle) }) {
                        return ContainersBenchmark.now()
                    }
                    pending = Array(pending.suffix(needle.count))
                }
                usleep(500)
            }
            return nil
        }
    }

    public static func table(_ rows: [Row]) -> String {
        var table = Table(["runtime", "median ms", "p99 ms", "median ×runc", "p99 ×runc"])
        for row in rows {
            table.add([row.runtime, Format.fixed(row.medianMillis, 1), Format.fixed(row.p99Millis, 1),
                       row.medianOverRunc.map { Format.fixed($0, 2) } ?? "-", row.p99OverRunc.map { Format.fixed($0, 2) } ?? "-"])
        }
        return table.rendered
    }

    /// podman's state for the benchmark alone, under its directory; removed with what podman
    /// mounted there.
    struct PodmanStorage {
        let directory: String
        let runRoot: String
        var flags: [String] {
            ["--root", directory + "/storage", "--runroot", runRoot, "--tmpdir", directory + "/tmp",
             "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        }

        func check(_ result: (status: Int32, output: String), _ what: String) throws {
            guard result.status == 0 else { throw BenchmarkError.setup(step: what, status: result.status, output: result.output) }
        }

        func remove() {
            _ = try? ContainersBenchmark.spawn(["/usr/bin/podman"] + flags + ["rm", "--all", "--force"])
            _ = try? ContainersBenchmark.spawn(["/bin/sh", "-c", "umount -R '\(directory)/storage/overlay' 2>/dev/null; umount -R '\(directory)/storage' 2>/dev/null; umount -R '\(runRoot)' 2>/dev/null; true"])
            try? FileManager.default.removeItem(atPath: directory)
            try? FileManager.default.removeItem(atPath: runRoot)
        }
    }

    static func now() -> UInt64 { Sandbox.monotonicNanoseconds() }

    /// Runs `command` with posix_spawn (podman's conmon outlives pipes: output goes to a file),
    /// stdin /dev/null; returns its status and output.
    static func spawn(_ command: [String]) throws -> (status: Int32, output: String) {
        let output = NSTemporaryDirectory() + "/catalyzer-bench-containers-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).out"
        defer { unlink(output) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        clinux_spawn_close_from(&actions, 3)
        var pid: pid_t = 0
        let argv = command.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let spawned = posix_spawn(&pid, command[0], &actions, nil, argv, Glibc.environ)
        guard spawned == 0 else { throw BenchmarkError.missing("\(command[0]) (\(String(cString: strerror(spawned))))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        return (status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F), String(text.suffix(2000)))
    }
}
