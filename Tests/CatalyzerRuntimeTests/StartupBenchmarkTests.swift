import CatalyzerTestSupport
import CatalyzerImage
import Foundation
import Glibc
import Testing

/// `catalyzer bench startup` end to end: the figures it reports and the shape of its JSON.
/// Speed is measured, not asserted: only what must hold on any machine is checked.
@Suite("catalyzer bench startup")
struct StartupBenchmarkTests {
    static let modes = ["cold-start", "restore-cold", "restore-warm", "restore-cold-prefetch", "restore-cold-other-request", "sfork", "host-python"]
        + (FileManager.default.isExecutableFile(atPath: "/usr/bin/runsc") ? ["runsc"] : [])
    static let topKeys: Set<String> = ["function", "runs", "image", "modes"]
    static let imageKeys: Set<String> = ["memoryBytes", "storedBytes", "chunkSize", "codec", "workingSetChunks", "workingSetBytes", "workingSetPages", "workingSetBlobBytes"]
    static let modeKeys: Set<String> = ["mode", "medianMillis", "p99Millis", "speedupOverColdStart", "bytesFetchedMedian",
                                        "fuseReadsMedian", "phases", "samplesMillis"]
    static let phaseKeys: Set<String> = ["openMillis", "stateRestoreMillis", "firstInstructionMillis", "responseMillis", "kvmPageFaults", "kvmExits", "workingSetReadMillis", "workingSetInstalledMillis"]

    @Test("hello: every mode and reference with positive medians; cold restores fetch from the store, warm ones do not")
    func helloReportsAllModes() throws {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (to mount FUSE filesystems)")))
        try #require(TestEnvironment.hasFUSE, Comment(rawValue: TestEnvironment.requirementMessage("/dev/fuse")))
        try #require(TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("/dev/kvm")))
        let rootfs = try PythonRootfs.path()
        let work = try TemporaryDirectory("bench-startup")
        defer { work.remove() }

        let result = try Command.catalyzer(["bench", "startup", "--function", "hello", "--runs", "2", "--json",
                                            "--rootfs", rootfs, "--work-dir", work.path])
        try #require(result.status == 0, "\(result)")
        let document = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result)")
        #expect(Set(document.keys) == Self.topKeys)
        #expect(document["function"] as? String == "hello")
        #expect((document["runs"] as? NSNumber)?.intValue == 2)

        let image = try #require(document["image"] as? [String: Any])
        #expect(Set(image.keys) == Self.imageKeys)
        let stored = try #require((image["storedBytes"] as? NSNumber)?.int64Value)
        #expect(stored > 0 && stored < (image["memoryBytes"] as? NSNumber)?.int64Value ?? 0)
        #expect((image["workingSetChunks"] as? NSNumber)?.intValue ?? 0 > 0)

        let modes = try #require(document["modes"] as? [[String: Any]])
        #expect(modes.compactMap { $0["mode"] as? String } == Self.modes)
        for mode in modes {
            let name = mode["mode"] as? String ?? "?"
            #expect(Set(mode.keys) == Self.modeKeys, "keys of \(name)")
            #expect((mode["medianMillis"] as? NSNumber)?.doubleValue ?? 0 > 0, "median of \(name)")
            #expect((mode["p99Millis"] as? NSNumber)?.doubleValue ?? 0 > 0, "p99 of \(name)")
            #expect((mode["speedupOverColdStart"] as? NSNumber)?.doubleValue ?? 0 > 0, "speedup of \(name)")
            #expect((mode["samplesMillis"] as? [Any])?.count == 2, "samples of \(name)")
            let fetched = (mode["bytesFetchedMedian"] as? NSNumber)?.uint64Value
            switch name {
            case "cold-start", "sfork", "host-python", "runsc":
                #expect(mode["bytesFetchedMedian"] is NSNull && mode["fuseReadsMedian"] is NSNull && mode["phases"] is NSNull,
                        "a cold start has no FUSE figures or restore phases: \(mode)")
            case "restore-warm":
                #expect(fetched == 0, "a warm restore fetches nothing: \(mode)")
            case "restore-cold":
                // The working-set blob and the state; the pages the request touches are in the
                // working set, so the memory may see no FUSE read at all.
                let blob = (image["workingSetBlobBytes"] as? NSNumber)?.uint64Value ?? 0
                #expect(fetched ?? 0 > blob && blob > 0, "a cold restore fetches the working set and the state from the store: \(mode)")
                #expect(mode["fuseReadsMedian"] is NSNumber, "FUSE reads of \(name): \(mode)")
            default:
                // Prefetch pushes pages without FUSE reads; on a slow run it may push every page
                // before the sandbox asks, leaving no reads at all.
                #expect(fetched ?? 0 > 0, "a cold restore fetches from the store: \(mode)")
                #expect(mode["fuseReadsMedian"] is NSNumber, "FUSE reads of \(name): \(mode)")
            }
            if !["cold-start", "sfork", "host-python", "runsc"].contains(name) {
                let phases = try #require(mode["phases"] as? [String: Any], "phases of \(name)")
                #expect(Set(phases.keys) == Self.phaseKeys, "phase keys of \(name)")
                #expect((phases["responseMillis"] as? NSNumber)?.doubleValue ?? 0 > 0, "response phase of \(name)")
                #expect((phases["kvmPageFaults"] as? NSNumber)?.uint64Value ?? 0 > 0, "KVM sees first-touch faults in \(name): \(phases)")
            }
        }

        // The picture of it: Scripts/plot-startup.py draws a PNG from this JSON, and refuses
        // a document that is not one.
        let plot = try TemporaryDirectory("plot-startup")
        defer { plot.remove() }
        let json = plot.path + "/hello.json", png = plot.path + "/startup.png"
        try Data(result.stdout.utf8).write(to: URL(fileURLWithPath: json))
        let plotted = try Command.run("/usr/bin/python3", [Repository.path("Scripts/plot-startup.py"), json, "-o", png])
        #expect(plotted.status == 0, "\(plotted)")
        let picture = (try? Data(contentsOf: URL(fileURLWithPath: png))) ?? Data()
        #expect(picture.starts(with: [0x89, 0x50, 0x4E, 0x47]) && picture.count > 10_000, "a PNG of \(picture.count) bytes")
        try Data("{\"modes\": 3}".utf8).write(to: URL(fileURLWithPath: json))
        let refused = try Command.run("/usr/bin/python3", [Repository.path("Scripts/plot-startup.py"), json, "-o", png])
        #expect(refused.status != 0 && refused.stderr.contains("is not `catalyzer bench startup --json` output"), "\(refused)")

        let leftovers = FileIO.readToEnd("/proc/self/mountinfo")?
            .split(separator: "\n").filter { $0.contains(work.path) } ?? []
        #expect(leftovers.isEmpty, "the benchmark unmounts what it mounted: \(leftovers)")
        #expect((try? FileManager.default.contentsOfDirectory(atPath: work.path)) == [], "and removes its directory")
    }
}
