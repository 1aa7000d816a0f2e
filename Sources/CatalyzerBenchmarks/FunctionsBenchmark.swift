import CatalyzerBench
import CatalyzerImage
import CatalyzerKernel
import CatalyzerRuntime
import Foundation
import Glibc

/// `catalyzer bench functions`: every function of a suite (`Examples/functions`: SeBS-style
/// Python functions with their PyPI dependencies, and a Node.js one) created with
/// `function create` into a temporary store, then started every way there is, each run serving
/// the function's event and answering what the host answers:
/// - `host-cold`: the runner as a host process, chrooted into the function's rootfs (not
///   sandboxed), from spawn to its response line: the floor without a sandbox;
/// - `sandbox-cold`: a fresh sandbox from nothing (VM, ld.so, interpreter, imports) to its first
///   write to stdout;
/// - `restore-cold`: a restore through a fresh catalyzerfs mount (empty page cache and chunk
///   cache, as on a node that never ran the function) with the recorded working set prefetched;
/// - `restore-warm`: a restore with the image's pages already in the page cache;
/// - `sfork`: a fork of the function's parked template (`ForkingFunctionService`), from the
///   request to the first write to stdout.
/// Modes run interleaved, round by round, so machine noise hits all alike. Speedups are the
/// sandbox's cold start median over each mode's median.
public struct FunctionsBenchmark: Sendable {
    public enum Mode: String, Sendable, CaseIterable, Codable {
        case hostCold = "host-cold"
        case sandboxCold = "sandbox-cold"
        case restoreCold = "restore-cold"
        case restoreWarm = "restore-warm"
        case sfork
    }

    /// A function of the suite: a code directory with a `bench.json` giving its event and, where
    /// they differ from the defaults, its runtime, memory and handler.
    public struct Function: Sendable {
        public var name: String
        public var directory: String
        public var runtime: FunctionRuntime
        public var memory: Int
        public var handler: String
        /// The event, one line of JSON.
        public var event: String
        public var requirements: String?

        /// Every subdirectory of `suite` with a `bench.json`, by name.
        public static func suite(_ suite: String) throws -> [Function] {
            guard let entries = try? FileManager.default.contentsOfDirectory(atPath: suite) else {
                throw RuntimeError("bench functions: cannot list the suite \(suite)")
            }
            let functions = try entries.sorted().compactMap { name -> Function? in
                let directory = suite + "/" + name
                guard FileManager.default.fileExists(atPath: directory + "/bench.json") else { return nil }
                return try Function(directory: directory)
            }
            guard !functions.isEmpty else { throw RuntimeError("bench functions: \(suite) has no function directory with a bench.json") }
            return functions
        }

