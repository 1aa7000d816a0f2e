import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Glibc
import Testing
@testable import CatalyzerFS

/// Guest memory for tests: random (incompressible) runs, text-like (compressible) runs and
/// all-zero chunks, with an odd total size so that the last chunk is short.
enum TestMemory {
    static let chunkSize = 64 * 1024

    static func bytes(size: Int = 3 * 1024 * 1024 + 12345, seed: UInt64 = 1) -> [UInt8] {
        var generator = SeededGenerator(seed: seed)
        var bytes = [UInt8](repeating: 0, count: size)
        var chunk = 0
        while chunk * chunkSize < size {
            let range = (chunk * chunkSize)..<min(size, (chunk + 1) * chunkSize)
            switch chunk % 4 {
            case 0, 1: for i in range { bytes[i] = UInt8.random(in: 0...255, using: &generator) }
            case 2: for i in range { bytes[i] = UInt8(ascii: "a") + UInt8((i / 7) % 26) }
            default: break  // all zero: left out of the image
            }
            chunk += 1
        }
        return bytes
    }
}

/// A small deterministic generator, so a failing test can be rerun on the same bytes.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}

/// A store in a fresh temporary directory, its images, and catalyzerfs mounted on it. Always
/// call `unmount()` (in a `defer`), even when the test fails.
final class MountedStore {
    let directory: TemporaryDirectory
    let store: ImageStore
    let mountpoint: String
    let logPath: String
    private(set) var isMounted = false

    init(_ label: String) throws {
        directory = try TemporaryDirectory("fs-\(label)")
        // The canonical path, as /proc/mounts shows the mountpoint.
        let root = URL(fileURLWithPath: directory.path).standardizedFileURL.resolvingSymlinksInPath().path
        store = ImageStore(root: root + "/store")
        mountpoint = root + "/mnt"
        logPath = root + "/catalyzerfs.log"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: store.root, withIntermediateDirectories: true)
    }

    /// Creates image `name` holding `memory`; returns the path of its `catalyzer image export`.
    @discardableResult
    func createImage(_ name: String, memory: [UInt8], workingSet: [Int]? = nil) throws -> String {
        let source = directory.file("\(name).raw")
        defer { unlink(source) }
        try Data(memory).write(to: URL(fileURLWithPath: source))
        var options = ImageCreateOptions()
        options.chunkSize = TestMemory.chunkSize
        options.state = Array("state of \(name)".utf8)
        options.workingSet = workingSet
        _ = try store.createImage(named: name, fromFile: source, options: options)
        let exported = directory.file("\(name).export")
        let result = try Command.catalyzer(["image", "export", name, exported, "--store", store.root])
        guard result.status == 0 else { throw TestFailure("catalyzer image export failed: \(result)") }
        return exported
    }

    /// Mounts with the daemon (detached) and extra `-o` options.
    func mount(_ options: String = "") throws {
        let all = ["log=\(logPath)", options].filter { !$0.isEmpty }.joined(separator: ",")
        let result = try Command.run(Command.binary("catalyzerfs"), [store.root, mountpoint, "-o", all])
        guard result.status == 0 else { throw TestFailure("catalyzerfs failed to mount: \(result)") }
        isMounted = true
    }

    func path(_ relative: String) -> String { mountpoint + "/" + relative }

    /// Unmounts (if mounted), waits for the daemon to go, and removes the directory.
    func unmount() {
        if MountTable.entries().contains(where: { $0.mountpoint == mountpoint }) {
            _ = try? Command.run("umount", [mountpoint])
            if MountTable.entries().contains(where: { $0.mountpoint == mountpoint }) {
                _ = try? Command.run("umount", ["-l", mountpoint])
            }
        }
        _ = Daemon.waitForExit(mountpoint: mountpoint)
        isMounted = false
        directory.remove()
    }

    /// The current `/.stats`.
    func statistics() throws -> StatisticsRegistry.Document {
        try JSONDecoder().decode(StatisticsRegistry.Document.self, from: Data(try FileBytes.read(path(".stats"))))
    }

    func statistics(of image: String) throws -> ImageStatistics.Snapshot {
        guard let snapshot = try statistics().images[image] else { throw TestFailure("no statistics for \(image) in /.stats") }
        return snapshot
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Whole-file and ranged reads with plain syscalls (no buffering, no size assumptions).
enum FileBytes {
    static func read(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw TestFailure("open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            guard n >= 0 else { throw TestFailure("read \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { return bytes }
            bytes += buffer[0..<n]
        }
    }

    /// `pread` of up to `count` bytes; the errno on failure.
    static func pread(_ fd: Int32, offset: Int, count: Int) -> Result<[UInt8], Errno> {
        var buffer = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = buffer.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
            if n < 0 { return .failure(Errno(code: errno)) }
            if n == 0 { break }
            done += n
        }
        return .success(Array(buffer[0..<done]))
    }
}

/// Finding the detached daemon of a mount, by its command line.
enum Daemon {
    static func pids(mountpoint: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return arguments.first?.hasSuffix("catalyzerfs") == true && arguments.contains(mountpoint)
        }
    }

    /// Waits up to `seconds` for process `pid` to be gone, or a zombie with no thread left: only
    /// then has it closed its files (its command line is empty earlier, while it is exiting).
    static func waitForExit(pid: Int32, seconds: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            guard let stat = FileIO.readToEnd("/proc/\(pid)/stat"),
                  let afterName = stat.range(of: ") ", options: .backwards) else { return true }
            let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"))?.count ?? 0
            if stat[afterName.upperBound...].hasPrefix("Z") && threads <= 1 { return true }
            usleep(20_000)
        }
        return false
    }

    /// Waits up to `seconds` for every daemon serving `mountpoint` to exit; true if they did.
    static func waitForExit(mountpoint: String, seconds: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if pids(mountpoint: mountpoint).isEmpty { return true }
            usleep(50_000)
        }
        return false
    }
}

/// The requirement every test here has: a real mount needs root and /dev/fuse.
func requireMounting() throws {
    try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (to mount FUSE filesystems)")))
    try #require(TestEnvironment.hasFUSE, Comment(rawValue: TestEnvironment.requirementMessage("/dev/fuse")))
}
