import ArgumentParser
import CatalyzerBench
import CatalyzerBenchmarks
import CatalyzerKernel
import Foundation

/// `catalyzer bench sandbox`: the monitor's basic costs next to the host's.
struct SandboxBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandbox",
        abstract: "Syscall round trip, first touch per page, start-to-exit of a static program, thread create+join, futex and pipe ping-pong, TCP round trips (guest loopback, host echo server), in the sandbox and on the host.",
        discussion: "Without --rootfs, start-to-exit runs `busybox echo hello` from a temporary rootfs holding Debian's busybox-static. The task and TCP rows build C programs with gcc -static into the rootfs; the host echo server listens on an ephemeral port of 127.0.0.1, which the sandbox is allowed to reach. Needs /dev/kvm.")

    @Option(help: "A rootfs holding the static program for start-to-exit.") var rootfs: String?
    @Option(help: "The static program, a path inside the rootfs, and its arguments (space-separated).")
    var program = "/bin/busybox echo hello"
    @Option(help: "Start-to-exit repetitions.") var runs = 30
    @Option(help: "Syscall round trips measured.") var syscalls = 20000
    @Flag(help: "Print the rows as JSON.") var json = false

    struct Row: Encodable {
        var name: String
        var sandboxMedianMicros: Double
        var sandboxP99Micros: Double
        var baseline: String
        var baselineMedianMicros: Double?
        var baselineP99Micros: Double?
        /// Sandbox median over baseline median.
        var ratio: Double?
    }

    func run() throws {
        try Output.run {
            var temporary: String?
            defer { if let temporary { try? FileManager.default.removeItem(atPath: temporary) } }
            let root: String
            if let rootfs {
                root = rootfs
            } else {
                root = NSTemporaryDirectory() + "/catalyzer-bench-rootfs-\(getpid())"
                try FileManager.default.createDirectory(atPath: root + "/bin", withIntermediateDirectories: true)
                try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: root + "/bin/busybox")
                temporary = root
            }
            let words = program.split(separator: " ").map(String.init)
            guard let path = words.first else { throw ValidationError("--program is empty") }
            let arguments = [URL(fileURLWithPath: path).lastPathComponent] + words.dropFirst()
            Output.err("bench: syscall round trip")
            let syscall = try SandboxBenchmark.syscallRoundTrip(iterations: syscalls)
            Output.err("bench: first touch")
            let touch = try SandboxBenchmark.firstTouch()
            Output.err("bench: start to exit of \(program)")
            let start = try SandboxBenchmark.startToExit(
                SandboxConfiguration(rootDirectory: root, programPath: path, arguments: arguments), runs: max(1, runs))
            let baselines = ["host getpid(2)", "host first write, anonymous", "host posix_spawn"]
            var rows = zip([syscall, touch, start], baselines).map { row, baseline -> Row in
                let sandbox = Samples(row.sandbox.map { $0 / 1000 })
                let host = row.host.map { Samples($0.map { $0 / 1000 }) }
                return Row(name: row.name, sandboxMedianMicros: sandbox.median, sandboxP99Micros: sandbox.p99, baseline: baseline,
                           baselineMedianMicros: host?.median, baselineP99Micros: host?.p99,
                           ratio: host.map { sandbox.median / max($0.median, 1e-9) })
            }
            if RunscBaseline.executable != nil {
                Output.err("bench: runsc run of \(program)")
                let runsc = Samples(try RunscBaseline.startToExit(rootfs: root, arguments: [path] + words.dropFirst(), runs: max(1, runs / 3)).values.map { $0 * 1e6 })
                let sandbox = rows[2]
                rows.append(Row(name: "start to exit", sandboxMedianMicros: sandbox.sandboxMedianMicros, sandboxP99Micros: sandbox.sandboxP99Micros,
                                baseline: "runsc run (gVisor)", baselineMedianMicros: runsc.median, baselineP99Micros: runsc.p99,
                                ratio: sandbox.sandboxMedianMicros / max(runsc.median, 1e-9)))
            }
            Output.err("bench: thread create+join, futex and pipe ping-pong (gcc -static)")
            let tasks = try TaskBenchmark.run(rootfs: root, iterations: max(20, runs * 7)).map { ($0.name, $0.sandbox, $0.host) }
            Output.err("bench: tcp round trips over the guest loopback and to a host echo server (gcc -static)")
            let network = try NetworkBenchmark.run(rootfs: root, iterations: max(200, runs * 50)).map { ($0.name, $0.sandbox, $0.host) }
            for (name, sandboxSamples, hostSamples) in tasks + network {
                let sandbox = Samples(sandboxSamples.map { $0 / 1000 }), host = Samples(hostSamples.map { $0 / 1000 })
                rows.append(Row(name: name, sandboxMedianMicros: sandbox.median, sandboxP99Micros: sandbox.p99,
                                baseline: "host, same program", baselineMedianMicros: host.median, baselineP99Micros: host.p99,
                                ratio: sandbox.median / max(host.median, 1e-9)))
            }
            if json { return Output.json(rows) }
            var table = Table(["what", "sandbox p50 µs", "sandbox p99 µs", "baseline", "baseline p50 µs", "baseline p99 µs", "sandbox/baseline"])
            for row in rows {
                table.add([row.name, Format.fixed(row.sandboxMedianMicros, 2), Format.fixed(row.sandboxP99Micros, 2), row.baseline,
                           row.baselineMedianMicros.map { Format.fixed($0, 2) } ?? "-", row.baselineP99Micros.map { Format.fixed($0, 2) } ?? "-",
                           row.ratio.map { Format.fixed($0, $0 < 1 ? 3 : 1) + "x" } ?? "-"])
            }
            Output.out(table.rendered)
        }
    }
}
