import CatalyzerImage
import Foundation
import Glibc

/// Dumps of real process memory: the test and benchmark input closest to what a checkpoint of a
/// function holds (interpreter heap, libraries' data, stacks), without needing the sandbox.
public enum ProcessMemory {
    public struct DumpError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Appends every readable mapping of process `pid` (read through `/proc/PID/mem`) to the file
    /// at `path`. Mappings the kernel refuses to read (`[vvar]`, `[vsyscall]`, device memory) are
    /// skipped. Returns the bytes written. Needs ptrace access to the process (root, or a child).
    public static func dump(pid: Int32, to path: String) throws -> Int64 {
        guard let maps = FileIO.readToEnd("/proc/\(pid)/maps") else {
            throw DumpError(description: "cannot read /proc/\(pid)/maps: \(String(cString: strerror(errno)))")
        }
        let mem = open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC)
        guard mem >= 0 else { throw DumpError(description: "open /proc/\(pid)/mem: \(String(cString: strerror(errno)))") }
        defer { close(mem) }
        let out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard out >= 0 else { throw DumpError(description: "create \(path): \(String(cString: strerror(errno)))") }
        defer { close(out) }

        let piece = 1 << 20
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: piece, alignment: 4096)
        defer { buffer.deallocate() }
        var total: Int64 = 0
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, fields[1].hasPrefix("r") else { continue }
            if fields.count >= 6, ["[vvar]", "[vsyscall]", "[vvar_vclock]"].contains(String(fields[5])) { continue }
            let range = fields[0].split(separator: "-")
            guard range.count == 2, let start = UInt64(range[0], radix: 16), let end = UInt64(range[1], radix: 16) else { continue }
            var offset = start
            while offset < end {
                let want = Int(min(UInt64(piece), end - offset))
                let got = pread(mem, buffer, want, off_t(Int64(bitPattern: offset)))
                if got <= 0 { break }
                var written = 0
                while written < got {
                    let n = write(out, buffer + written, got - written)
                    guard n > 0 else { throw DumpError(description: "write \(path): \(String(cString: strerror(errno)))") }
                    written += n
                }
                total += Int64(got)
                offset += UInt64(got)
            }
        }
        return total
    }

    /// Starts `python3`, lets it import `modules` (an initialized function runtime, as a
    /// checkpoint would capture it), dumps its memory to `path` and ends it.
    public static func dumpPython(to path: String, modules: [String] = defaultModules) throws -> Int64 {
        let process = Process()
        // Debian's python3 when present, so dumps do not depend on a user's PATH.
        let python = FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? ["/usr/bin/python3"] : ["/usr/bin/env", "python3"]
        process.executableURL = URL(fileURLWithPath: python[0])
        let script = "import sys\n" + modules.map { "import \($0)\n" }.joined()
            + "data = [str(i) * 3 for i in range(20000)]\nsys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()\n"
        process.arguments = Array(python.dropFirst()) + ["-c", script]
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        defer {
            try? input.fileHandleForWriting.close()
            process.waitUntilExit()
        }
        let line = output.fileHandleForReading.readData(ofLength: 6)
        guard String(decoding: line, as: UTF8.self) == "ready\n" else {
            process.terminate()
            throw DumpError(description: "python3 did not start (is python3 installed?)")
        }
        return try dump(pid: process.processIdentifier, to: path)
    }

    /// What a typical Python function imports at initialization.
    public static let defaultModules = ["json", "re", "decimal", "datetime", "email.parser", "urllib.parse",
                                        "hashlib", "sqlite3", "collections", "typing", "dataclasses", "asyncio"]
}
