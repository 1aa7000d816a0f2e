import ArgumentParser
import CatalyzerBench
import CatalyzerBenchmarks
import Foundation
import Glibc

/// `catalyzer bench containers`: `podman run --rm IMAGE python3 -c pass` under catalyzer-runtime,
/// runc and runsc in the same run.
struct ContainersBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "containers",
        abstract: "podman run of python3 -c pass under catalyzer-runtime against runc and runsc (gVisor), median and p99.",
        discussion: """
            The image is --rootfs imported into podman storage of the benchmark's own (removed after). Each \
            sample is one whole `podman run --rm --network none IMAGE python3 -c pass`, wall time: podman, \
            conmon, the runtime, the program and the teardown, as a user waits for it. --runs rounds run the \
            runtimes interleaved after one warm-up each; the ratios are over runc's median and p99 from the \
            same run. A runtime not installed (runc, runsc) is left out with a note. --restore times instead a \
            function-like container (an import-heavy initialization, then a line every 2 ms): `podman run -d` \
            under each runtime until "ready" is in its log, against `podman container restore --keep` of its \
            checkpoint under catalyzer-runtime until its first line after the restore (runc's own restore, \
            CRIU's, fails to dump on these machines' kernel). Needs root, podman and /dev/kvm (and criu and \
            /dev/fuse for --restore). JSON (--json): [{runtime, medianMillis, p99Millis, medianOverRunc, p99OverRunc, samplesMillis}].
            """)

    @Option(help: "The rootfs to import as the image (Scripts/build-rootfs.sh DIR).") var rootfs: String
    @Option(help: "Rounds (at least 10 for a p99 worth reading).") var runs = 20
    @Option(help: "catalyzer-runtime (default: next to this binary, in PATH, or /usr/local/bin).") var runtime: String?
    @Option(help: "Directory for podman's storage.") var workDir = NSTemporaryDirectory()
    @Flag(help: "Time a function-like container (import-heavy initialization) to its first output: cold under each runtime, and podman container restore of its checkpoint under catalyzer-runtime.")
    var restore = false
    @Flag(help: "Print the figures as JSON.") var json = false

    func validate() throws {
        guard runs >= 1 else { throw ValidationError("--runs must be at least 1") }
    }

    func run() throws {
        try Output.run {
            let beside = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
                .deletingLastPathComponent().appendingPathComponent("catalyzer-runtime").path
            let inPath = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { String($0) + "/catalyzer-runtime" }
            guard let ours = runtime ?? ([beside] + inPath + ["/usr/local/bin/catalyzer-runtime"]).first(where: { access($0, X_OK) == 0 }) else {
                throw ValidationError("cannot find catalyzer-runtime: build it (swift build --product catalyzer-runtime) or pass --runtime")
            }
            var runtimes = [ContainersBenchmark.Runtime(name: "catalyzer-runtime", path: ours)]
            for (name, path, flags) in [("runc", "/usr/sbin/runc", [String]()), ("runsc", "/usr/bin/runsc", ["--runtime-flag", "network=none"])] {
                if access(path, X_OK) == 0 {
                    runtimes.append(.init(name: name, path: path, podmanFlags: flags))
                } else {
                    Output.err("bench: \(name) is not installed at \(path); left out")
                }
            }
            var benchmark = ContainersBenchmark(rootfs: rootfs, runtimes: runtimes)
            benchmark.runs = runs
            benchmark.workDirectory = workDir
            benchmark.measuresRestore = restore
            let rows = try benchmark.run { Output.err("bench: \($0)") }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                Output.out(String(decoding: try encoder.encode(rows), as: UTF8.self))
            } else {
                Output.out(ContainersBenchmark.table(rows))
            }
        }
    }
}
