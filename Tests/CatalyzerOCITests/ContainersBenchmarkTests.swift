import CatalyzerTestSupport
import Foundation
import Testing

/// `catalyzer bench containers` end to end, with few rounds: the figures' shape, not their values.
@Suite("bench containers", .serialized)
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
        #expect(!mounts.contains(URL(fileURLWithPath: work.path).lastPathComponent), "the benchmark left mounts under \(work.path)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: work.path)) ?? []).isEmpty)
    }

    @Test("bench containers --restore --json: cold runs to ready under each runtime and restores of a checkpoint under ours, each with its samples")
    func restoreRows() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM && TestEnvironment.hasFUSE,
                     Comment(rawValue: TestEnvironment.requirementMessage("root, /dev/kvm and /dev/fuse")))
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/podman") && FileManager.default.isExecutableFile(atPath: "/usr/sbin/criu"),
                     Comment(rawValue: TestEnvironment.requirementMessage("Debian's podman and criu (Scripts/bootstrap.sh installs them)")))
        let work = try TemporaryDirectory("bench-restore")
        defer { work.remove() }
        let result = try Command.spawned(300, Command.binary("catalyzer"),
                                         ["bench", "containers", "--restore", "--rootfs", try PythonRootfs.path(), "--runs", "1", "--json",
                                          "--runtime", Command.binary("catalyzer-runtime"), "--work-dir", work.path])
        try #require(result.status == 0, "\(result)")
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]], "\(result)")
        let names = rows.compactMap { $0["runtime"] as? String }
        #expect(names.first == "catalyzer-runtime run" && names.last == "catalyzer-runtime restore" && names.contains("runc run"), "\(names)")
        for row in rows {
            #expect((row["samplesMillis"] as? [Double])?.count == 1 && (row["medianMillis"] as? Double ?? 0) > 0, "\(row)")
        }
        let mounts = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        // Podman's run root (/tmp/cbc-*) is where the restored image's store, and so its catalyzerfs mount, was.
        #expect(!mounts.contains(URL(fileURLWithPath: work.path).lastPathComponent) && !mounts.contains("/tmp/cbc-"), "the benchmark left mounts: \(mounts)")
    }
}
