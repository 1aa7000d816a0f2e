import ArgumentParser
import CatalyzerBench
import CatalyzerImage
import CatalyzerRuntime
import Foundation

/// `catalyzer function`: functions built from a code directory and its requirements.
struct FunctionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "function",
        abstract: "Build functions from code and requirements into layered images.",
        subcommands: [Create.self, List.self, Inspect.self, Remove.self])

    /// The store's functions: images made by `function create`, with their settings.
    static func functions(in store: ImageStore) throws -> [(name: String, image: Image, settings: FunctionSettings)] {
        guard store.exists else { return [] }
        return try store.names().sorted().compactMap { name in
            guard let image = try? store.open(name) else { return nil }
            let settings = FunctionSettings(image.config.annotations ?? [:])
            return settings.isFunction ? (name, image, settings) : nil
        }
    }

    static func function(_ name: String, in store: ImageStore) throws -> (image: Image, settings: FunctionSettings) {
        let image = try store.open(name)
        let settings = FunctionSettings(image.config.annotations ?? [:])
        guard settings.isFunction else {
            throw ValidationError("'\(name)' is an image but not a function (it was not made by `catalyzer function create`); see `catalyzer image inspect \(name)`")
        }
        return (image, settings)
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the store's functions.")
        @Flag(help: "Print the list as JSON.") var json = false
        @OptionGroup var storeOptions: StoreOptions

        struct Row: Encodable {
            var name: String
            var runtime: String
            var handler: String
            var memoryBytes: Int64
            var timeoutSeconds: Double?
            var layers: Int
            var digest: String
        }

        func run() throws {
            try Output.run {
                let rows = try FunctionCommand.functions(in: storeOptions.imageStore).map { entry in
                    Row(name: entry.name, runtime: entry.settings.runtime?.rawValue ?? "?", handler: entry.settings.handler ?? "", memoryBytes: entry.image.config.memorySize,
                        timeoutSeconds: entry.settings.timeoutSeconds, layers: entry.image.config.rootfs?.layers.count ?? 0,
                        digest: entry.image.manifestDescriptor.digest.description)
                }
                if json { return Output.json(rows) }
                var table = Table(["NAME", "RUNTIME", "HANDLER", "MEMORY", "TIMEOUT", "LAYERS", "DIGEST"])
                for row in rows {
                    table.add([row.name, row.runtime, row.handler, ByteCount.format(row.memoryBytes), row.timeoutSeconds.map { "\(Format.fixed($0, 1)) s" } ?? "-",
                               String(row.layers), String(row.digest.dropFirst(7).prefix(12))])
                }
                Output.out(table.rendered)
            }
        }
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a function: handler, memory, timeout, layers, network policy, image digest.")
        @Argument(help: "The function's name.") var name: String
        @Flag(help: "Print it as JSON.") var json = false
        @OptionGroup var storeOptions: StoreOptions

        struct Details: Encodable {
            struct Layer: Encodable {
                var role: String
                var digest: String
                var size: Int64
            }
            var name: String
            var runtime: String
            var handler: String
            var memoryBytes: Int64
            var timeoutSeconds: Double?
            var layers: [Layer]
            var network: ImageCommand.Inspect.NetworkRecord?
            var digest: String
            var created: String
        }

        func run() throws {
            try Output.run {
                let store = storeOptions.imageStore
                let (image, settings) = try FunctionCommand.function(name, in: store)
                let descriptors = image.config.rootfs?.layers ?? []
                let layers = descriptors.enumerated().map { index, layer in
                    Details.Layer(role: index < settings.layerRoles.count ? settings.layerRoles[index] : "layer \(index)",
                                  digest: layer.digest.description, size: layer.size)
                }
                let details = Details(name: name, runtime: settings.runtime?.rawValue ?? "?", handler: settings.handler ?? "", memoryBytes: image.config.memorySize,
                                      timeoutSeconds: settings.timeoutSeconds, layers: layers,
                                      network: ImageCommand.Inspect.network(of: image, named: name, in: store),
                                      digest: image.manifestDescriptor.digest.description, created: image.config.created)
                if json { return Output.json(details) }
                let timeout = details.timeoutSeconds.map { Format.fixed($0, 1) + " s" } ?? "-"
                let network = details.network?.summary ?? "-"
                var lines: [String] = []
                lines.append("name        " + details.name)
                lines.append("runtime     " + details.runtime)
                lines.append("handler     " + details.handler)
                lines.append("memory      " + ByteCount.format(details.memoryBytes))
                lines.append("timeout     " + timeout)
                lines.append("network     " + network)
                lines.append("image       " + details.digest + ", created " + details.created)
                for layer in layers {
                    lines.append("layer       \(layer.role.padding(toLength: 13, withPad: " ", startingAt: 0)) \(layer.digest.dropFirst(7).prefix(12)) \(ByteCount.format(layer.size))")
                }
                Output.out(lines.joined(separator: "\n"))
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove functions (their images; `catalyzer image gc` frees layers no image uses).")
        @Argument(help: "Function names.") var names: [String]
        @OptionGroup var storeOptions: StoreOptions

        func run() throws {
            try Output.run {
                let store = storeOptions.imageStore
                for name in names { _ = try FunctionCommand.function(name, in: store) }
                for name in names {
                    try store.remove(name)
                    Output.out("removed function \(name)")
                }
            }
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build a function's image from its code directory and requirements, checkpointed with its handler imported.",
            discussion: """
                The image's rootfs is three layers, shared by digest: the runtime (--runtime-rootfs, a rootfs from \
                Scripts/build-rootfs.sh: python3.11 and the runner, or with --runtime nodejs, node and its runner), the \
                dependencies (Python: pip wheels for CPython 3.11 on x86-64, installed once per requirements file and \
                store; Node.js: the code directory's node_modules, checked against package.json and package-lock.json, \
                or installed by npm ci from the lockfile) and the code (DIR as /var/task). Python's are precompiled. The function is then checkpointed where its handler is imported and it waits for its \
                first request; `catalyzer invoke NAME` and `catalyzer serve` run it. Fails, publishing nothing, when a \
                requirement has no wheel, the handler does not import or resolve, or the code has a symlink out of it.
                """)

        @Argument(help: "The function's name (its image in the store).") var name: String
        @Option(help: "The directory of the function's code.") var code: String
        @Option(help: "The handler, MODULE.FUNCTION as AWS Lambda names it.") var handler = "app.handler"
        @Option(help: "A pip requirements file, installed from wheels for the guest (Python).") var requirements: String?
        @Option(help: "The language runtime: python3.11 or nodejs.") var runtime = FunctionRuntime.python311
        @Option(help: "The runtime rootfs (Scripts/build-rootfs.sh [--runtime nodejs] DIR); default $CATALYZER_RUNTIME_ROOTFS, or $CATALYZER_NODEJS_ROOTFS for nodejs.")
        var runtimeRootfs: String?
        @Option(help: "Guest memory of the function (e.g. 256M).") var memory = "256M"
        @Option(help: "The function's timeout, which its context reports.") var timeout = DurationArgument(argument: "30s")!
        @Option(name: .customLong("env"), help: "Set an environment variable (KEY=VALUE); repeatable.") var environment: [String] = []
        @Flag(help: "Record the pages a first invocation touches, installed by every later restore.") var recordWorkingSet = false
        @Option(help: "The request that --record-working-set serves (one line).") var workingSetInput = "{}"
        @Option(help: "The catalyzerfs mount --record-working-set restores from (default: $CATALYZER_MOUNT, else the managed mount).")
        var mount: String?
        @Flag(help: "Print the report as JSON.") var json = false
        @OptionGroup var storeOptions: StoreOptions
        @OptionGroup var network: NetworkOptions

        struct Result: Encodable {
            var function: FunctionCreateReport
            var workingSet: WorkingSetReport?
        }

        func validate() throws {
            guard !workingSetInput.contains("\n") else { throw ValidationError("--working-set-input must be one line") }
            guard environment.allSatisfy({ $0.contains("=") }) else { throw ValidationError("--env takes KEY=VALUE") }
            guard let bytes = ByteCount.parse(memory), bytes >= 1 << 20, bytes % 4096 == 0 else {
                throw ValidationError("--memory must be a size of at least 1M and a multiple of 4K")
            }
            guard timeout.nanoseconds >= 1_000_000, timeout.nanoseconds <= 900_000_000_000 else {
                throw ValidationError("--timeout must be from 1ms to 15m (Lambda's limit)")
            }
            guard runtimeRootfs ?? ProcessInfo.processInfo.environment[runtime.rootfsVariable] != nil else {
                throw ValidationError("give the \(runtime.rawValue) runtime rootfs: --runtime-rootfs DIR or $\(runtime.rootfsVariable) (build one with \(runtime.buildCommand))")
            }
            _ = try network.policy()
        }

        func run() throws {
            try Output.run {
                let rootfs = runtimeRootfs ?? ProcessInfo.processInfo.environment[runtime.rootfsVariable]!
                var request = FunctionCreateRequest(name: name, codeDirectory: code, runtimeRootfs: rootfs)
                request.runtime = runtime
                request.handler = handler
                request.requirements = requirements
                request.memorySize = Int(ByteCount.parse(memory) ?? 0)
                request.timeoutSeconds = Double(timeout.nanoseconds) / 1e9
                request.environment = environment
                request.network = try network.policy()
                let report = try FunctionBuilder.create(request, store: storeOptions.imageStore)
                let workingSet = recordWorkingSet
                    ? try WorkingSetRecorder.record(image: name, store: storeOptions.imageStore, mount: mount, input: workingSetInput)
                    : nil
                if json { return Output.json(Result(function: report, workingSet: workingSet)) }
                var lines = ["created function \(report.name) (\(report.checkpoint.image.manifestDigest)), \(report.runtime.rawValue), handler \(report.handler)"]
                for layer in report.layers {
                    lines.append("  \(layer.role.padding(toLength: 13, withPad: " ", startingAt: 0)) \(layer.digest.short) \(ByteCount.format(layer.size))"
                                 + (layer.reused ? ", unchanged (shared)" : ", built"))
                }
                let ready = report.checkpoint
                lines.append("  ready after \(String(format: "%.1f", ready.initializationSeconds * 1000)) ms; \(ByteCount.format(Int64(ready.memoryInUse))) of guest memory in use")
                if let workingSet {
                    lines.append("  working set \(workingSet.pages) pages touched by the first request, installed at every restore (blob \(ByteCount.format(workingSet.blobBytes))); \(workingSet.chunks) chunks (\(ByteCount.format(Int64(workingSet.bytes)))) for prefetch=on")
                }
                Output.out(lines.joined(separator: "\n"))
            }
        }
    }
}

extension FunctionRuntime: ExpressibleByArgument {}
