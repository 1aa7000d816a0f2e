import ArgumentParser
import CatalyzerBench
import CatalyzerBenchmarks
import CatalyzerImage
import CatalyzerRuntime
import Foundation

/// `catalyzer bench startup`: cold start against restore from an image (cold page cache, warm
/// page cache, cold with working-set prefetch), to the first response of one sample function.
struct StartupBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "startup",
        abstract: "Cold start against restore from an image, to the first response of a sample Python function.",
        discussion: """
            The benchmark checkpoints `python3 /opt/catalyzer/runner.py /functions/NAME.py` from --rootfs \
            (built by Scripts/build-rootfs.sh) into a temporary store, records its working set, mounts \
            the store with catalyzerfs on private mountpoints, and then times --runs \
            rounds of these modes, interleaved: \
            cold-start (a fresh sandbox from nothing); \
            restore-cold (restore on a fresh mount with prefetch=off: page cache and chunk cache empty, \
            as on a node that never ran the function; the recorded working-set pages are installed \
            before the function runs); \
            restore-warm (restore with the image's pages cached by an earlier restore); \
            restore-cold-prefetch (restore on a fresh mount with prefetch=on, pushing the working-set \
            chunks too); \
            restore-cold-other-request (as restore-cold, serving a request unlike the recorded one); \
            sfork (a fork of the image's template parked on the warm mount, from taking a pooled \
            VM to the response); \
            and two references that are not Catalyzer: host-python (the command under chroot on the \
            host, to its first response) and runsc (gVisor's runsc run, start to exit after serving \
            the request; only when runsc is installed). \
            Every run serves one request on stdin and must answer it correctly; the clock runs from \
            the start (before the VM is created, or before the restore resolves the mount and opens \
            the memory file) to the program's first write to stdout, as the kernel records it. \
            Needs root, /dev/kvm and /dev/fuse.

            JSON (--json): {function, runs, image: {memoryBytes, storedBytes, chunkSize, codec, \
            workingSetChunks, workingSetBytes, workingSetPages, workingSetBlobBytes}, modes: [{mode, medianMillis, p99Millis, \
            speedupOverColdStart, bytesFetchedMedian, fuseReadsMedian, phases, samplesMillis}]}, \
            modes in the order above (runsc left out when not installed). bytesFetchedMedian (compressed bytes catalyzerfs read from the \
            store per run, prefetch included), fuseReadsMedian and phases are null for cold-start, sfork and the references. \
            phases: {openMillis, stateRestoreMillis, firstInstructionMillis, responseMillis, kvmPageFaults, kvmExits, workingSetReadMillis, workingSetInstalledMillis}, the \
            median time spent in each restore phase (mount resolved and memory mapped; state read \
            and restored; pending read served up to the first guest entry; guest run to the \
            response); kvmPageFaults and kvmExits: median page faults and exits of the restored vCPU, as KVM counts them, null where the kernel has no binary statistics; workingSetReadMillis and workingSetInstalledMillis: from the memory mapped to the working-set blob read and to its pages installed, beside the state restore, null without one). speedupOverColdStart: cold-start median over the mode's median. \
            samplesMillis: every run's time, in run order. runs: timed runs per mode.
            """)

    @Option(help: "The sample function.") var function: StartupBenchmark.Function
    @Option(help: "The Python function rootfs (Scripts/build-rootfs.sh OUTDIR).") var rootfs: String
    @Option(help: "Timed runs of each mode (at least 10 for a p99 worth reading).") var runs = 10
    @Option(help: "Guest memory of the sandbox and the image.") var memory = ByteCountArgument(argument: "256M")!
    @Option(help: "The catalyzerfs daemon (default: next to this binary, in PATH, or /usr/local/bin).") var catalyzerfs: String?
    @Option(help: "Directory for the temporary store and mountpoints.") var workDir = NSTemporaryDirectory()
    @Option(help: "Chunk codec of the image: zstd or lz4 (faster to decompress, larger).") var codec: Codec = .zstd
    @Option(help: "Chunk size of the image, a power of two from 4K to 64M.") var chunkSize = ByteCountArgument(argument: "256K")!
    @Flag(help: "Print the figures as JSON.") var json = false

    func validate() throws {
        guard runs >= 1 else { throw ValidationError("--runs must be at least 1") }
    }

    func run() throws {
        try Output.run {
            guard let daemon = catalyzerfs ?? BenchMount.findDaemon() else {
                throw ValidationError("cannot find the catalyzerfs daemon: build it (swift build --product catalyzerfs) or pass --catalyzerfs")
            }
            var benchmark = StartupBenchmark(rootfs: rootfs, function: function, daemon: daemon)
            benchmark.codec = codec
            benchmark.chunkSize = Int(chunkSize.bytes)
            benchmark.runs = runs
            benchmark.memorySize = Int(memory.bytes)
            benchmark.workDirectory = workDir
            let summary = StartupSummary(try benchmark.run(log: Output.err))
            if json { return Output.json(summary) }
            Output.out(summary.rendered)
        }
    }
}

