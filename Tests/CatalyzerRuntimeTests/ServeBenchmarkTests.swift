import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// `catalyzer bench serve` end to end: every mode answers correctly (a wrong answer fails the
/// benchmark) and reports positive figures. Speed is measured, not asserted.
@Suite("catalyzer bench serve")
struct ServeBenchmarkTests {
    @Test("hello: every mode at concurrency 1 and 2, with the pool's counters")
    func helloReportsAllModes() throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (to mount FUSE filesystems)")))
        try #require(TestEnvironment.hasFUSE, Comment(rawValue: TestEnvironment.requirementMessage("/dev/fuse")))
        try #require(TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("/dev/kvm")))
        let rootfs = try PythonRootfs.path()
        let work = try TemporaryDirectory("bench-serve")
        defer { work.remove() }

        let result = try Command.catalyzer(["bench", "serve", "--function", "hello", "--runs", "5", "--concurrency", "1",
                                            "--concurrency", "2", "--json", "--rootfs", rootfs, "--work-dir", work.path])
        try #require(result.status == 0, "\(result)")
        let document = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result)")
        #expect(document["function"] as? String == "hello")
        let modes = try #require(document["modes"] as? [[String: Any]])
        let expected = ["sfork", "sfork-first-instruction", "restore", "warm", "host", "http"]
        for concurrency in [1, 2] {
            let rows = modes.filter { ($0["concurrency"] as? NSNumber)?.intValue == concurrency }
            // A fork in a just-trimmed VM is measured one at a time only.
            #expect(Set(rows.compactMap { $0["mode"] as? String }) == Set(expected + (concurrency == 1 ? ["sfork-idle"] : [])), "\(rows)")
            for row in rows {
                let median = (row["medianMillis"] as? NSNumber)?.doubleValue ?? 0
                let p99 = (row["p99Millis"] as? NSNumber)?.doubleValue ?? 0
                #expect(median > 0 && p99 >= median, "\(row)")
                if row["mode"] as? String != "sfork-first-instruction" {
                    #expect((row["throughputPerSecond"] as? NSNumber)?.doubleValue ?? 0 > 0, "\(row)")
                }
            }
        }
        // A fork reaches its first instruction before its response.
        let sfork = modes.first { $0["mode"] as? String == "sfork" && ($0["concurrency"] as? NSNumber)?.intValue == 1 }
        let first = modes.first { $0["mode"] as? String == "sfork-first-instruction" && ($0["concurrency"] as? NSNumber)?.intValue == 1 }
        #expect(((first?["medianMillis"] as? NSNumber)?.doubleValue ?? 1) < ((sfork?["medianMillis"] as? NSNumber)?.doubleValue ?? 0))
        #expect((document["recycledVMs"] as? NSNumber)?.intValue ?? 0 > 0, "\(document)")
        // Once idle, every parked VM is trimmed to at most 1 MiB.
        let idle = (document["idleVMPrivateBytes"] as? NSNumber)?.intValue
        #expect(idle.map { $0 <= 1 << 20 } == true, "\(document)")
        // No catalyzerfs mount of the benchmark is left behind.
        let mounts = String(decoding: (try? FileHandle(forReadingAtPath: "/proc/self/mounts")?.readToEnd()) ?? Data(), as: UTF8.self)
        #expect(mounts.contains(" / "), "/proc/self/mounts read as: \(mounts)")
        #expect(!mounts.contains(work.path), "\(mounts)")
    }
}
