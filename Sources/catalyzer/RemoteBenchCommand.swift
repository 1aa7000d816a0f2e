import ArgumentParser
import CatalyzerBench
import CatalyzerBenchmarks
import CatalyzerImage
import CatalyzerRuntime
import Foundation
import Glibc

/// `catalyzer bench remote`: restore from a registry across a network link, lazily and fully,
/// against a local cold restore.
struct RemoteBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remote",
        abstract: "Lazy pull + restore and full pull + restore from a registry across a delayed link, against a local cold restore.",
        discussion: """
            Sets up two network namespaces joined by a veth pair: `registry` runs Debian's \
            docker-registry behind a proxy that delays every byte by half of --delay each way (the \
            kernel here has no netem), `node` runs catalyzer. Node A (a store in the node namespace) \
            checkpoints `python3 /opt/catalyzer/runner.py /functions/NAME.py` from --rootfs with its \
            working set and pushes it. Each run then times, interleaved, on a fresh store and a fresh \
            catalyzerfs mount (empty chunk cache, empty page cache): lazy (`invoke REFERENCE`: one \
            command that pulls lazily while it starts the mount, then restores), lazy-pull (`pull \
            --lazy`, then `invoke`), full (`pull`, then `invoke`), and local (invoke of node A's \
            image on a fresh mount: the floor). \
            The fresh stores hold the rootfs layer blob already (as a node that ran any function of \
            that rootfs does), and --rootfs is present, so no run unpacks a rootfs. Time = the pull \
            command's own time as it reports it (none for lazy and local) + the invocation's time to \
            the response (from the start of its pull for lazy, of its mount lookup for the others); \
            neither counts process start. Wire bytes = what the pull moved plus \
            what catalyzerfs fetched into its cache; touched bytes = the compressed chunk bytes \
            catalyzerfs read for the instance. Needs root, ip, docker-registry, python3, /dev/kvm, /dev/fuse.
            """)

    @Option(help: "The sample function.") var function: StartupBenchmark.Function
    @Option(help: "The Python function rootfs (Scripts/build-rootfs.sh).") var rootfs: String
    @Option(help: "Timed runs per mode.") var runs = 5
    @Option(help: "Round-trip delay added between node and registry (e.g. 5ms).") var delay = "5ms"
    @Flag(help: "Print the results as JSON.") var json = false

    struct ModeResult: Encodable {
        var mode: String
        var medianMillis: Double
        var p99Millis: Double
        var pullMedianMillis: Double
        var restoreMedianMillis: Double
        var wireBytesMedian: Double
        var touchedBytesMedian: Double
        var samplesMillis: [Double]
    }

    func run() throws {
        try Output.run {
            guard let delayMillis = Double(delay.hasSuffix("ms") ? String(delay.dropLast(2)) : delay), delayMillis >= 0 else {
                throw ValidationError("--delay must be like 5ms")
            }
            let lab = try RemoteLab(nodes: ["node"], delayMillis: delayMillis)
            defer { lab.tearDown() }
            let directory = lab.directory
            let executable = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.path
            /// This catalyzer, in the node's namespace.
            @discardableResult
            func catalyzer(_ arguments: [String], runDirectory: String? = nil, allowFailure: Bool = false) throws -> String {
                let result = try lab.run(on: "node", executable, arguments,
                                         environment: ["DOCKER_CONFIG": directory + "/no-docker-config", "CATALYZER_RUN_DIR": runDirectory ?? directory + "/run"])
                if result.status != 0 && !allowFailure {
                    throw RuntimeError("catalyzer \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.stdout)\(result.stderr)")
                }
                return result.stdout
            }
            let function = self.function
            let python = ["/usr/bin/python3", "/opt/catalyzer/runner.py", "/functions/\(function.rawValue).py"]
            let storeA = directory + "/a"
            // Recording the working set mounts node A's store: unmount it before the lab goes.
            defer { _ = try? catalyzer(["mount", "--unmount", "--store", storeA], runDirectory: directory + "/run-a", allowFailure: true) }
            try catalyzer(["checkpoint", "--rootfs", rootfs, "--name", "fn", "--memory", "256M", "--record-working-set",
                                 "--working-set-input", function.request, "--store", storeA, "--"] + python, runDirectory: directory + "/run-a")
            try catalyzer(["push", "fn", "\(RemoteLab.registryAddress)/bench/fn:v1", "--insecure", "--quiet", "--store", storeA])
            let image = try ImageStore(root: storeA).open("fn")
            // The template of a fresh node store: only the rootfs layer blob.
            let template = directory + "/template"
            _ = try catalyzer(["image", "create", "--from", "/dev/null", "--name", "x", "--store", template], allowFailure: true)
            try FileManager.default.createDirectory(atPath: template + "/blobs/sha256", withIntermediateDirectories: true)
            for layer in image.config.rootfs?.layers ?? [] {
                link(ImageStore(root: storeA).blobPath(layer.digest), ImageStore(root: template).blobPath(layer.digest))
            }

            var samples: [String: [(total: Double, pull: Double, restore: Double, wire: Double, touched: Double)]] = [:]
            for run in 0..<runs {
                for mode in Self.modes {
                    let runDirectory = directory + "/run-\(mode)-\(run)"
                    var store = storeA
                    var pullSeconds = 0.0
                    var wire = 0.0
                    var image = "fn"
                    if mode != "local" {
                        store = directory + "/store-\(mode)-\(run)"
                        try lab.shell("cp -al \(template) \(store)")
                    }
                    if mode == "lazy" {
                        image = "\(RemoteLab.registryAddress)/bench/fn:v1"
                    } else if mode != "local" {
                        let started = Date()
                        let pulled = try catalyzer(["pull", "\(RemoteLab.registryAddress)/bench/fn:v1", "--name", "fn", "--insecure", "--json", "--store", store]
                                                         + (mode == "lazy-pull" ? ["--lazy"] : []))
                        let done = pulled.split(separator: "\n").last.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                        // The pull's own time, as it reports it: from its start, without the
                        // process start and namespace entry (invoke's timings leave those out too).
                        pullSeconds = done?["seconds"] as? Double ?? Date().timeIntervalSince(started)
                        wire = Double(done?["bytes"] as? Int ?? 0)
                    }
                    let invoked = try catalyzer(["invoke", image, "--timings", "--json", "--input", function.request, "--store", store]
                                                + (mode == "lazy" ? ["--insecure"] : []), runDirectory: runDirectory)
                    let document = try JSONSerialization.jsonObject(with: Data(invoked.utf8)) as? [String: Any]
                    let timings = document?["timings"] as? [String: Any]
                    guard let response = timings?["responseMicroseconds"] as? Double else {
                        throw RuntimeError("mode \(mode): the invocation gave no response: \(invoked)")
                    }
                    let touched = Double(timings?["fuseBytesFetched"] as? Int ?? 0)
                    if let pulled = timings?["pullMicroseconds"] as? Double {
                        pullSeconds = pulled / 1e6
                        wire = Double(Self.directoryBytes(store + "/blobs/sha256") - Self.directoryBytes(template + "/blobs/sha256"))
                    }
                    if mode != "local" { wire += Double(Self.directoryBytes(store + "/remote-cache")) }
                    _ = try? catalyzer(["mount", "--unmount", "--store", store], runDirectory: runDirectory)
                    // lazy: the response time counts from the start of the pull already.
                    let total = mode == "lazy" ? response / 1000 : pullSeconds * 1000 + response / 1000
                    samples[mode, default: []].append((total, pullSeconds * 1000, total - pullSeconds * 1000, wire, touched))
                }
            }
            let results = Self.modes.map { mode -> ModeResult in
                let runs = samples[mode] ?? []
                let total = Samples(runs.map(\.total))
                return ModeResult(mode: mode, medianMillis: total.median, p99Millis: total.p99,
                                  pullMedianMillis: Samples(runs.map(\.pull)).median, restoreMedianMillis: Samples(runs.map(\.restore)).median,
                                  wireBytesMedian: Samples(runs.map(\.wire)).median, touchedBytesMedian: Samples(runs.map(\.touched)).median,
                                  samplesMillis: runs.map(\.total))
            }
            // What a lazy pull brings for the pages: the page working set blob, or for an image
            // without one the chunks of its chunk working set.
            let workingSetBytes = image.config.pageWorkingSet?.blob.size
                ?? (image.config.workingSet ?? []).compactMap { image.config.chunk(at: $0)?.size }.reduce(0, +)
            if json {
                struct Document: Encodable {
                    var function: String, runs: Int, delayMillis: Double, stateBytes: Int64, workingSetCompressedBytes: Int64
                    var modes: [ModeResult]
                }
                return Output.json(Document(function: function.rawValue, runs: runs, delayMillis: delayMillis, stateBytes: image.config.state.size,
                                            workingSetCompressedBytes: workingSetBytes, modes: results))
            }
            Output.out("bench remote: \(function.rawValue), \(runs) runs, \(delayMillis) ms RTT added; state \(ByteCount.format(image.config.state.size)), working set \(ByteCount.format(workingSetBytes)) compressed")
            Output.out(Output.table(["MODE", "MEDIAN ms", "P99 ms", "PULL ms", "RESTORE ms", "WIRE", "TOUCHED"], results.map {
                [$0.mode, String(format: "%.1f", $0.medianMillis), String(format: "%.1f", $0.p99Millis), String(format: "%.1f", $0.pullMedianMillis),
                 String(format: "%.1f", $0.restoreMedianMillis), ByteCount.format(Int64($0.wireBytesMedian)), ByteCount.format(Int64($0.touchedBytesMedian))]
            }))
        }
    }

    static let modes = ["lazy", "lazy-pull", "full", "local"]

    static func directoryBytes(_ path: String) -> Int64 {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).reduce(0) { total, name in
            var info = stat()
            return total + (lstat(path + "/" + name, &info) == 0 ? Int64(info.st_size) : 0)
        }
    }
}