extension StartupBenchmark.Function: ExpressibleByArgument {}

/// The figures `bench startup` prints: medians and p99 per mode, with the JSON keys its help
/// documents.
struct StartupSummary: Encodable {
    struct ImageFigures: Encodable {
        var memoryBytes: Int64
        var storedBytes: Int64
        var chunkSize: Int
        var codec: String
        var workingSetChunks: Int
        var workingSetBytes: Int
        /// Pages in the working-set blob a restore installs, and the blob's stored size.
        var workingSetPages: Int
        var workingSetBlobBytes: Int64
    }

    /// Median time spent in each phase of a restore.
    struct Phases: Encodable {
        var openMillis: Double
        var stateRestoreMillis: Double
        var firstInstructionMillis: Double
        var responseMillis: Double
        /// Median KVM page faults (first-touch shadow-paging exits) and exits of the restored
        /// vCPU; nil where the host kernel has no binary statistics.
        var kvmPageFaults: UInt64?
        var kvmExits: UInt64?
        /// Median time from the memory mapped to the working set read, and to it installed
        /// (on other threads, beside the state restore); nil without a working set.
        var workingSetReadMillis: Double?
        var workingSetInstalledMillis: Double?
    }

    struct ModeFigures: Encodable {
        var mode: StartupBenchmark.Mode
        var medianMillis: Double
        var p99Millis: Double
        var speedupOverColdStart: Double
        var bytesFetchedMedian: UInt64?
        var fuseReadsMedian: UInt64?
        var phases: Phases?
        var samplesMillis: [Double]

        enum CodingKeys: String, CodingKey {
            case mode, medianMillis, p99Millis, speedupOverColdStart, bytesFetchedMedian, fuseReadsMedian, phases, samplesMillis
        }

