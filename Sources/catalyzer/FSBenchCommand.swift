import ArgumentParser
import CatalyzerBench
import CatalyzerImage
import Foundation

/// `catalyzer bench fs`: per-page first-touch cost of image memory on catalyzerfs.
struct FSBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fs",
        abstract: "First-touch cost per 4 KiB page of a MAP_PRIVATE mapping of an image on catalyzerfs, next to a plain file and anonymous memory.",
        discussion: """
            Cases: catalyzerfs cold (fresh mount, blobs evicted from the host page cache), cold with working-set \
            prefetch, and warm (a second mapping: page-cache hits); each sequentially over every page and randomly \
            over a fraction of them. Prints medians, p99s, ratios to the plain file in page cache, and bytes \
            touched, returned by catalyzerfs and fetched from the store. Needs root and /dev/fuse (it mounts). \
            Without --from, the input is the memory of a live python3 process, as for `catalyzer bench image`.
            """)

    @Option(help: "A raw memory file to use as input.") var from: String?
    @Option(help: "Chunk size of the image.") var chunkSize: ByteCountArgument = ByteCountArgument(argument: "256K")!
    @Option(help: "Chunk codec of the image.") var codec: Codec = .zstd
    @Option(help: "Share of the pages the random pass touches (0-1].") var randomFraction = 0.1
    @Option(help: "How pages are touched: read or write (write also copies the page privately).") var access: PageTouch.Access = .read
    @Option(help: "Extra catalyzerfs -o options for every mount, e.g. readahead=1M.") var mountOptions = ""
    @Option(help: "The catalyzerfs daemon (default: next to this binary, in PATH, or /usr/local/bin).") var catalyzerfs: String?
    @Option(help: "Directory for the temporary store and mountpoint.") var workDir = NSTemporaryDirectory()
    @Flag(help: "Print the rows as JSON.") var json = false

    func validate() throws {
        guard randomFraction > 0 && randomFraction <= 1 else { throw ValidationError("--random-fraction must be in (0, 1]") }
    }

    func run() throws {
        try Output.run {
            guard let daemon = catalyzerfs ?? BenchMount.findDaemon() else {
                throw ValidationError("cannot find the catalyzerfs daemon: build it (swift build --product catalyzerfs) or pass --catalyzerfs")
            }
            try BenchInput.with(from: from, workDirectory: workDir) { input in
                var benchmark = FSBenchmark(input: input, daemon: daemon)
                benchmark.chunkSize = Int(chunkSize.bytes)
                benchmark.codec = codec
                benchmark.randomFraction = randomFraction
                benchmark.access = access
                benchmark.mountOptions = mountOptions
                benchmark.workDirectory = workDir
                let rows = try benchmark.run(log: Output.err)
                if json { return Output.json(rows) }
                Output.out(FSBenchmark.table(rows))
            }
        }
    }
}

extension PageTouch.Access: ExpressibleByArgument {}
