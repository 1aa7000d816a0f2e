import ArgumentParser
import CatalyzerBench
import CatalyzerImage
import Foundation

/// `catalyzer bench ...`: benchmarks that print tables (median and p99, next to a baseline).
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Run benchmarks and print their tables.",
        subcommands: [ImageBench.self, FSBench.self, SandboxBench.self, PythonBench.self, StartupBench.self, RemoteBench.self, ServeBench.self, FunctionsBench.self, ContainersBench.self]
    )

    struct ImageBench: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "image",
            abstract: "Compression ratio, create and decompress throughput, and per-chunk latency for each codec and chunk size.",
            discussion: "Without --from, the input is the memory of a live python3 process that imported a typical function's modules, read through /proc/PID/mem.")

        @Option(help: "A raw memory file to use as input.") var from: String?
        @Option(help: "Comma-separated chunk sizes.") var chunkSizes = "64K,256K,1M"
        @Option(help: "Comma-separated codecs.") var codecs = "none,lz4,zstd"
        @Option(help: "Repetitions of each measurement.") var runs = 3
        @Option(help: "Directory for the temporary stores.") var workDir = NSTemporaryDirectory()
        @Flag(help: "Print the rows as JSON.") var json = false

        func run() throws {
            try Output.run {
                let sizes = try chunkSizes.split(separator: ",").map {
                    guard let size = ByteCount.parse(String($0)) else { throw ValidationError("bad chunk size '\($0)'") }
                    return Int(size)
                }
                let codecList = try codecs.split(separator: ",").map {
                    guard let codec = Codec(rawValue: String($0)) else { throw ValidationError("unknown codec '\($0)'") }
                    return codec
                }
                try BenchInput.with(from: from, workDirectory: workDir) { input in
                    var benchmark = ImageBenchmark(input: input)
                    benchmark.runs = max(1, runs)
                    benchmark.workDirectory = workDir
                    benchmark.chunkSizes = sizes
                    benchmark.codecs = codecList
                    let rows = try benchmark.run(log: Output.err)
                    if json { return Output.json(rows) }
                    Output.out(ImageBenchmark.table(rows))
                }
            }
        }
    }
}
