import CatalyzerBench
import CatalyzerImage
import Glibc

/// The memory a benchmark works on: the user's `--from` file, or else a fresh dump of a live
/// python3 that imported a typical function's modules, removed when the benchmark ends.
enum BenchInput {
    static func with(from: String?, workDirectory: String, _ body: (String) throws -> Void) throws {
        if let from { return try body(from) }
        let path = workDirectory + "/catalyzer-bench-python-\(getpid()).mem"
        defer { unlink(path) }
        let bytes = try ProcessMemory.dumpPython(to: path)
        Output.err("bench: dumped \(ByteCount.format(bytes)) of python3 memory")
        try body(path)
    }
}
