import CatalyzerKernel
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
