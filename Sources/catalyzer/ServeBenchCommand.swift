import ArgumentParser
import CatalyzerServe
import Logging
import CatalyzerBench
import CatalyzerBenchmarks
import CatalyzerRuntime
import Foundation

/// `catalyzer bench serve`: an invocation in the resident daemon, by fork of a parked template,
/// against a restore per request, a reused warm instance and a host process.
struct ServeBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "sfork against restore, a warm instance and a host process, per invocation and in throughput.",
        discussion: """
            The benchmark checkpoints `python3 /opt/catalyzer/runner.py /functions/NAME.py` from --rootfs \
            into a temporary store, mounts it with catalyzerfs, and times --runs rounds of these modes, \
            interleaved, each serving the sample request and checking its answer: \
            sfork (a fork of the parked template in a pooled VM, request to the first write to stdout); \
            sfork-first-instruction (the same forks, request to the first guest instruction); \
            sfork-idle (a fork in a VM trimmed first as --trim-after trims an idle one: the first \
            request after a quiet spell; concurrency 1 only); \
            restore (a restore through catalyzerfs per request, as `catalyzer invoke`); \
            warm (one instance reused for every request, as `serve --reuse`); \
            host (the runner as a host process in a chroot of the rootfs, already running: no sandbox). \
            Then, per --concurrency level, the same modes with that many requests in flight, for \
            throughput (and latency under load). At concurrency 1 the latencies are the interleaved \
            rounds'. Needs root, /dev/kvm and /dev/fuse.

            JSON (--json): {function, runs, modes: [{mode, concurrency, medianMillis, p99Millis, \
            throughputPerSecond, samples}], parkedVMPrivateBytes, idleVMPrivateBytes (after --trim-after), pooledVMs, createdVMs, recycledVMs, \
            pagesResetPerFork}. throughputPerSecond is null for sfork-first-instruction (a part of sfork).
            """)

    @Option(help: "The sample function.") var function: StartupBenchmark.Function
    @Option(help: "The Python function rootfs (Scripts/build-rootfs.sh OUTDIR).") var rootfs: String
    @Option(help: "Interleaved rounds at concurrency 1 (at least 20 for a p99 worth reading).") var runs = 50
    @Option(name: .customLong("concurrency"), help: "Requests in flight for the throughput runs (repeatable; default 1 and 16).")
    var concurrencies: [Int] = []
    @Option(name: .customLong("mode"), help: "Modes to run (repeatable; default all): sfork, sfork-idle, http, restore, warm, host.")
    var modes: [ServeBenchmark.Mode] = []
    @Option(help: "Lever: VMs parked per function for forks (default: the largest --concurrency, at least 2; 0: a new VM per fork).")
    var pool: Int?
    @Option(help: "Lever: written pages a parked VM keeps as private copies, reset by copying (default 1024; 0: give them all back).")
    var keptPages = 1024
    @Option(help: "Lever: a VM parked this long without a fork is trimmed to 1 MiB (default 2s, as `serve`).")
    var trimAfter = DurationArgument(argument: "2s")!
    @Flag(help: "Lever: never trim parked VMs.") var noTrim = false
    @Flag(inversion: .prefixedNo, help: "Lever: a new VM gets the pages the last fork wrote copied in (writable, with host page-table entries) before its first fork (default on).")
    var eagerCopy = true
    @Option(help: "Guest memory of the image.") var memory = ByteCountArgument(argument: "256M")!
    @Option(help: "The catalyzerfs daemon (default: next to this binary, in PATH, or /usr/local/bin).") var catalyzerfs: String?
    @Option(help: "Directory for the temporary store and mountpoint.") var workDir = NSTemporaryDirectory()
    @Flag(help: "Print the figures as JSON.") var json = false

    func validate() throws {
        guard runs >= 1 else { throw ValidationError("--runs must be at least 1") }
        guard (pool ?? 0) >= 0, keptPages >= 0 else { throw ValidationError("--pool and --kept-pages cannot be negative") }
        guard concurrencies.allSatisfy({ (1...256).contains($0) }) else { throw ValidationError("--concurrency must be 1 to 256") }
    }

    func run() async throws {
        try await Output.runAsync {
            guard let daemon = catalyzerfs ?? BenchMount.findDaemon() else {
                throw ValidationError("cannot find the catalyzerfs daemon: build it (swift build --product catalyzerfs) or pass --catalyzerfs")
            }
            var benchmark = ServeBenchmark(rootfs: rootfs, function: function, daemon: daemon)
            benchmark.runs = runs
            benchmark.concurrencies = concurrencies.isEmpty ? [1, 16] : concurrencies
            benchmark.memorySize = Int(memory.bytes)
            benchmark.workDirectory = workDir
            if !modes.isEmpty { benchmark.modes = modes }
            benchmark.poolSize = pool
            benchmark.parking = FunctionTemplate.ParkingPolicy(keptPages: keptPages, eagerCopy: eagerCopy,
                                                               idleSeconds: noTrim ? nil : Double(trimAfter.nanoseconds) / 1e9)
            benchmark.httpFrontEnd = { _, _, service in try await Self.startFrontEnd(service) }
            let report = try await benchmark.run(log: { Output.err($0) })
            if json { return Output.json(report) }
            Output.out(Self.render(report))
        }
    }

    /// The daemon's HTTP front end in this process on a free loopback port, in front of the
    /// benchmark's fork service, and a client that invokes through it.
    static func startFrontEnd(_ service: any FunctionService) async throws -> ServeBenchmark.HTTPInvoker {
        var logger = Logger(label: "catalyzer.bench.serve")
        logger.logLevel = .error
        let configuration = ServeConfiguration(listen: try ListenAddress(parsing: "127.0.0.1:0"), maxInstances: nil,
                                               timeoutSeconds: 30, accessKeys: nil)
        let (ports, listening) = AsyncStream.makeStream(of: Int.self)
        // Runs until the process exits (the benchmark's last act).
        Task.detached {
            do {
                try await ServeServer.run(configuration, service: service, logger: logger) { listening.yield($0.port) }
            } catch {
                Output.err("bench serve: the HTTP front end stopped: \(error)")
            }
            listening.finish()
        }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw RuntimeError("bench serve: the HTTP front end did not start") }
        let client = LoopbackHTTPClient(port: port)
        return { function, event in
            let response = try await client.post("/2015-03-31/functions/\(function)/invocations", body: Array(event.utf8))
            guard response.status == 200, response.headers["x-amz-function-error"] == nil else {
                throw RuntimeError("bench serve: HTTP invoke answered \(response.status): \(String(decoding: response.body, as: UTF8.self))")
            }
            return response.nanoseconds
        }
    }

    static func render(_ report: ServeBenchmark.Report) -> String {
        var table = Table(["MODE", "IN FLIGHT", "MEDIAN ms", "P99 ms", "REQ/S", "× SFORK (median)"])
        for row in report.modes {
            let sfork = report.modes.first { $0.mode == "sfork" && $0.concurrency == row.concurrency }
            table.add([row.mode, String(row.concurrency), Format.fixed(row.medianMillis, 3), Format.fixed(row.p99Millis, 3),
                       row.throughputPerSecond.map { Format.fixed($0, 0) } ?? "-",
                       sfork.map { Format.fixed(row.medianMillis / $0.medianMillis, 2) } ?? "-"])
        }
        var parked = report.parkedVMPrivateBytes.map { "\($0 / 1024) KiB anonymous memory per parked VM" } ?? "parked VM memory unknown"
        if let idle = report.idleVMPrivateBytes { parked += " (\(idle / 1024) KiB once trimmed for idling)" }
        return table.rendered + "\n\(report.function): \(report.runs) rounds; \(parked); pool: \(report.pooledVMs) VMs taken parked, "
            + "\(report.createdVMs) created on demand, \(report.recycledVMs) recycled, \(Format.fixed(report.pagesResetPerFork, 0)) pages reset per fork"
    }
}

extension ServeBenchmark.Mode: ExpressibleByArgument {}
