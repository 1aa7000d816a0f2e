import ArgumentParser
import CatalyzerImage
import CatalyzerKernel
import CatalyzerRuntime
import Glibc

/// `catalyzer checkpoint`: run a function cold to its ready point and publish it as an image.
struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Run a function until it waits for its first request, and save it as an image.",
        discussion: """
            The program runs in a sandbox as with `catalyzer run`, its stdin an empty pipe. Its ready \
            point is the first read(2) of stdin that finds no data: there the sandbox stops, and its \
            guest memory (chunked, zero chunks left out, compressed), vCPU state, kernel state (address \
            space, open files, /tmp, process ids, signal dispositions) and a fingerprint of the rootfs \
            files it used are published as image NAME. `catalyzer invoke NAME` then starts instances \
            from that point without initializing. A program that exits or fails before its ready \
            point produces no image; its output is shown.

            --record-working-set then restores the new image once, serves it --working-set-input as \
            its first request, and records which memory pages that invocation touched: their bytes \
            become a working-set layer of the image that every later restore reads in one go and \
            installs before the function runs (and the chunks they lie in, for catalyzerfs to \
            prefetch with -o prefetch=on).
            """)

    @Option(help: "Host directory that becomes the sandbox's read-only /.") var rootfs: String
    @Option(help: "The image name (letters, digits, '.', '_', '-').") var name: String
    @Option(help: "Guest memory of the function (e.g. 256M); instances restored from the image get the same.")
    var memory = "256M"
    @Option(help: "Chunk codec: zstd, lz4 or none.") var codec: Codec = .zstd
    @Option(help: "zstd compression level (1-22).") var level: Int = Codec.defaultZstdLevel
    @Option(help: "Chunk size, a power of two from 4K to 64M.") var chunkSize = ByteCountArgument(argument: "256K")!
    @Option(help: "Give up if the function is not ready after this long.") var timeout = DurationArgument(argument: "60s")!
    @Option(name: .customLong("env"), help: "Set an environment variable (KEY=VALUE); repeatable.") var environment: [String] = []
    @Option(help: "Threads plus processes the function may have at once; clone and fork beyond it fail with EAGAIN.")
    var maxTasks = 256
    @Flag(help: "Record the pages a first invocation touches, installed by every later restore.") var recordWorkingSet = false
    @Flag(help: "Do not pack the rootfs into the image (it then restores only where the rootfs directory is).") var noRootfsLayer = false
    @Option(help: "The request that --record-working-set serves (one line).") var workingSetInput = "{}"
    @Option(help: "The catalyzerfs mount --record-working-set restores from (default: $CATALYZER_MOUNT, else the managed mount).")
    var mount: String?
    @Flag(help: "Print the result as JSON.") var json = false
    @OptionGroup var storeOptions: StoreOptions
    @OptionGroup var network: NetworkOptions
    @Argument(parsing: .postTerminator, help: "The function: a program inside the rootfs (or a name on its PATH) and its arguments.")
    var command: [String]

    func validate() throws {
        try Run.validate(command: command, environment: environment, memory: memory)
        guard !workingSetInput.contains("\n") else { throw ValidationError("--working-set-input must be one line") }
        guard maxTasks >= 1 else { throw ValidationError("--max-tasks must be at least 1") }
        _ = try network.policy()
    }

    struct Result: Encodable {
        var checkpoint: CheckpointReport
        var workingSet: WorkingSetReport?
    }

    func run() throws {
        try Output.run {
            let store = storeOptions.imageStore
            let environment = Run.environment(environment)
            var image = ImageCreateOptions()
            image.codec = codec
            image.compressionLevel = level
            image.chunkSize = Int(chunkSize.bytes)
            var request = CheckpointRequest(
                name: name, rootfs: rootfs, memorySize: Int(ByteCount.parse(memory) ?? 0),
                programPath: SandboxConfiguration.resolveProgram(command[0], rootfs: rootfs, environment: environment),
                arguments: command, environment: environment, timeoutSeconds: Double(timeout.nanoseconds) / 1e9, image: image)
            request.limits.maximumTasks = maxTasks
            request.network = try network.policy()
            request.packRootfs = !noRootfsLayer
            let report = try Checkpointer.checkpoint(request, store: store)
            if !report.output.isEmpty && !json { Output.err("function output while initializing:\n" + report.output) }
            let workingSet = recordWorkingSet
                ? try WorkingSetRecorder.record(image: name, store: store, mount: mount, input: workingSetInput)
                : nil
            if json { return Output.json(Result(checkpoint: report, workingSet: workingSet)) }
            let created = report.image
            let ratio = created.storedBytes > 0 ? Double(created.memorySize) / Double(created.storedBytes) : 0
            var lines = [
                "checkpointed \(created.name) (\(created.manifestDigest))",
                "  ready     after \(String(format: "%.1f", report.initializationSeconds * 1000)) ms and \(report.syscalls) syscalls; \(ByteCount.format(Int64(report.memoryInUse))) of guest memory in use",
                "  memory    \(ByteCount.format(created.memorySize)) in \(created.chunkCount) chunks; \(created.zeroChunks) all-zero left out; stored \(ByteCount.format(created.storedBytes)) with \(created.codec) (\(String(format: "%.2f", ratio))x)",
                "  state     \(report.stateBytes) bytes; rootfs fingerprint \(report.rootfsFingerprint) over \(report.rootfsFiles) files",
            ]
            if let layer = report.rootfsLayer {
                lines.append("  rootfs    layer \(layer.descriptor.digest.short): \(ByteCount.format(layer.descriptor.size)) (\(layer.files) entries, \(ByteCount.format(layer.tarBytes)) of tar)"
                             + (layer.reused ? ", unchanged since last packed" : ", packed in \(String(format: "%.2f", layer.seconds)) s"))
            }
            if let workingSet {
                lines.append("  working   \(workingSet.pages) pages touched by the first request, installed at every restore (blob \(ByteCount.format(workingSet.blobBytes))); \(workingSet.chunks) chunks (\(ByteCount.format(Int64(workingSet.bytes)))) for prefetch=on")
            }
            Output.out(lines.joined(separator: "\n"))
        }
    }
}