        public init(directory: String) throws {
            let path = directory + "/bench.json"
            guard let data = FileManager.default.contents(atPath: path),
                  let settings = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
                  let event = settings["event"], JSONSerialization.isValidJSONObject(event) || event is String || event is NSNumber else {
                throw RuntimeError("bench functions: \(path) is not a JSON object with an \"event\"")
            }
            name = URL(fileURLWithPath: directory).lastPathComponent
            self.directory = directory
            let runtimeName = settings["runtime"] as? String ?? FunctionRuntime.python311.rawValue
            guard let runtime = FunctionRuntime(rawValue: runtimeName) else {
                throw RuntimeError("bench functions: \(path) names runtime '\(runtimeName)'; runtimes are \(FunctionRuntime.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            self.runtime = runtime
            let memoryText = settings["memory"] as? String ?? "256M"
            guard let memory = ByteCount.parse(memoryText), memory >= 16 << 20, memory % 4096 == 0 else {
                throw RuntimeError("bench functions: \(path) gives memory '\(memoryText)'; give a size such as 256M")
            }
            self.memory = Int(memory)
            handler = settings["handler"] as? String ?? "app.handler"
            let encoded = try JSONSerialization.data(withJSONObject: event, options: [.fragmentsAllowed, .sortedKeys])
            self.event = String(decoding: encoded, as: UTF8.self)
            requirements = FileManager.default.fileExists(atPath: directory + "/requirements.txt") ? directory + "/requirements.txt" : nil
        }
    }

    public struct ModeFigures: Sendable, Codable {
        public var mode: Mode
        public var medianMillis: Double
        public var p99Millis: Double
        /// The sandbox's cold start median over this mode's.
        public var speedupOverSandboxCold: Double
        public var samplesMillis: [Double]
    }

    public struct Row: Sendable, Codable {
        public var function: String
        public var runtime: String
        /// The image's memory as stored (compressed chunks) and its rootfs layers.
        public var imageMemoryBytes: Int64
        public var imageLayerBytes: Int64
        /// What the recorded working set holds: the chunks the first request touched.
        public var workingSetBytes: Int
        public var modes: [ModeFigures]
    }

    public var functions: [Function]
    /// The runtime rootfs per runtime (`Scripts/build-rootfs.sh [--runtime nodejs] DIR`).
    public var runtimeRootfs: [FunctionRuntime: String]
    /// The catalyzerfs executable the benchmark mounts its store with.
    public var daemon: String
    public var runs = 5
    public var workDirectory = NSTemporaryDirectory()
    public var timeoutSeconds = 60.0

    public init(functions: [Function], runtimeRootfs: [FunctionRuntime: String], daemon: String) {
        self.functions = functions
        self.runtimeRootfs = runtimeRootfs
        self.daemon = daemon
    }

    public func run(log: @Sendable (String) -> Void) async throws -> [Row] {
        for function in functions where runtimeRootfs[function.runtime] == nil {
            throw RuntimeError("bench functions: \(function.name) is a \(function.runtime.rawValue) function; give its runtime rootfs (\(function.runtime.buildCommand))")
        }
        let work = try BenchWorkDirectory.make(in: workDirectory, benchmark: "functions")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let store = ImageStore(root: work + "/store")
        var rows: [Row] = []
        for function in functions {
            log("bench functions: creating \(function.name) (\(function.runtime.rawValue))")
            var request = FunctionCreateRequest(name: function.name, codeDirectory: function.directory,
                                                runtimeRootfs: runtimeRootfs[function.runtime]!)
            request.runtime = function.runtime
            request.handler = function.handler
            request.requirements = function.requirements
            request.memorySize = function.memory
            let created = try FunctionBuilder.create(request, store: store)
            rows.append(try await measure(function, created: created, store: store, work: work, log: log))
        }
        return rows
    }

    private func measure(_ function: Function, created: FunctionCreateReport, store: ImageStore, work: String,
                         log: @Sendable (String) -> Void) async throws -> Row {
        let image = try store.open(function.name)
        let layers = image.config.rootfs?.layers ?? []
        let rootfs = store.rootfsPath(for: layers)
        let launch = created.launch
        // The host's answer is the one every mode must give.
        let expected = try hostRun(function, rootfs: rootfs, launch: launch)

        let warm = try BenchMount(daemon: daemon, store: store.root, mountpoint: work + "/warm-" + function.name, options: "prefetch=off")
        defer { warm.unmount() }
        log("bench functions: recording the working set of \(function.name)")
        let workingSet = try WorkingSetRecorder.record(image: function.name, store: store, mount: warm.mountpoint, input: function.event)
        _ = try restore(function, on: warm, store: store, expected: expected.line)  // fills the warm mount's page cache

        let forking = try ForkingFunctionService(store: store, mount: warm.mountpoint, poolSize: 1)
        defer { forking.shutdown() }
        _ = try await fork(function, service: forking, expected: expected.line)  // parks the template

        var samples: [Mode: Samples] = [:]
        for round in 1...max(1, runs) {
            log("bench functions: \(function.name), round \(round) of \(max(1, runs))")
            samples[.hostCold, default: Samples()].add(try hostRun(function, rootfs: rootfs, launch: launch).millis)
            samples[.sandboxCold, default: Samples()].add(try sandboxColdStart(function, rootfs: rootfs, launch: launch, expected: expected.line))
            let cold = try BenchMount(daemon: daemon, store: store.root, mountpoint: work + "/cold-" + function.name, options: "prefetch=on")
            samples[.restoreCold, default: Samples()].add(try restore(function, on: cold, store: store, expected: expected.line))
            cold.unmount()
            samples[.restoreWarm, default: Samples()].add(try restore(function, on: warm, store: store, expected: expected.line))
            samples[.sfork, default: Samples()].add(try await fork(function, service: forking, expected: expected.line))
        }
        let coldMedian = samples[.sandboxCold]!.median
        let modes = Mode.allCases.map { mode in
            let figures = samples[mode]!
            return ModeFigures(mode: mode, medianMillis: figures.median, p99Millis: figures.p99,
                               speedupOverSandboxCold: figures.median > 0 ? coldMedian / figures.median : 0, samplesMillis: figures.values)
        }
        return Row(function: function.name, runtime: function.runtime.rawValue, imageMemoryBytes: created.checkpoint.image.storedBytes,
                   imageLayerBytes: created.layers.reduce(0) { $0 + $1.size }, workingSetBytes: workingSet.bytes, modes: modes)
    }

    // MARK: Runs

    /// The runner on the host, chrooted into the rootfs, from spawn to its response line.
    private func hostRun(_ function: Function, rootfs: String, launch: FunctionLaunch) throws -> (millis: Double, line: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/chroot")
        process.arguments = [rootfs] + launch.arguments
        process.environment = Dictionary(launch.environment.compactMap { entry -> (String, String)? in
            guard let equals = entry.firstIndex(of: "=") else { return nil }
            return (String(entry[..<equals]), String(entry[entry.index(after: equals)...]))
        }, uniquingKeysWith: { $1 })
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        let started = Sandbox.monotonicNanoseconds()
        try process.run()
        try input.fileHandleForWriting.write(contentsOf: Data((function.event + "\n").utf8))
        try input.fileHandleForWriting.close()
        var line: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        var answeredAt: UInt64 = 0
        while !line.contains(UInt8(ascii: "\n")) {
            let count = buffer.withUnsafeMutableBytes { read(output.fileHandleForReading.fileDescriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            if answeredAt == 0 { answeredAt = Sandbox.monotonicNanoseconds() }
            line += buffer.prefix(count)
        }
        process.waitUntilExit()
        let text = String(decoding: line.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
        guard text.hasPrefix(#"{"ok":true"#), answeredAt > 0 else {
            throw RuntimeError("bench functions: \(function.name) on the host answered \(text.isEmpty ? "nothing" : text) (exit \(process.terminationStatus))")
        }
        return (Double(answeredAt - started) / 1e6, text)
    }

    private func sandboxColdStart(_ function: Function, rootfs: String, launch: FunctionLaunch, expected: String) throws -> Double {
        let streams = try RunStreams(request: function.event)
        var configuration = SandboxConfiguration(rootDirectory: rootfs, memorySize: function.memory, programPath: launch.programPath,
                                                 arguments: launch.arguments, environment: launch.environment)
        configuration.standardStreams = streams.fds
        let started = Sandbox.monotonicNanoseconds()
        let sandbox = try Sandbox(configuration: configuration)
        let exit = try sandbox.run(timeoutSeconds: timeoutSeconds)
        try check(function, exit, streams, expected: expected, mode: .sandboxCold)
        guard let answered = sandbox.milestones.firstStandardOutput else {
            throw RuntimeError("bench functions: a cold start of \(function.name) answered, but the kernel recorded no write to stdout")
        }
        return Double(answered - started) / 1e6
    }

    private func restore(_ function: Function, on mount: BenchMount, store: ImageStore, expected: String) throws -> Double {
        let streams = try RunStreams(request: function.event)
        var request = InvocationRequest(image: function.name, store: store)
        request.mount = mount.mountpoint
        request.standardStreams = streams.fds
        request.timeoutSeconds = timeoutSeconds
        let result = try Invocation.run(request)
        try check(function, result.exit, streams, expected: expected, mode: .restoreCold)
        guard let response = result.timings.responseMicroseconds else {
            throw RuntimeError("bench functions: a restore of \(function.name) answered, but the kernel recorded no write to stdout")
        }
        return response / 1000
    }

    private func fork(_ function: Function, service: ForkingFunctionService, expected: String) async throws -> Double {
        let response = try await service.invoke(FunctionRequest(function: function.name, event: Array(function.event.utf8),
                                                                timeoutSeconds: timeoutSeconds))
        guard case .result(let bytes) = response.outcome, #"{"ok":true,"result":"# + String(decoding: bytes, as: UTF8.self) + "}" == expected,
              let answered = response.responseNanoseconds else {
            throw RuntimeError("bench functions: a fork of \(function.name) answered \(response.outcome), not the host's \(expected)")
        }
        return Double(answered) / 1e6
    }

    /// Fails unless the run exited cleanly with the host's answer: a failed run is an error, never a sample.
    private func check(_ function: Function, _ exit: SandboxExit, _ streams: RunStreams, expected: String, mode: Mode) throws {
        let output = streams.contents(of: streams.standardOutput)
        let firstLine = output.split(separator: "\n", maxSplits: 1).first.map(String.init) ?? ""
        guard exit == .exited(status: 0), firstLine == expected else {
            throw RuntimeError("bench functions: a \(mode.rawValue) run of \(function.name) ended with \(exit), answering \(firstLine), not the host's \(expected)"
                               + "\n--- stderr\n\(streams.contents(of: streams.standardError))")
        }
    }
}
