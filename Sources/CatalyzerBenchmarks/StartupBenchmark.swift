import CKVM
import CatalyzerBench
import CatalyzerImage
import CatalyzerKernel
import CatalyzerRuntime
import Foundation
import Glibc

/// `catalyzer bench startup`: what a restore from an image saves over a cold start, measured on
/// one sample Python function in one process, every mode ending at the same point: the program's
/// first write to stdout (its response), as the kernel's milestones record it.
///
/// Modes, interleaved round-robin so that machine noise hits all of them alike:
/// - `cold-start`: a fresh sandbox runs `python3 /opt/catalyzer/runner.py /functions/NAME.py`
///   from nothing (VM, ld.so, interpreter, imports) and serves one request.
/// - `restore-cold`: `Invocation.run` of the image through a fresh catalyzerfs mount
///   (`prefetch=off`) for every run, as on a node that never ran the function: the page cache and
///   the daemon's chunk cache are empty, so every chunk the function touches is fetched from the
///   store, verified and decompressed on its first FUSE read.
/// - `restore-warm`: the same image on a mount of its own whose page cache a warm-up restore
///   filled: what the second sandbox of an image sees.
/// - `restore-cold-prefetch`: as `restore-cold` but with `prefetch=on`, which pushes the recorded
///   chunks into the empty page cache while the sandbox restores, for images without a page
///   working set; the benchmark's image has one, so this mode shows that `prefetch=on` (the
///   managed mount's default) costs such images nothing.
/// - `restore-cold-other-request`: as `restore-cold`, serving a request unlike the recorded one,
///   so part of what it touches is outside the working set and comes through FUSE.
/// - `sfork`: a fork of the image's template, parked on the warm mount (`FunctionTemplate`),
///   timed from the fork's start to its first response.
///
/// All restore modes restore the one image the benchmark checkpointed into its temporary
/// store (its working set recorded once), so they differ only in where its pages come from.
public struct StartupBenchmark: Sendable {
    /// The sample functions of the rootfs, each with the request every run serves and the answer
    /// that run must give.
    public enum Function: String, Sendable, CaseIterable {
        case hello, heavy

        /// The request line.
        public var request: String {
            switch self {
            case .hello: #"{"name":"bench"}"#
            case .heavy: #"{"customer":"customer-7"}"#
            }
        }

        /// A request unlike the recorded one: other values, and input that takes code paths the
        /// recording did not (non-ASCII text; a list echoed back), so some of what it touches is
        /// outside the working set.
        public var otherRequest: String {
            switch self {
            case .hello: #"{"name":"Zoë, ☃ visitor"}"#
            case .heavy: #"{"customer":"customer-321","n":5,"tags":["a","b",{"deep":[1.5,null]}]}"#
            }
        }

        /// Whether `answer` is this function's response to `request` (or `otherRequest`).
        fileprivate func accepts(_ answer: Response.Answer, other: Bool) -> Bool {
            switch (self, other) {
            case (.hello, false): answer.greeting == "Hello, bench!"
            case (.hello, true): answer.greeting == "Hello, Zoë, ☃ visitor!"
            case (.heavy, false): answer.customer == "customer-7" && answer.orders == 40
            case (.heavy, true): answer.customer == "customer-321" && answer.orders == 40
            }
        }
    }

    public enum Mode: String, Sendable, CaseIterable, Codable {
        case coldStart = "cold-start"
        case restoreCold = "restore-cold"
        case restoreWarm = "restore-warm"
        case restoreColdPrefetch = "restore-cold-prefetch"
        case restoreColdOtherRequest = "restore-cold-other-request"
        /// A fork of a template parked at the ready point on the warm mount (sfork): a pooled VM
        /// reset to the template's memory, the kernel state cloned in memory.
        case sfork
        /// References, not Catalyzer: the same command on the host under chroot (no sandbox), to
        /// its first response; and under gVisor's `runsc run` (when installed), start to exit
        /// after serving the request.
        case hostPython = "host-python"
        case runsc

        /// Whether the mode serves `Function.otherRequest` rather than the recorded request.
        public var servesOtherRequest: Bool { self == .restoreColdOtherRequest }
    }

