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
    public struct BuildError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Path of a complete rootfs; builds it under a lock if needed.
    public static func path() throws -> String {
        let inputs = ["Scripts/build-rootfs.sh", "Scripts/rootfs/opt/catalyzer/runner.py",
                      "Scripts/rootfs/functions/hello.py", "Scripts/rootfs/functions/heavy.py"]
        var key = ""
        for input in inputs {
            let data = try Data(contentsOf: URL(fileURLWithPath: Repository.path(input)))
            key += "\(input):\(data.count):\(data.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 })\n"
        }
        let hash = key.utf8.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 }
        let directory = NSTemporaryDirectory() + "/catalyzer-test-rootfs-" + String(hash, radix: 16)
        let lock = open(directory + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lock >= 0 else { throw BuildError(description: "cannot create \(directory).lock") }
        defer { close(lock) }
        flock(lock, LOCK_EX)
        if FileManager.default.fileExists(atPath: directory + "/opt/catalyzer/runner.py") { return directory }
        let built = try Command.run(Repository.path("Scripts/build-rootfs.sh"), [directory])
        guard built.status == 0 else { throw BuildError(description: "Scripts/build-rootfs.sh failed: \(built)") }
        return directory
    }
}
