import CatalyzerTestSupport
import Foundation
import Testing

/// `catalyzer bench functions` on two functions of the example suite: every mode measured, the
/// answers checked against the host's, and a function the suite lacks refused.
@Suite("bench functions")
struct FunctionsBenchmarkTests {
    @Test("bench functions --runs 2 on compress and json-transform: five modes each, with medians, p99s and speedups over the sandbox's cold start")
    func benchRuns() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM && TestEnvironment.hasFUSE,
                     Comment(rawValue: TestEnvironment.requirementMessage("root, /dev/kvm and /dev/fuse")))
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/node"),
                     Comment(rawValue: TestEnvironment.requirementMessage("node (Scripts/bootstrap.sh installs Debian's nodejs)")))
        let result = try Command.catalyzer(["bench", "functions", "--suite", Repository.path("Examples/functions"),
                                            "--function", "compress", "--function", "json-transform", "--runs", "2", "--json",
                                            "--python-rootfs", try PythonRootfs.path(), "--node-rootfs", try NodeRootfs.path()])
        try #require(result.status == 0, "\(result)")
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]], "\(result)")
        #expect(rows.map { $0["function"] as? String } == ["compress", "json-transform"], "\(result)")
        for row in rows {
            let modes = try #require(row["modes"] as? [[String: Any]])
            #expect(modes.map { $0["mode"] as? String } == ["host-cold", "sandbox-cold", "restore-cold", "restore-warm", "sfork"], "\(row)")
            for mode in modes {
                let median = mode["medianMillis"] as? Double ?? 0, p99 = mode["p99Millis"] as? Double ?? 0
                #expect(median > 0 && p99 >= median && (mode["samplesMillis"] as? [Double])?.count == 2, "\(mode)")
                #expect((mode["speedupOverSandboxCold"] as? Double ?? 0) > 0, "\(mode)")
            }
            #expect((row["workingSetBytes"] as? Int ?? 0) > 0 && (row["imageMemoryBytes"] as? Int ?? 0) > 0, "\(row)")
        }
        #expect(rows.last?["runtime"] as? String == "nodejs")

        let unknown = try Command.catalyzer(["bench", "functions", "--suite", Repository.path("Examples/functions"), "--function", "nope"])
        #expect(unknown.status != 0 && unknown.stderr.contains("nope") && unknown.stderr.contains("compress"), "\(unknown)")
    }
}
