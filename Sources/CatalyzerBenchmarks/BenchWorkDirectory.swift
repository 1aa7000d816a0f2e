import CatalyzerRuntime
import Glibc

/// The private directory a benchmark keeps its store and mountpoints in.
enum BenchWorkDirectory {
    /// A new directory under `parent`, by its canonical path: catalyzerfs reports the store it
    /// serves canonically, and `Invocation` checks the mount against it.
    static func make(in parent: String, benchmark: String) throws -> String {
        var template = Array((parent + "/catalyzer-bench-\(benchmark)-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer in mkdtemp(buffer.baseAddress!).flatMap { realpath($0, nil) } }
        guard let resolved = made else {
            throw RuntimeError("bench \(benchmark): cannot create a directory in \(parent): \(String(cString: strerror(errno)))")
        }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
