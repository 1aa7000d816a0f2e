import CatalyzerBench
import CatalyzerImage
import CatalyzerKernel
import CatalyzerRuntime
import Foundation
import Glibc

/// `catalyzer bench serve`: what an invocation costs in the resident daemon, for each way an
/// instance can be had, measured in one process and interleaved round by round:
/// - `sfork`: a fork of the parked template in a pooled VM (`ForkingFunctionService`), from the
///   request to the function's first write to stdout (its response);
/// - `sfork-first-instruction`: the same forks, from the request to the first guest instruction;
/// - `http`, when an HTTP front end is given (`httpInvoke`): the sfork path through the daemon's
///   Lambda API on loopback, request sent to response body received;
/// - `restore`: a restore through catalyzerfs per request (`RestoringFunctionService`), the path
///   `catalyzer invoke` takes;
/// - `warm`: one instance reused for every request (`--reuse`), the floor for a sandbox;
/// - `host`: the runner as a host process (chrooted into the rootfs, not sandboxed) already
///   running the function: the floor without any sandbox.
/// Throughput is measured per mode with `concurrency` requests in flight.
public struct ServeBenchmark: Sendable {
    public enum Mode: String, Sendable, CaseIterable, Codable {
        case sfork
        case sforkFirstInstruction = "sfork-first-instruction"
        /// A fork in a VM trimmed as if it had idled (`FunctionTemplate.ParkingPolicy`): the first
        /// request after a quiet spell. Concurrency 1 only.
        case sforkIdle = "sfork-idle"
        case http
        case restore
        case warm
        case host
    }

    public struct Row: Sendable, Codable {
        public var mode: String
        public var concurrency: Int
        public var medianMillis: Double
        public var p99Millis: Double
        public var throughputPerSecond: Double?
        public var samples: Int
    }

    public struct Report: Sendable, Codable {
        public var function: String
        public var runs: Int
        public var modes: [Row]
        /// Host memory a parked pool VM holds privately right after the run, and once it has
        /// idled long enough to be trimmed (nil: no trim), and what a served fork held at its end.
        public var parkedVMPrivateBytes: Int?
        public var idleVMPrivateBytes: Int?
        public var forkPrivateBytesMedian: Int?
        /// The template's pool counters after the run.
        public var pooledVMs: Int
        public var createdVMs: Int
        public var recycledVMs: Int
        public var pagesResetPerFork: Double
    }

    public var rootfs: String
    public var function: StartupBenchmark.Function
    /// The catalyzerfs executable the benchmark mounts its store with.
    public var daemon: String
    public var runs = 50
    public var concurrencies = [1, 16]
    /// The fork service's VM pool per function (nil: the largest concurrency, at least 2) and
    /// what a parked VM keeps (`FunctionTemplate.ParkingPolicy`): the levers.
    public var poolSize: Int?
    public var parking = FunctionTemplate.ParkingPolicy()
    /// The modes to run (all but `sforkFirstInstruction`, which comes with `sfork`); `http` needs
    /// `httpFrontEnd`.
    public var modes: [Mode] = [.sfork, .sforkIdle, .restore, .warm, .host, .http]
    public var memorySize = 256 << 20
    public var workDirectory = NSTemporaryDirectory()
    public var timeoutSeconds = 30.0
    /// Sends one invocation through an HTTP front end serving `store` from `mount`; nil leaves
    /// the `http` mode out. Set up by the caller, which owns the server.
    public var httpFrontEnd: (@Sendable (_ store: ImageStore, _ mountpoint: String, _ service: any FunctionService) async throws -> HTTPInvoker)?

    /// One request through HTTP, returning once the response body is in: the nanoseconds from
    /// the request's first byte written to the response's last byte read, as the client's socket
    /// sees them (the benchmark's own hops to and from the client's thread left out, as the
    /// sfork mode leaves out its return to the caller).
    public typealias HTTPInvoker = @Sendable (_ function: String, _ event: String) async throws -> UInt64

    public init(rootfs: String, function: StartupBenchmark.Function, daemon: String) {
        self.rootfs = rootfs
        self.function = function
        self.daemon = daemon
    }

    public func run(log: @Sendable (String) -> Void) async throws -> Report {
        let work = try BenchWorkDirectory.make(in: workDirectory, benchmark: "serve")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let store = ImageStore(root: work + "/store")
        let name = function.rawValue
        log("bench serve: checkpointing \(name) at its ready point")
        let request = CheckpointRequest(name: name, rootfs: rootfs, memorySize: memorySize, programPath: "/usr/bin/python3",
                                        arguments: PythonBenchmark.arguments(function: name), environment: ["PATH=/usr/bin:/bin"],
                                        timeoutSeconds: timeoutSeconds)
        _ = try Checkpointer.checkpoint(request, store: store)
        let mount = try BenchMount(daemon: daemon, store: store.root, mountpoint: work + "/mount", options: "prefetch=off")
        defer { mount.unmount() }
        // The services hold the image's files open until they are gone: measure in a scope of
        // its own, so they are before the unmount.
        return try await measure(store: store, mount: mount, log: log)
    }

