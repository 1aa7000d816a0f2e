import Foundation
import Glibc
import Synchronization

/// Collects what a sandboxed program writes to a pipe, keeping at most `limit` bytes: its first
/// bytes (responses gathered for a JSON document) or its last (the end of an output that explains
/// a failure). A program that writes without end must not fill the host's memory; beyond the
/// limit the pipe is still drained, so the program is never blocked, and `total` tells how much
/// was written.
public final class OutputCollector: Sendable {
    public enum Keep: Sendable {
        case first, last
    }

    /// The end the program writes to (a sandbox's stdout or stderr).
    public let writeEnd: Int32
    private let readEnd: Int32
    private let limit: Int
    private let keep: Keep
    private let collected = Mutex<(bytes: [UInt8], total: Int)>(([], 0))
    private let drained = DispatchSemaphore(value: 0)

    /// Called once, on the draining thread, with the bytes up to the first newline as soon as
    /// that newline arrives: a runner's response is complete before its instance has exited.
    private let onFirstLine: (@Sendable ([UInt8]) -> Void)?

    /// Drains run on one shared queue (threads are reused; each drain blocks one while its
    /// program runs). A queue of our own is overcommitting: a busy pool never delays a drain.
    private static let drains = DispatchQueue(label: "catalyzer-output", attributes: .concurrent)

    public init(limit: Int, keep: Keep, onFirstLine: (@Sendable ([UInt8]) -> Void)? = nil) throws {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw RuntimeError("cannot create a pipe for the program's output: \(String(cString: strerror(errno)))") }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        readEnd = ends[0]
        writeEnd = ends[1]
        self.limit = limit
        self.keep = keep
        self.onFirstLine = onFirstLine
        Self.drains.async { [self] in drain() }
    }

    private func drain() {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        var lineReported = onFirstLine == nil
        var scanned = 0  // bytes already searched for the first newline
        while true {
            let count = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            collected.withLock { state in
                state.total += count
                switch keep {
                case .first:
                    state.bytes.append(contentsOf: buffer.prefix(min(count, limit - state.bytes.count)))
                case .last:
                    state.bytes.append(contentsOf: buffer.prefix(count))
                    if state.bytes.count > limit { state.bytes.removeFirst(state.bytes.count - limit) }
                }
            }
            if !lineReported, keep == .first, let line = collected.withLock({ state -> [UInt8]? in
                defer { scanned = state.bytes.count }
                return state.bytes[scanned...].firstIndex(of: UInt8(ascii: "\n")).map { Array(state.bytes[..<$0]) }
            }) {
                lineReported = true
                onFirstLine?(line)
            }
        }
        close(readEnd)
        drained.signal()
    }

    /// What was kept so far, while the program may still write (a warm instance's log tail).
    public func snapshot() -> [UInt8] {
        collected.withLock { $0.bytes }
    }

    /// Closes the write end and returns what was kept and how much was written in all. Call it
    /// once the program can write no more (the sandbox has ended).
    public func finish() -> (bytes: [UInt8], total: Int) {
        close(writeEnd)
        drained.wait()
        return collected.withLock { $0 }
    }
}
