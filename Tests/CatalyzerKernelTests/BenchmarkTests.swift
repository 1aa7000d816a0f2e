import CatalyzerBenchmarks
import CatalyzerKernel
import CatalyzerTestSupport
import Testing

/// The benchmarks are for `catalyzer bench`; this only checks that they run and produce samples.
@Suite("sandbox benchmarks")
struct BenchmarkTests {
    @Test("each benchmark produces positive samples for the sandbox and the host")
    func benchmarksProduceSamples() throws {
        _ = try requireKVM()
        let rootfs = try requireRootfs()
        let rows = [
            try SandboxBenchmark.syscallRoundTrip(iterations: 100),
            try SandboxBenchmark.firstTouch(pages: 64, runs: 2),
            try SandboxBenchmark.startToExit(SandboxConfiguration(rootDirectory: rootfs.root, programPath: "/bin/busybox",
                                                                  arguments: ["busybox", "true"]), runs: 2),
        ]
        for row in rows {
            #expect(!row.sandbox.isEmpty && row.sandbox.allSatisfy { $0 > 0 }, "\(row.name)")
            #expect(row.host.map { !$0.isEmpty && $0.allSatisfy { $0 > 0 } } == true, "\(row.name)")
        }
    }
}

@Suite("python benchmark")
struct PythonBenchmarkTests {
    @Test("a cold start of each sample function answers in the sandbox and on the host")
    func coldStartsAnswer() throws {
        _ = try requireKVM()
        let rootfs = try PythonRootfs.path()
        let results = try PythonBenchmark.run(rootfs: rootfs, functions: ["hello", "heavy"], runs: 1)
        for result in results {
            #expect(result.sandbox.count == 1 && result.sandbox.allSatisfy { $0.nanoseconds > 0 && $0.syscalls ?? 0 > 100 })
            #expect(result.host.count == 1 && result.host.allSatisfy { $0.nanoseconds > 0 })
        }
    }
}
