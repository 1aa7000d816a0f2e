import Foundation
import Glibc

/// Paths in this repository and artifacts built from it for tests.
public enum Repository {
    /// The repository root, found from this source file's location.
    public static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }   // Tests/Support/Repository.swift
        return url.path
    }()

    public static func path(_ relative: String) -> String { root + "/" + relative }
}

/// The Python function rootfs (`Scripts/build-rootfs.sh`), built once per machine and shared by
/// test processes: it is rebuilt only when the script or the files it installs change.
public enum PythonRootfs {
    public static func path() throws -> String {
        try RuntimeRootfs.path(arguments: [], marker: "/opt/catalyzer/runner.py",
                               inputs: ["Scripts/rootfs/opt/catalyzer/runner.py", "Scripts/rootfs/functions/hello.py",
                                        "Scripts/rootfs/functions/heavy.py"])
    }
}

/// The Node.js function rootfs (`Scripts/build-rootfs.sh --runtime nodejs`), built as the Python one is.
public enum NodeRootfs {
    public static func path() throws -> String {
        try RuntimeRootfs.path(arguments: ["--runtime", "nodejs"], marker: "/opt/catalyzer/reseed.node",
                               inputs: ["Scripts/rootfs/opt/catalyzer/runner.js", "Scripts/rootfs/opt/catalyzer/reseed.c", "/usr/bin/node"])
    }
}

public enum RuntimeRootfs {
    public struct BuildError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Path of a complete rootfs built by `build-rootfs.sh ARGUMENTS DIR`, keyed by the script and
    /// `inputs` (repository paths, or absolute host paths keyed by size and modification time);
    /// builds it under a lock if needed.
    static func path(arguments: [String], marker: String, inputs: [String]) throws -> String {
        var key = arguments.joined(separator: " ") + "\n"
        for input in ["Scripts/build-rootfs.sh"] + inputs {
            if input.hasPrefix("/") {
                var info = stat()
                guard stat(input, &info) == 0 else { throw BuildError(description: "\(input) is missing") }
                key += "\(input):\(info.st_size):\(info.st_mtim.tv_sec)\n"
                continue
            }
            let data = try Data(contentsOf: URL(fileURLWithPath: Repository.path(input)))
            key += "\(input):\(data.count):\(data.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 })\n"
        }
        let hash = key.utf8.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 }
        let directory = NSTemporaryDirectory() + "/catalyzer-test-rootfs-" + String(hash, radix: 16)
        let lock = open(directory + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lock >= 0 else { throw BuildError(description: "cannot create \(directory).lock") }
        defer { close(lock) }
        flock(lock, LOCK_EX)
        if FileManager.default.fileExists(atPath: directory + marker) { return directory }
        let built = try Command.run(Repository.path("Scripts/build-rootfs.sh"), arguments + [directory])
        guard built.status == 0 else { throw BuildError(description: "Scripts/build-rootfs.sh \(arguments.joined(separator: " ")) failed: \(built)") }
        return directory
    }
}
