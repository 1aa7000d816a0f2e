import Foundation
import Glibc

/// A catalyzerfs mount made for a benchmark: started detached through the daemon, read through
/// its `/.stats`, and unmounted with umount(8).
public final class BenchMount {
    public let mountpoint: String

    /// The counters of one image in `/.stats` that the benchmark reports.
    public struct Counters: Decodable, Sendable {
        public var readsServed: UInt64
        public var bytesReturned: UInt64
        public var blobsFetched: UInt64
        public var bytesFetched: UInt64
        public var prefetchedChunks: UInt64

        static let zero = Counters(readsServed: 0, bytesReturned: 0, blobsFetched: 0, bytesFetched: 0, prefetchedChunks: 0)

        static func - (a: Counters, b: Counters) -> Counters {
            Counters(readsServed: a.readsServed - b.readsServed, bytesReturned: a.bytesReturned - b.bytesReturned,
                     blobsFetched: a.blobsFetched - b.blobsFetched, bytesFetched: a.bytesFetched - b.bytesFetched,
                     prefetchedChunks: a.prefetchedChunks - b.prefetchedChunks)
        }
    }

    public struct MountError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Mounts `store` at `mountpoint` (created if missing) with `-o options`.
    public init(daemon: String, store: String, mountpoint: String, options: String) throws {
        self.mountpoint = mountpoint
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let status = try Self.run(daemon, [store, mountpoint, "-o", options])
        guard status == 0 else {
            throw MountError(description: "\(daemon) \(store) \(mountpoint) -o \(options) exited \(status); run it with -f to see why")
        }
    }

    /// The counters of `image` now (zeros before its first use).
    public func counters(_ image: String) throws -> Counters {
        struct Document: Decodable { var images: [String: Counters] }
        // Read to the end: /.stats reports size 0, like procfs files.
        guard let file = FileHandle(forReadingAtPath: mountpoint + "/.stats"), let data = try file.readToEnd() else {
            throw MountError(description: "cannot read \(mountpoint)/.stats")
        }
        return try JSONDecoder().decode(Document.self, from: data).images[image] ?? .zero
    }

    public func unmount() {
        // Lazily when still busy (a file a benchmark's service still holds): the mount is gone
        // from the namespace now, and the daemon ends with the last open file.
        if (try? Self.run("/usr/bin/env", ["umount", mountpoint])) != 0 {
            _ = try? Self.run("/usr/bin/env", ["umount", "-l", mountpoint])
        }
        rmdir(mountpoint)
    }

    private static func run(_ executable: String, _ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// The daemon: next to the running executable (a build directory), else in PATH, else
    /// /usr/local/bin, where Scripts/bootstrap.sh installs it.
    public static func findDaemon() -> String? {
        let beside = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("catalyzerfs").path
        let inPath = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { String($0) + "/catalyzerfs" }
        return ([beside] + inPath + ["/usr/local/bin/catalyzerfs"]).first { access($0, X_OK) == 0 }
    }
}
