import CatalyzerTestSupport
import Foundation
import Testing

/// `catalyzer bench containers` end to end, with few rounds: the figures' shape, not their values.
@Suite("bench containers")
struct ContainersBenchmarkTests {
    @Test("bench containers --json: a row per installed runtime, runc's ratios 1, samples as many as rounds, nothing left mounted")
    func rowsPerRuntime() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("root and /dev/kvm")))
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/podman"),
                     Comment(rawValue: TestEnvironment.requirementMessage("Debian's podman (Scripts/bootstrap.sh installs it)")))
        let work = try TemporaryDirectory("bench-containers")
        defer { work.remove() }
        let result = try Command.spawned(300, Command.binary("catalyzer"),
                                         ["bench", "containers", "--rootfs", try PythonRootfs.path(), "--runs", "2", "--json",
                                          "--runtime", Command.binary("catalyzer-runtime"), "--work-dir", work.path])
        try #require(result.status == 0, "\(result)")
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]], "\(result)")
        let names = rows.compactMap { $0["runtime"] as? String }
        let expected = ["catalyzer-runtime", "runc", "runsc"].filter { $0 == "catalyzer-runtime" || result.stderr.contains("\($0) is not installed") == false }
        #expect(names == expected, "\(rows)")
        for row in rows {
            #expect((row["samplesMillis"] as? [Double])?.count == 2 && (row["medianMillis"] as? Double ?? 0) > 0, "\(row)")
        }
        #expect(rows.first { $0["runtime"] as? String == "runc" }?["medianOverRunc"] as? Double == 1)
        let mounts = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        #expect(!mounts.contains(work.path), "the benchmark left mounts under \(work.path)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: work.path)) ?? []).isEmpty)
    }
}