    private func measure(store: ImageStore, mount: BenchMount, log: @Sendable (String) -> Void) async throws -> Report {
        let name = function.rawValue

        let pool = poolSize ?? max(2, concurrencies.max() ?? 1)
        let forking = try ForkingFunctionService(store: store, mount: mount.mountpoint, poolSize: pool, parking: parking)
        // sfork-idle's forks, in VMs of their own, so that trimming them cannot slow sfork's.
        let idleForking = try ForkingFunctionService(store: store, mount: mount.mountpoint, poolSize: 1, parking: parking)
        let warm = try ForkingFunctionService(store: store, mount: mount.mountpoint, poolSize: 1, reuse: .max)
        // Both wait for their VMs still on the way back, so the mount is idle at its unmount.
        defer { warm.shutdown(); idleForking.shutdown(); forking.shutdown() }
        let restoring = RestoringFunctionService(store: store, mount: mount.mountpoint)
        let hosts = try HostRunners(rootfs: rootfs, function: name, count: concurrencies.max() ?? 1)
        defer { hosts.stop() }
        let http = try await httpFrontEnd?(store, mount.mountpoint, forking)
        let event = function.request
        let check = function

        func invoke(_ service: any FunctionService) async throws -> FunctionResponse {
            let response = try await service.invoke(FunctionRequest(function: name, event: Array(event.utf8), timeoutSeconds: timeoutSeconds))
            guard case .result(let bytes) = response.outcome, check.acceptsResult(bytes) else {
                throw RuntimeError("bench serve: \(name) answered \(response.outcome) to \(event); log: \(String(decoding: response.logTail, as: UTF8.self))")
            }
            return response
        }
        /// Milliseconds of one request in `mode`, and for sfork also to the first instruction.
        func once(_ mode: Mode, worker: Int) async throws -> (Double, Double?) {
            let started = Sandbox.monotonicNanoseconds()
            func since() -> Double { Double(Sandbox.monotonicNanoseconds() - started) / 1e6 }
            switch mode {
            case .sfork, .sforkFirstInstruction:
                let response = try await invoke(forking)
                guard let answered = response.responseNanoseconds, let entered = response.firstInstructionNanoseconds else {
                    throw RuntimeError("bench serve: a fork answered but recorded no milestones")
                }
                return (Double(answered) / 1e6, Double(entered) / 1e6)
            case .sforkIdle:
                // The VM the fork will take is the one last parked: let it come back, then trim.
                let template = try idleForking.template(for: name)
                let deadline = Sandbox.monotonicNanoseconds() + 100_000_000
                while template.vmsOnTheirWayBack > 0 && Sandbox.monotonicNanoseconds() < deadline { try await Task.sleep(for: .microseconds(50)) }
                template.trimNextParkedVM()
                let response = try await invoke(idleForking)
                guard let answered = response.responseNanoseconds else {
                    throw RuntimeError("bench serve: a fork answered but recorded no milestones")
                }
                return (Double(answered) / 1e6, nil)
            case .http:
                return (Double(try await http!(name, event)) / 1e6, nil)
            case .restore:
                _ = try await invoke(restoring)
                return (since(), nil)
            case .warm:
                _ = try await invoke(warm)
                return (since(), nil)
            case .host:
                try hosts.invoke(event, worker: worker, check: check)
                return (since(), nil)
            }
        }

        let modes = self.modes.filter { $0 != .sforkFirstInstruction && ($0 != .http || http != nil) }
        log("bench serve: warming up every mode")
        for mode in modes { _ = try await once(mode, worker: 0) }
        var latencies: [Mode: Samples] = [:]
        for round in 1...max(1, runs) {
            if round % 10 == 0 { log("bench serve: round \(round) of \(runs)") }
            for mode in modes {
                let (millis, firstInstruction) = try await once(mode, worker: 0)
                latencies[mode, default: Samples()].add(millis)
                if let firstInstruction { latencies[.sforkFirstInstruction, default: Samples()].add(firstInstruction) }
            }
        }
        var rows: [Row] = []
        for concurrency in concurrencies {
            for mode in modes where mode != .sforkIdle || concurrency == 1 {
                log("bench serve: throughput of \(mode.rawValue) with \(concurrency) in flight")
                let total = max(runs, 4 * concurrency)
                let started = Sandbox.monotonicNanoseconds()
                let measured = try await withThrowingTaskGroup(of: [(Double, Double?)].self) { group in
                    for worker in 0..<concurrency {
                        let share = total / concurrency + (worker < total % concurrency ? 1 : 0)
                        group.addTask {
                            var mine: [(Double, Double?)] = []
                            for _ in 0..<share { mine.append(try await once(mode, worker: worker)) }
                            return mine
                        }
                    }
                    var all: [(Double, Double?)] = []
                    for try await part in group { all += part }
                    return all
                }
                let seconds = Double(Sandbox.monotonicNanoseconds() - started) / 1e9
                let throughput = Double(measured.count) / seconds
                // At concurrency 1 the latencies are the interleaved rounds'; under load, these.
                let samples = concurrency == 1 ? latencies[mode]! : Samples(measured.map(\.0))
                rows.append(Row(mode: mode.rawValue, concurrency: concurrency, medianMillis: samples.median, p99Millis: samples.p99,
                                throughputPerSecond: throughput, samples: samples.count))
                if mode == .sfork {
                    let first = concurrency == 1 ? latencies[.sforkFirstInstruction]! : Samples(measured.compactMap(\.1))
                    rows.append(Row(mode: Mode.sforkFirstInstruction.rawValue, concurrency: concurrency, medianMillis: first.median,
                                    p99Millis: first.p99, throughputPerSecond: nil, samples: first.count))
                }
            }
        }
        if !modes.contains(.sfork) { _ = try await invoke(forking) }
        let template = try forking.template(for: name)
        func parkedBytes() -> Int? {
            ProcessMappings.anonymousBytes(in: template.parkedMemoryRanges).map { $0.bytes / max(1, $0.ranges) }
        }
        let hot = parkedBytes()
        var idle: Int?
        if let idleSeconds = parking.idleSeconds {
            // The pool as an idle daemon holds it: every parked VM trimmed.
            let deadline = Sandbox.monotonicNanoseconds() + UInt64((idleSeconds + 5) * 1e9)
            while template.parkedVMsNotTrimmed > 0 && Sandbox.monotonicNanoseconds() < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            idle = parkedBytes()
        }
        let counters = template.statistics
        let forks = counters.recycledVMs + counters.discardedVMs
        return Report(function: name, runs: runs, modes: rows, parkedVMPrivateBytes: hot, idleVMPrivateBytes: idle,
                      forkPrivateBytesMedian: nil, pooledVMs: counters.pooledVMs, createdVMs: counters.createdVMs,
                      recycledVMs: counters.recycledVMs, pagesResetPerFork: forks > 0 ? Double(counters.pagesReset) / Double(forks) : 0)
    }
}

