import ArgumentParser
import CatalyzerBench
import CatalyzerBenchmarks
import CatalyzerImage
import CatalyzerRuntime
import Foundation

/// `catalyzer bench functions`: each function of a suite, created with `function create`, started
/// on the host, cold in a sandbox, restored (cold and warm page cache) and forked.
struct FunctionsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "functions",
        abstract: "Host and sandbox cold starts against restore and sfork, for every function of a suite (Examples/functions).",
        discussion: """
            Each subdirectory of --suite with a bench.json (its event, and its runtime and memory where they \
            are not python3.11 and 256M) is created with `function create` into a temporary store (Python \
            requirements come from PyPI), its working set recorded. Then --runs rounds of these modes run \
            interleaved, each serving the event and giving the answer the host gives: \
            host-cold (the runner as a host process chrooted into the function's rootfs, spawn to response: \
            no sandbox); sandbox-cold (a fresh sandbox from nothing to its first write to stdout); \
            restore-cold (a restore through a fresh catalyzerfs mount: empty page cache and chunk cache, the \
            working set prefetched); restore-warm (the image's pages already in the page cache); sfork (a \
            fork of the parked template, request to the first write to stdout). Speedups are the \
            sandbox-cold median over each mode's. Needs root, /dev/kvm and /dev/fuse.

            JSON (--json): [{function, runtime, imageMemoryBytes, imageLayerBytes, workingSetBytes, \
            modes: [{mode, medianMillis, p99Millis, speedupOverSandboxCold, samplesMillis}]}].
            """)

    @Option(help: "The suite: a directory of function directories, each with a bench.json.") var suite = "Examples/functions"
    @Option(name: .customLong("function"), help: "Run only these functions of the suite (repeatable).") var only: [String] = []
    @Option(help: "The python3.11 runtime rootfs (Scripts/build-rootfs.sh DIR).") var pythonRootfs: String?
    @Option(help: "The Node.js runtime rootfs (Scripts/build-rootfs.sh --runtime nodejs DIR).") var nodeRootfs: String?
    @Option(help: "Rounds of every mode per function (at least 10 for a p99 worth reading).") var runs = 5
    @Option(help: "The catalyzerfs daemon (default: next to this binary, in PATH, or /usr/local/bin).") var catalyzerfs: String?
    @Option(help: "Directory for the temporary store and mountpoints.") var workDir = NSTemporaryDirectory()
    @Flag(help: "Print the figures as JSON.") var json = false

    func validate() throws {
        guard runs >= 1 else { throw ValidationError("--runs must be at least 1") }
    }

    func run() async throws {
        try await Output.runAsync {
            guard let daemon = catalyzerfs ?? BenchMount.findDaemon() else {
                throw ValidationError("cannot find the catalyzerfs daemon: build it (swift build --product catalyzerfs) or pass --catalyzerfs")
            }
            var functions = try FunctionsBenchmark.Function.suite(suite)
            if !only.isEmpty {
                let unknown = Set(only).subtracting(functions.map(\.name))
                guard unknown.isEmpty else {
                    throw ValidationError("--function \(unknown.sorted().joined(separator: ", ")): not in \(suite) (it has \(functions.map(\.name).joined(separator: ", ")))")
                }
                functions = functions.filter { only.contains($0.name) }
            }
            var rootfs: [FunctionRuntime: String] = [:]
            rootfs[.python311] = pythonRootfs
            rootfs[.nodejs] = nodeRootfs
            var benchmark = FunctionsBenchmark(functions: functions, runtimeRootfs: rootfs, daemon: daemon)
            benchmark.runs = runs
            benchmark.workDirectory = workDir
            let rows = try await benchmark.run(log: { Output.err($0) })
            if json { return Output.json(rows) }
            Output.out(Self.render(rows, runs: runs))
        }
    }

    static func render(_ rows: [FunctionsBenchmark.Row], runs: Int) -> String {
        var table = Table(["FUNCTION", "RUNTIME", "MODE", "MEDIAN ms", "P99 ms", "SPEEDUP", "IMAGE", "WORKING SET"])
        for row in rows {
            for (index, mode) in row.modes.enumerated() {
                table.add([index == 0 ? row.function : "", index == 0 ? row.runtime : "", mode.mode.rawValue,
                           Format.fixed(mode.medianMillis, 2), Format.fixed(mode.p99Millis, 2),
                           mode.mode == .sandboxCold ? "1.0x" : Format.fixed(mode.speedupOverSandboxCold, 1) + "x",
                           index == 0 ? ByteCount.format(row.imageMemoryBytes) + " + " + ByteCount.format(row.imageLayerBytes) + " layers" : "",
                           index == 0 ? ByteCount.format(Int64(row.workingSetBytes)) : ""])
            }
        }
        return table.rendered + "\n\(runs) runs per mode, interleaved; speedup: the sandbox-cold median over the mode's median.\n"
    }
}
