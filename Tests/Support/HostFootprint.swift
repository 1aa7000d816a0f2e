import CatalyzerImage
import Foundation
import Glibc

/// What a command (the sandbox monitor, `catalyzer run` or `invoke`) made the host hold while it
/// ran, sampled from `/proc` every few milliseconds, with its exit and wall time. The command runs
/// under `timeout -s KILL`, so a hang ends as status 137.
///
/// The host memory of a monitor is its anonymous memory (`RssAnon`: its heap, pipe and socket
/// buffers, /tmp arrays, a restored instance's private copies of image pages) plus the pages its
/// memfds hold (guest RAM of every process, /tmp files in memfds; `st_blocks` of each
/// `/proc/PID/fd` link to `memfd:`). File-backed pages it maps (its binary, libraries, the image
/// file's page cache) are shared and not counted; `VmHWM` is reported too, but it counts memfd
/// pages the monitor touched as well, so it is not summed with them.
public struct HostFootprint: Sendable, CustomStringConvertible {
    public var result: CommandResult
    public var wallSeconds: Double = 0
    /// The largest `RssAnon` + memfd bytes seen at one sample.
    public var peakBytes = 0
    public var peakMemfdBytes = 0
    /// The monitor's `VmHWM` at its last sample.
    public var highWaterRSS = 0
    /// The most open fds seen at one sample.
    public var peakDescriptors = 0
    public var samples = 0
    /// CLOCK_MONOTONIC when the command had exited, in seconds: compare with a time the guest
    /// printed (a cold sandbox's monotonic clock is the host's).
    public var exitMonotonicSeconds: Double = 0

    /// Seconds from the monotonic time the guest printed as its first line of output to the
    /// command's exit; nil if it printed none.
    public var secondsFromGuestStartToExit: Double? {
        guard let first = result.stdout.split(separator: "\n").first, let start = Double(first) else { return nil }
        return exitMonotonicSeconds - start
    }

    public var description: String {
        String(format: "wall %.2f s (%.2f s from the guest's start), peak anon+memfd %d MiB (memfd %d MiB), VmHWM %d MiB, peak fds %d, %d samples; ",
               wallSeconds, secondsFromGuestStartToExit ?? -1, peakBytes >> 20, peakMemfdBytes >> 20, highWaterRSS >> 20, peakDescriptors, samples) + "\(result)"
    }

    /// Runs `executable arguments` under `timeout -s KILL seconds` and samples the process it starts.
    public static func measure(_ seconds: Int, _ executable: String, _ arguments: [String], stdin: Data? = nil,
                               environment: [String: String] = [:]) throws -> HostFootprint {
        let start = Date()
        let sampler = Sampler()
        let result = try Command.run("timeout", ["-s", "KILL", String(seconds), executable] + arguments, stdin: stdin,
                                     environment: environment, started: { pid in sampler.start(timeoutPID: pid) })
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        var footprint = sampler.stop()
        footprint.exitMonotonicSeconds = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
        footprint.result = result
        footprint.wallSeconds = Date().timeIntervalSince(start)
        return footprint
    }

    init(result: CommandResult = CommandResult(status: -1, stdout: "", stderr: "")) { self.result = result }
}

/// Samples the child of `timeout` (the measured command) on a thread of its own.
private final class Sampler: @unchecked Sendable {
    private let lock = NSLock()
    private var footprint = HostFootprint()
    private var running = true
    private let done = DispatchSemaphore(value: 0)

    func start(timeoutPID: Int32) {
        Thread.detachNewThread { [self] in
            var pid: Int32?
            while isRunning {
                if pid == nil { pid = Self.child(of: timeoutPID) }
                if let pid { sample(pid) }
                usleep(5_000)
            }
            if let pid { sample(pid) }
            done.signal()
        }
    }

    private var isRunning: Bool { lock.withLock { running } }

    func stop() -> HostFootprint {
        lock.withLock { running = false }
        done.wait()
        return lock.withLock { footprint }
    }

    private static func child(of pid: Int32) -> Int32? {
        guard let text = FileIO.readToEnd("/proc/\(pid)/task/\(pid)/children") else { return nil }
        return text.split(separator: " ").first.flatMap { Int32($0) }
    }

    private func sample(_ pid: Int32) {
        guard let status = FileIO.readToEnd("/proc/\(pid)/status") else { return }
        func kilobytes(_ key: String) -> Int? {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }) else { return nil }
            return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }.map { $0 * 1024 }
        }
        guard let anonymous = kilobytes("RssAnon") else { return }  // exited: a zombie has no memory lines
        let highWater = kilobytes("VmHWM") ?? 0
        var memfd = 0, descriptors = 0
        let directory = "/proc/\(pid)/fd"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            descriptors += 1
            let path = directory + "/" + name
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path), target.hasPrefix("/memfd:") else { continue }
            var info = stat()
            if stat(path, &info) == 0 { memfd += Int(info.st_blocks) * 512 }
        }
        lock.withLock {
            footprint.samples += 1
            footprint.peakBytes = max(footprint.peakBytes, anonymous + memfd)
            footprint.peakMemfdBytes = max(footprint.peakMemfdBytes, memfd)
            footprint.highWaterRSS = max(footprint.highWaterRSS, highWater)
            footprint.peakDescriptors = max(footprint.peakDescriptors, descriptors)
        }
    }
}
