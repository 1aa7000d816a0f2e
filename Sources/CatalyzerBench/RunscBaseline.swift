import Foundation

/// gVisor's `runsc run` as a baseline: the same program from the same rootfs, in the sandbox
/// Catalyzer descends from. Used by benchmarks when Debian's `runsc` is installed.
public enum RunscBaseline {
    /// Path of `runsc`, if installed.
    public static var executable: String? {
        ["/usr/bin/runsc", "/usr/local/bin/runsc"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Wall-clock seconds of `runsc run` of `arguments` over `rootfs`, `runs` times: create,
    /// start, run to exit and delete of a container, as a user of runsc pays for one start. The
    /// program's stdin holds `input` (then end of file), or is /dev/null.
    public static func startToExit(rootfs: String, arguments: [String], runs: Int, input: String? = nil) throws -> Samples {
        guard let runsc = executable else { return Samples() }
        let bundle = NSTemporaryDirectory() + "/catalyzer-runsc-\(getpid())"
        try FileManager.default.createDirectory(atPath: bundle, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: bundle) }
        let config: [String: Any] = [
            "ociVersion": "1.0.2",
            "process": ["args": arguments, "cwd": "/", "env": ["PATH=/usr/bin:/bin"], "user": ["uid": 0, "gid": 0]],
            "root": ["path": rootfs, "readonly": true],
            "hostname": "bench",
            "linux": ["namespaces": [["type": "pid"], ["type": "ipc"], ["type": "uts"], ["type": "mount"]]],
        ]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: bundle + "/config.json"))
        var samples = Samples()
        for run in 0..<runs {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: runsc)
            process.arguments = ["--network=none", "--ignore-cgroups", "run", "--bundle", bundle, "catalyzer-bench-\(getpid())-\(run)"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            if let input {
                let pipe = Pipe()
                try pipe.fileHandleForWriting.write(contentsOf: Data(input.utf8))
                try pipe.fileHandleForWriting.close()
                process.standardInput = pipe
            } else {
                process.standardInput = FileHandle.nullDevice
            }
            let seconds = try Clock.measure {
                try process.run()
                process.waitUntilExit()
            }
            guard process.terminationStatus == 0 else {
                throw ProcessMemory.DumpError(description: "runsc run exited with status \(process.terminationStatus)")
            }
            samples.add(seconds)
        }
        return samples
    }
}