        /// Every key always present (null where a figure does not apply), so readers see one shape.
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(mode, forKey: .mode)
            try container.encode(medianMillis, forKey: .medianMillis)
            try container.encode(p99Millis, forKey: .p99Millis)
            try container.encode(speedupOverColdStart, forKey: .speedupOverColdStart)
            try container.encode(bytesFetchedMedian, forKey: .bytesFetchedMedian)
            try container.encode(fuseReadsMedian, forKey: .fuseReadsMedian)
            try container.encode(phases, forKey: .phases)
            try container.encode(samplesMillis, forKey: .samplesMillis)
        }
    }

    var function: String
    var runs: Int
    var image: ImageFigures
    var modes: [ModeFigures]

    init(_ report: StartupBenchmark.Report) {
        function = report.function.rawValue
        runs = report.samples[.coldStart]?.count ?? 0
        image = ImageFigures(memoryBytes: report.image.memorySize, storedBytes: report.image.storedBytes,
                             chunkSize: report.image.chunkSize, codec: report.image.codec.rawValue,
                             workingSetChunks: report.workingSet.chunks, workingSetBytes: report.workingSet.bytes,
                             workingSetPages: report.workingSet.pages, workingSetBlobBytes: report.workingSet.blobBytes)
        let coldStartMedian = Samples((report.samples[.coldStart] ?? []).map { $0.responseMicroseconds / 1000 }).median
        modes = StartupBenchmark.Mode.allCases.filter { !(report.samples[$0] ?? []).isEmpty }.map { mode in
            let samples = report.samples[mode] ?? []
            let times = Samples(samples.map { $0.responseMicroseconds / 1000 })
            return ModeFigures(mode: mode, medianMillis: times.median, p99Millis: times.p99,
                               speedupOverColdStart: coldStartMedian / max(times.median, 1e-9),
                               bytesFetchedMedian: Self.countMedian(samples.compactMap(\.bytesFetched)),
                               fuseReadsMedian: Self.countMedian(samples.compactMap(\.fuseReads)),
                               phases: Self.phases(samples.compactMap(\.timings)), samplesMillis: times.values)
        }
    }

    /// Per-phase medians of a restore mode's timings (whose fields are phase ends since the start).
    private static func phases(_ timings: [InvocationTimings]) -> Phases? {
        guard !timings.isEmpty else { return nil }
        func median(_ duration: (InvocationTimings) -> Double) -> Double { Samples(timings.map { duration($0) / 1000 }).median }
        return Phases(openMillis: median { $0.openMicroseconds },
                      stateRestoreMillis: median { $0.stateRestoreMicroseconds - $0.openMicroseconds },
                      firstInstructionMillis: median { $0.firstInstructionMicroseconds - $0.stateRestoreMicroseconds },
                      responseMillis: median { ($0.responseMicroseconds ?? $0.firstInstructionMicroseconds) - $0.firstInstructionMicroseconds },
                      kvmPageFaults: countMedian(timings.compactMap { $0.kvm?.pageFaults }),
                      kvmExits: countMedian(timings.compactMap { $0.kvm?.exits }),
                      workingSetReadMillis: optionalMedian(timings.compactMap { $0.workingSet?.readMicroseconds }),
                      workingSetInstalledMillis: optionalMedian(timings.compactMap { $0.workingSet?.installedMicroseconds }))
    }

    private static func optionalMedian(_ microseconds: [Double]) -> Double? {
        microseconds.isEmpty ? nil : Samples(microseconds.map { $0 / 1000 }).median
    }

    /// The median of counts, nil where the mode has none.
    private static func countMedian(_ values: [UInt64]) -> UInt64? {
        values.isEmpty ? nil : UInt64(Samples(values.map { Double($0) }).median)
    }

    static func label(_ mode: StartupBenchmark.Mode) -> String {
        switch mode {
        case .coldStart: "cold start"
        case .restoreCold: "restore, cold page cache"
        case .restoreWarm: "restore, warm page cache"
        case .restoreColdPrefetch: "restore, cold + prefetch"
        case .restoreColdOtherRequest: "restore, cold, other request"
        case .sfork: "sfork (warm template)"
        case .hostPython: "reference: host python (chroot)"
        case .runsc: "reference: runsc run (to exit)"
        }
    }

    /// The mode table, the image it restored, and the restore modes' phase breakdown.
    var rendered: String {
        var table = Table(["mode", "p50 ms", "p99 ms", "fetched/run", "of stored", "FUSE reads/run", "speedup"])
        for row in modes {
            table.add([Self.label(row.mode), Format.fixed(row.medianMillis, 1), Format.fixed(row.p99Millis, 1),
                       row.bytesFetchedMedian.map { ByteCount.format(Int64($0)) } ?? "-",
                       row.bytesFetchedMedian.map { Format.fixed(100 * Double($0) / Double(max(image.storedBytes, 1)), 0) + "%" } ?? "-",
                       row.fuseReadsMedian.map { "\($0)" } ?? "-",
                       Format.fixed(row.speedupOverColdStart, 1) + "x"])
        }
        var phaseTable = Table(["restore phase medians", "open/mount ms", "state restore ms", "first instruction ms", "response ms", "KVM faults", "KVM exits", "ws read ms", "ws installed ms"])
        for row in modes {
            guard let phases = row.phases else { continue }
            phaseTable.add([Self.label(row.mode), Format.fixed(phases.openMillis, 2), Format.fixed(phases.stateRestoreMillis, 2),
                            Format.fixed(phases.firstInstructionMillis, 2), Format.fixed(phases.responseMillis, 2),
                            phases.kvmPageFaults.map { "\($0)" } ?? "-", phases.kvmExits.map { "\($0)" } ?? "-",
                            phases.workingSetReadMillis.map { Format.fixed($0, 2) } ?? "-",
                            phases.workingSetInstalledMillis.map { Format.fixed($0, 2) } ?? "-"])
        }
        return table.rendered
            + "\n\n\(function), \(runs) runs per mode; time from start to the first write to stdout; speedup: cold start p50 / mode p50"
            + "\nimage: \(ByteCount.format(image.memoryBytes)) memory, stored \(ByteCount.format(image.storedBytes)) (\(image.codec), "
            + "\(ByteCount.format(Int64(image.chunkSize))) chunks); working set \(image.workingSetChunks) chunks (\(ByteCount.format(Int64(image.workingSetBytes)))), "
            + "\(image.workingSetPages) pages installed at restore (blob \(ByteCount.format(image.workingSetBlobBytes)))"
            + "\nfetched: compressed bytes catalyzerfs read from the store per run (median): state, working set and chunks, prefetch included; of stored: fetched / stored size"
            + "\n\n" + phaseTable.rendered
    }
}
