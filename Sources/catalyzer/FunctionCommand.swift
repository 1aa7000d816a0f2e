import ArgumentParser
import CatalyzerImage
import CatalyzerRuntime
import Foundation

/// `catalyzer function`: functions built from a code directory and its requirements.
struct FunctionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "function",
        abstract: "Build functions from code and requirements into layered images.",
        subcommands: [Create.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build a function's image from its code directory and requirements, checkpointed with its handler imported.",
            discussion: """
                The image's rootfs is three layers, shared by digest: the runtime (--runtime-rootfs, a rootfs from \
                Scripts/build-rootfs.sh: python3.11 and the runner), the dependencies (pip wheels for CPython 3.11 on \
                x86-64, installed once per requirements file and store) and the code (DIR as /var/task). Each is \
                precompiled. The function is then checkpointed where its handler is imported and it waits for its \
                first request; `catalyzer invoke NAME` and `catalyzer serve` run it. Fails, publishing nothing, when a \
                requirement has no wheel, the handler does not import or resolve, or the code has a symlink out of it.
                """)

        @Argument(help: "The function's name (its image in the store).") var name: String
        @Option(help: "The directory of the function's code.") var code: String
        @Option(help: "The handler, MODULE.FUNCTION as AWS Lambda names it.") var handler = "app.handler"
        @Option(help: "A pip requirements file, installed from wheels for the guest.") var requirements: String?
        @Option(help: "The runtime rootfs (Scripts/build-rootfs.sh DIR); default $CATALYZER_RUNTIME_ROOTFS.")
        var runtimeRootfs: String?
        @Option(help: "Guest memory of the function (e.g. 256M).") var memory = "256M"
        @Option(help: "The function's timeout, which its context reports.") var timeout = DurationArgument(argument: "30s")!
        @Option(name: .customLong("env"), help: "Set an environment variable (KEY=VALUE); repeatable.") var environment: [String] = []
        @Flag(help: "Print the report as JSON.") var json = false
        @OptionGroup var storeOptions: StoreOptions
        @OptionGroup var network: NetworkOptions

        func validate() throws {
            guard environment.allSatisfy({ $0.contains("=") }) else { throw ValidationError("--env takes KEY=VALUE") }
            guard let bytes = ByteCount.parse(memory), bytes >= 1 << 20, bytes % 4096 == 0 else {
                throw ValidationError("--memory must be a size of at least 1M and a multiple of 4K")
            }
            guard runtimeRootfs ?? ProcessInfo.processInfo.environment["CATALYZER_RUNTIME_ROOTFS"] != nil else {
                throw ValidationError("give the runtime rootfs: --runtime-rootfs DIR or $CATALYZER_RUNTIME_ROOTFS (build one with Scripts/build-rootfs.sh DIR)")
            }
            _ = try network.policy()
        }

        func run() throws {
            try Output.run {
                let runtime = runtimeRootfs ?? ProcessInfo.processInfo.environment["CATALYZER_RUNTIME_ROOTFS"]!
                var request = FunctionCreateRequest(name: name, codeDirectory: code, runtimeRootfs: runtime)
                request.handler = handler
                request.requirements = requirements
                request.memorySize = Int(ByteCount.parse(memory) ?? 0)
                request.timeoutSeconds = Double(timeout.nanoseconds) / 1e9
                request.environment = environment
                request.network = try network.policy()
                let report = try FunctionBuilder.create(request, store: storeOptions.imageStore)
                if json { return Output.json(report) }
                var lines = ["created function \(report.name) (\(report.checkpoint.image.manifestDigest)), handler \(report.handler)"]
                for layer in report.layers {
                    lines.append("  \(layer.role.padding(toLength: 13, withPad: " ", startingAt: 0)) \(layer.digest.short) \(ByteCount.format(layer.size))"
                                 + (layer.reused ? ", unchanged (shared)" : ", built"))
                }
                let ready = report.checkpoint
                lines.append("  ready after \(String(format: "%.1f", ready.initializationSeconds * 1000)) ms; \(ByteCount.format(Int64(ready.memoryInUse))) of guest memory in use")
                Output.out(lines.joined(separator: "\n"))
            }
        }
    }
}