    /// One timed run.
    public struct Sample: Sendable {
        /// From the start (before the VM is created, or before the restore resolves the mount and
        /// opens the memory file) to the program's first write to stdout.
        public var responseMicroseconds: Double
        /// The restore's phase ends (restore modes only).
        public var timings: InvocationTimings?
        /// FUSE reads catalyzerfs served for the image and the compressed bytes it fetched from
        /// the store during the run, prefetch included (restore modes only).
        public var fuseReads: UInt64?
        public var bytesFetched: UInt64?
    }

    public struct Report: Sendable {
        public var function: Function
        public var image: ImageCreateReport
        public var workingSet: WorkingSetReport
        public var samples: [Mode: [Sample]]
    }

    public var rootfs: String
    public var function: Function
    /// The catalyzerfs executable the benchmark mounts its store with.
    public var daemon: String
    /// Timed runs of each mode.
    public var runs = 10
    /// Guest memory of the cold sandbox and of the image.
    public var memorySize = 256 << 20
    /// Where the temporary store and mountpoints go.
    public var workDirectory = NSTemporaryDirectory()
    /// A run that takes longer than this is stopped and fails the benchmark.
    public var timeoutSeconds = 60.0
    /// How the image's chunks are compressed: decompression is most of a cold restore's cost.
    public var codec = Codec.zstd
    /// The image's chunk size: the unit a first touch fetches and decompresses.
    public var chunkSize = ChunkSize.default

    public init(rootfs: String, function: Function, daemon: String) {
        self.rootfs = rootfs
        self.function = function
        self.daemon = daemon
    }

    static let python = "/usr/bin/python3"
    static let environment = ["PATH=/usr/bin:/bin"]
    static let coldMountOptions = "prefetch=off"
    static let prefetchMountOptions = "prefetch=on"

    private var imageOptions: ImageCreateOptions {
        var options = ImageCreateOptions()
        options.codec = codec
        options.chunkSize = chunkSize
        return options
    }

    public func run(log: (String) -> Void) throws -> Report {
        let work = try BenchWorkDirectory.make(in: workDirectory, benchmark: "startup")
        defer { try? FileManager.default.removeItem(atPath: work) }
        let store = ImageStore(root: work + "/store")
        let image = function.rawValue

        log("bench startup: checkpointing \(image) at its ready point")
        let request = CheckpointRequest(name: image, rootfs: rootfs, memorySize: memorySize, programPath: Self.python,
                                        arguments: PythonBenchmark.arguments(function: image), environment: Self.environment,
                                        timeoutSeconds: timeoutSeconds, image: imageOptions)
        let created = try Checkpointer.checkpoint(request, store: store).image

        let warm = try BenchMount(daemon: daemon, store: store.root, mountpoint: work + "/warm", options: Self.coldMountOptions)
        defer { warm.unmount() }
        log("bench startup: recording the working set of \(function.request)")
        let workingSet = try WorkingSetRecorder.record(image: image, store: store, mount: warm.mountpoint, input: function.request)
        // Untimed: fills the warm mount's page cache (the recording may have seen the image's
        // previous version, before its working set was published).
        _ = try restore(image, on: warm, store: store, mode: .restoreWarm)

        // Released before the warm mount is unmounted (it holds the memory file open there).
        var parked: FunctionTemplate? = try FunctionTemplate(image: image, mount: try CatalyzerMount.resolve(mount: warm.mountpoint, store: store),
                                                             store: store, poolSize: 1)
        defer { parked = nil }
        let template = parked!
        _ = try fork(template)  // untimed: the first fork's VM comes back reset and parked

        var samples: [Mode: [Sample]] = [:]
        for round in 1...max(1, runs) {
            log("bench startup: round \(round) of \(max(1, runs))")
            samples[.coldStart, default: []].append(try coldStart())

            let cold = try BenchMount(daemon: daemon, store: store.root, mountpoint: work + "/cold", options: Self.coldMountOptions)
            defer { cold.unmount() }
            try lookUp(image, on: cold)
            let coldRestore = try restore(image, on: cold, store: store, mode: .restoreCold)
            guard coldRestore.bytesFetched ?? 0 > 0 else {
                throw RuntimeError("bench startup: a restore on a fresh mount fetched nothing from the store (\(cold.mountpoint)/\(image)/memory)")
            }
            samples[.restoreCold, default: []].append(coldRestore)

            samples[.restoreWarm, default: []].append(try restore(image, on: warm, store: store, mode: .restoreWarm))

            let prefetching = try BenchMount(daemon: daemon, store: store.root, mountpoint: work + "/prefetch",
                                             options: Self.prefetchMountOptions)
            defer { prefetching.unmount() }
            try lookUp(image, on: prefetching)
            var prefetched = try restore(image, on: prefetching, store: store, mode: .restoreColdPrefetch)
            let settled = try settledCounters(of: image, on: prefetching, workingSetChunks: workingSet.chunks)
            prefetched.fuseReads = settled.readsServed
            prefetched.bytesFetched = settled.bytesFetched
            samples[.restoreColdPrefetch, default: []].append(prefetched)

            let other = try BenchMount(daemon: daemon, store: store.root, mountpoint: work + "/other", options: Self.coldMountOptions)
            defer { other.unmount() }
            try lookUp(image, on: other)
            samples[.restoreColdOtherRequest, default: []].append(try restore(image, on: other, store: store, mode: .restoreColdOtherRequest))

            samples[.sfork, default: []].append(try fork(template))

            let host = try PythonBenchmark.hostStart(rootfs: rootfs, function: function.rawValue)
            samples[.hostPython, default: []].append(Sample(responseMicroseconds: host.nanoseconds / 1000))
            if RunscBaseline.executable != nil {
                let runsc = try RunscBaseline.startToExit(rootfs: rootfs, arguments: PythonBenchmark.arguments(function: image),
                                                          runs: 1, input: function.request + "\n")
                samples[.runsc, default: []].append(contentsOf: runsc.values.map { Sample(responseMicroseconds: $0 * 1e6) })
            }
        }
        return Report(function: function, image: created, workingSet: workingSet, samples: samples)
    }

