import CatalyzerBenchmarks
import ArgumentParser
import CatalyzerBench
import CatalyzerKernel
import Glibc

/// `catalyzer bench python`: cold start to first response of the sample Python functions, in the
/// sandbox and on the host.
struct PythonBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "python",
        abstract: "Cold start to first response of each sample Python function, in the sandbox and on the host.",
        discussion: """
            Each start runs `python3 /opt/catalyzer/runner.py /functions/NAME.py` from --rootfs (built by \
            Scripts/build-rootfs.sh) with one request on stdin and stops the clock at the first response \
            line. The host runs the same command under chroot in the same rootfs (directly if not root). \
            When Debian's runsc is installed, `runsc run` of the same command is timed too: from start \
            to exit with stdin at EOF (the runner imports the function, then finds no request). \
            Needs /dev/kvm.
            """)

    @Option(help: "The Python function rootfs (Scripts/build-rootfs.sh OUTDIR).") var rootfs: String
    @Option(help: "Comma-separated sample functions.") var functions = "hello,heavy"
    @Option(help: "Cold starts per function and side (at least 10 for a p99 worth reading).") var runs = 10
    @Option(help: "Guest memory per sandbox.") var memory = ByteCountArgument(argument: "512M")!
    @Flag(help: "Leave out the runsc baseline even if runsc is installed.") var noRunsc = false
    @Flag(help: "Print the rows as JSON.") var json = false

    struct Row: Encodable {
        var function: String
        var side: String
        var medianMillis: Double
        var p99Millis: Double
        /// Mean syscalls per start (sandbox only).
        var syscallsPerStart: Double?
        /// Mean page faults per start: monitor-handled guest faults, or the host process's faults.
        var pageFaultsPerStart: Double?
        var memoryMiB: Double?
        /// The sandbox's median over this row's median (baseline rows).
        var sandboxRatio: Double?
    }

    func run() throws {
        try Output.run {
            let names = functions.split(separator: ",").map(String.init)
            let results = try PythonBenchmark.run(rootfs: rootfs, functions: names, runs: max(1, runs),
                                                  memorySize: Int(memory.bytes), log: Output.err)
            var rows: [Row] = []
            for result in results {
                let sandbox = row(result.function, "sandbox", result.sandbox, sandboxMedian: nil)
                rows.append(sandbox)
                rows.append(row(result.function, "host python (chroot)", result.host, sandboxMedian: sandbox.medianMillis))
                if !noRunsc, RunscBaseline.executable != nil {
                    rows.append(try runscRow(result.function, sandboxMedian: sandbox.medianMillis))
                }
            }
            if json { return Output.json(rows) }
            var table = Table(["function", "where", "p50 ms", "p99 ms", "syscalls/start", "page faults/start", "memory MiB",
                               "sandbox/this"])
            for row in rows {
                table.add([row.function, row.side, Format.fixed(row.medianMillis, 1), Format.fixed(row.p99Millis, 1),
                           row.syscallsPerStart.map { Format.fixed($0, 0) } ?? "-",
                           row.pageFaultsPerStart.map { Format.fixed($0, 0) } ?? "-",
                           row.memoryMiB.map { Format.fixed($0, 1) } ?? "-",
                           row.sandboxRatio.map { Format.fixed($0, $0 < 1 ? 3 : 1) + "x" } ?? "-"])
            }
            Output.out(table.rendered)
        }
    }

    /// `runsc run` of the runner, start to exit. The container inherits this process's stdin, which
    /// is made /dev/null first so the runner sees EOF instead of waiting on a terminal.
    private func runscRow(_ function: String, sandboxMedian: Double) throws -> Row {
        Output.err("bench: \(function) under runsc")
        let devNull = open("/dev/null", O_RDONLY)
        if devNull >= 0 {
            dup2(devNull, STDIN_FILENO)
            close(devNull)
        }
        let samples = try RunscBaseline.startToExit(rootfs: rootfs, arguments: PythonBenchmark.arguments(function: function),
                                                    runs: max(1, runs))
        let times = Samples(samples.values.map { $0 * 1e3 })
        return Row(function: function, side: "runsc run (to exit)", medianMillis: times.median, p99Millis: times.p99,
                   syscallsPerStart: nil, pageFaultsPerStart: nil, memoryMiB: nil,
                   sandboxRatio: sandboxMedian / max(times.median, 1e-9))
    }

    private func row(_ function: String, _ side: String, _ starts: [PythonBenchmark.Start], sandboxMedian: Double?) -> Row {
        let times = Samples(starts.map { $0.nanoseconds / 1e6 })
        let count = Double(max(1, starts.count))
        let syscalls = starts.compactMap(\.syscalls)
        return Row(function: function, side: side, medianMillis: times.median, p99Millis: times.p99,
                   syscallsPerStart: syscalls.isEmpty ? nil : Double(syscalls.reduce(0, +)) / count,
                   pageFaultsPerStart: Double(starts.map(\.pageFaults).reduce(0, +)) / count,
                   memoryMiB: Double(starts.map(\.memory).reduce(0, +)) / count / 1_048_576,
                   sandboxRatio: sandboxMedian.map { $0 / max(times.median, 1e-9) })
    }
}