extension StartupBenchmark.Function {
    /// Whether `result` (the handler's return value as JSON) answers `request`.
    func acceptsResult(_ result: [UInt8]) -> Bool {
        guard let object = try? JSONSerialization.jsonObject(with: Data(result)) as? [String: Any] else { return false }
        switch self {
        case .hello: return object["greeting"] as? String == "Hello, bench!"
        case .heavy: return object["customer"] as? String == "customer-7" && object["orders"] as? Int == 40
        }
    }
}

/// The unsandboxed floor: runner processes on the host, chrooted into the rootfs, each already
/// past its imports and waiting for a request line.
final class HostRunners: @unchecked Sendable {
    private var processes: [(process: Process, input: FileHandle, output: FileHandle)] = []

    init(rootfs: String, function: String, count: Int) throws {
        for _ in 0..<count {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/chroot")
            process.arguments = [rootfs] + PythonBenchmark.arguments(function: function)
            process.environment = ["PATH": "/usr/bin:/bin"]
            let input = Pipe(), output = Pipe()
            process.standardInput = input
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            try process.run()
            processes.append((process, input.fileHandleForWriting, output.fileHandleForReading))
        }
    }

    /// One request to runner `worker`, waiting for its response line.
    func invoke(_ event: String, worker: Int, check: StartupBenchmark.Function) throws {
        let runner = processes[worker % processes.count]
        try runner.input.write(contentsOf: Data((event + "\n").utf8))
        // The runner writes one line per request and nothing until the next: read to its end.
        var line: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while line.last != UInt8(ascii: "\n") {
            let count = buffer.withUnsafeMutableBytes { read(runner.output.fileDescriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw RuntimeError("bench serve: the host runner ended without answering") }
            line += buffer.prefix(count)
        }
        line.removeLast()
        guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any], object["ok"] as? Bool == true,
              let result = object["result"], let bytes = try? JSONSerialization.data(withJSONObject: result),
              check.acceptsResult(Array(bytes)) else {
            throw RuntimeError("bench serve: the host runner answered \(String(decoding: line, as: UTF8.self))")
        }
    }

    func stop() {
        for runner in processes {
            try? runner.input.close()
            runner.process.waitUntilExit()
        }
    }
}

/// What this process's mappings hold, from /proc/self/smaps.
public enum ProcessMappings {
    /// Anonymous (private, written) bytes of the mappings that lie inside `ranges`, and how many
    /// ranges there were; nil when smaps cannot be read.
    public static func anonymousBytes(in ranges: [(base: UInt, size: Int)]) -> (bytes: Int, ranges: Int)? {
        // Read to the end: procfs files report size 0, which whole-file readers trust.
        guard let file = FileHandle(forReadingAtPath: "/proc/self/smaps"), let data = try? file.readToEnd() else { return nil }
        let text = String(decoding: data, as: UTF8.self)
        var total = 0
        var inside = false
        for line in text.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
               let start = UInt(line[..<dash], radix: 16) {
                inside = ranges.contains { start >= $0.base && start < $0.base + UInt($0.size) }
            } else if inside, line.hasPrefix("Anonymous:") {
                let kilobytes = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
                total += kilobytes * 1024
            }
        }
        return (total, ranges.count)
    }
}