    // MARK: Runs

    /// A fresh sandbox from nothing to its first response.
    private func coldStart() throws -> Sample {
        let streams = try RunStreams(request: function.request)
        var configuration = SandboxConfiguration(rootDirectory: rootfs, memorySize: memorySize, programPath: Self.python,
                                                 arguments: PythonBenchmark.arguments(function: function.rawValue),
                                                 environment: Self.environment)
        configuration.standardStreams = streams.fds
        let started = Sandbox.monotonicNanoseconds()
        let kernel = try Sandbox(configuration: configuration)
        let exit = try kernel.run(timeoutSeconds: timeoutSeconds)
        try check(exit, streams, .coldStart)
        guard let answered = kernel.milestones.firstStandardOutput else {
            throw RuntimeError("bench startup: the cold start of \(function.rawValue) answered, but the kernel recorded no write to stdout")
        }
        return Sample(responseMicroseconds: Double(answered - started) / 1000)
    }

    /// One restore of `image` through `mount`, as `catalyzer invoke` does it, with the daemon's
    /// counters read around it (outside the timed span).
    private func restore(_ image: String, on mount: BenchMount, store: ImageStore, mode: Mode) throws -> Sample {
        let streams = try RunStreams(request: mode.servesOtherRequest ? function.otherRequest : function.request)
        let before = try mount.counters(image)
        var request = InvocationRequest(image: image, store: store)
        request.mount = mount.mountpoint
        request.standardStreams = streams.fds
        request.timeoutSeconds = timeoutSeconds
        let result = try Invocation.run(request)
        let after = try mount.counters(image)
        try check(result.exit, streams, mode)
        guard let response = result.timings.responseMicroseconds else {
            throw RuntimeError("bench startup: a \(mode.rawValue) run of \(function.rawValue) answered, but the kernel recorded no write to stdout")
        }
        return Sample(responseMicroseconds: response, timings: result.timings,
                      fuseReads: after.readsServed - before.readsServed, bytesFetched: after.bytesFetched - before.bytesFetched)
    }

    /// One fork of `template` serving the request, timed from the fork's start (taking a parked
    /// VM) to its first write to stdout.
    private func fork(_ template: FunctionTemplate) throws -> Sample {
        let streams = try RunStreams(request: function.request)
        var options = RestoreOptions()
        options.standardStreams = streams.fds
        let started = Sandbox.monotonicNanoseconds()
        let forked = try template.fork(options: options)
        let (exit, milestones) = try forked.run(timeoutSeconds: timeoutSeconds)
        try check(exit, streams, .sfork)
        guard let answered = milestones.firstStandardOutput else {
            throw RuntimeError("bench startup: a fork of \(function.rawValue) answered, but the kernel recorded no write to stdout")
        }
        return Sample(responseMicroseconds: Double(answered &- started) / 1000)
    }

