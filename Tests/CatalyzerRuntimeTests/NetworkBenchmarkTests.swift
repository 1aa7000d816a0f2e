import CatalyzerBenchmarks
import CatalyzerTestSupport
import Glibc
import Testing

/// The TCP rows of `catalyzer bench sandbox`: they run and produce one positive sample per round
/// trip on each side. Speed is measured, not asserted.
@Suite("network benchmark")
struct NetworkBenchmarkTests {
    @Test("loopback and host echo server round trips: N positive samples in the sandbox and on the host")
    func roundTripsProduceSamples() throws {
        try #require(TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("/dev/kvm")))
        try #require(access("/usr/bin/gcc", X_OK) == 0, Comment(rawValue: TestEnvironment.requirementMessage("gcc (the program is built with gcc -static)")))
        let rootfs = try TemporaryDirectory("bench-network")
        defer { rootfs.remove() }
        let iterations = 50

        let rows = try NetworkBenchmark.run(rootfs: rootfs.path, iterations: iterations)
        #expect(rows.map(\.name) == ["tcp round trip, loopback", "tcp round trip, host echo server"])
        for row in rows {
            #expect(row.sandbox.count == iterations && row.sandbox.allSatisfy { $0 > 0 }, "\(row.name): \(row.sandbox)")
            #expect(row.host.count == iterations && row.host.allSatisfy { $0 > 0 }, "\(row.name): \(row.host)")
        }
    }
}