    /// Fails unless the run exited cleanly after answering its request correctly: a failed run
    /// is an error, never a sample.
    private func check(_ exit: SandboxExit, _ streams: RunStreams, _ mode: Mode) throws {
        let output = streams.contents(of: streams.standardOutput)
        let firstLine = output.split(separator: "\n", maxSplits: 1).first.map(String.init) ?? ""
        let response = try? JSONDecoder().decode(Response.self, from: Data(firstLine.utf8))
        guard exit == .exited(status: 0), let response, response.ok, let answer = response.result,
              function.accepts(answer, other: mode.servesOtherRequest) else {
            let errors = streams.contents(of: streams.standardError)
            throw RuntimeError("bench startup: a \(mode.rawValue) run of \(function.rawValue) failed: it ended with \(exit) after serving \(mode.servesOtherRequest ? function.otherRequest : function.request)"
                               + "\n--- stdout\n\(output)\n--- stderr\n\(errors)")
        }
    }

    // MARK: Mounts and counters

    /// Looks up the image's files on a fresh mount without opening them (an open would start
    /// the prefetch): the timed restore then finds their dentries cached, as on the other mounts
    /// and on any mount that has served the image before.
    private func lookUp(_ image: String, on mount: BenchMount) throws {
        for file in ["memory", "state"] {
            var status = stat()
            let path = mount.mountpoint + "/" + image + "/" + file
            guard stat(path, &status) == 0 else { throw RuntimeError("bench startup: cannot stat \(path): \(String(cString: strerror(errno)))") }
        }
    }

    /// The image's counters on a fresh prefetch mount once its prefetch is over: all of the
    /// working set pushed, or nothing changing for 50 ms (the daemon stops pushing once the
    /// kernel forgets the closed file). Prefetch may outlast the response, and what it fetches
    /// belongs to the run.
    private func settledCounters(of image: String, on mount: BenchMount, workingSetChunks: Int) throws -> BenchMount.Counters {
        var counters = try mount.counters(image)
        var quiet = 0
        let deadline = Sandbox.monotonicNanoseconds() + UInt64(timeoutSeconds * 1e9)
        while counters.prefetchedChunks < UInt64(workingSetChunks) && quiet < 10 && Sandbox.monotonicNanoseconds() < deadline {
            usleep(5000)
            let next = try mount.counters(image)
            let moved = next.bytesFetched != counters.bytesFetched || next.prefetchedChunks != counters.prefetchedChunks
            quiet = moved ? 0 : quiet + 1
            counters = next
        }
        return counters
    }
}

/// The runner's response line, as far as the benchmark checks it.
private struct Response: Decodable {
    struct Answer: Decodable {
        var greeting: String?
        var customer: String?
        var orders: Int?
    }

    var ok: Bool
    var result: Answer?
}

/// A run's standard streams: stdin a pipe holding the request line with its write end closed
/// (the runner exits after answering), stdout and stderr memfds (never full, read after the run).
final class RunStreams {
    let standardInput: Int32
    let standardOutput: Int32
    let standardError: Int32

    var fds: [Int32] { [standardInput, standardOutput, standardError] }

    init(request: String) throws {
        standardInput = try RequestPipe.holding(request)
        standardOutput = ckvm_memfd_create("catalyzer-bench-stdout")
        standardError = ckvm_memfd_create("catalyzer-bench-stderr")
        guard standardOutput >= 0, standardError >= 0 else {
            throw RuntimeError("bench startup: cannot set up a run's standard streams: \(String(cString: strerror(errno)))")
        }
    }

    /// What the program wrote to `fd`, as text.
    func contents(of fd: Int32) -> String {
        let size = Int(lseek(fd, 0, SEEK_END))
        guard size > 0 else { return "" }
        var bytes = [UInt8](repeating: 0, count: size)
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        return String(decoding: bytes.prefix(max(0, count)), as: UTF8.self)
    }

    deinit {
        for fd in fds where fd >= 0 { close(fd) }
    }
}
