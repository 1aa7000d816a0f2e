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
    private struct Collected {
        var bytes: [UInt8] = []
        var total = 0
        /// Set when the read end is closed: its number may belong to another file after that.
        var readEndClosed = false
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
    }
    private let collected = Mutex(Collected())
    private let drained = DispatchSemaphore(value: 0)

    /// Called once, on the draining thread, with the bytes up to the first newline as soon as
    /// that newline arrives: a runner's response is complete before its instance has exited.
    private let onFirstLine: (@Sendable ([UInt8]) -> Void)?

    public init(limit: Int, keep: Keep, onFirstLine: (@Sendable ([UInt8]) -> Void)? = nil) throws {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw RuntimeError("cannot create a pipe for the program's output: \(String(cString: strerror(errno)))") }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        _ = fcntl(ends[0], F_SETFL, O_NONBLOCK)
        readEnd = ends[0]
        writeEnd = ends[1]
        self.limit = limit
        self.keep = keep
        self.onFirstLine = onFirstLine
        // A drain blocks its thread while the program runs: on a pooled thread of its own (a
        // Dispatch queue would give it one of a pool as wide as the CPUs, and a few sleeping
        // instances would hold every drain of the others back).
        InstanceThread.start { [self] in drain() }
    }

    /// Waits for the pipe to be readable, then takes what it holds under the lock, until end of
    /// file. Reading only under the lock keeps the bytes in order when `snapshot` reads too.
    private func drain() {
        var lineReported = onFirstLine == nil
        var scanned = 0  // bytes already searched for the first newline
        while true {
            var poller = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            if poll(&poller, 1, -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            let (open, line) = collected.withLock { state -> (Bool, [UInt8]?) in
                let open = take(into: &state)
                guard !lineReported, keep == .first else { return (open, nil) }
                defer { scanned = state.bytes.count }
                return (open, state.bytes[scanned...].firstIndex(of: UInt8(ascii: "\n")).map { Array(state.bytes[..<$0]) })
            }
            if let line {
                lineReported = true
                onFirstLine?(line)
            }
            if !open { break }
        }
        collected.withLock { state in
            state.readEndClosed = true
            close(readEnd)
        }
        drained.signal()
    }

    /// Reads what the pipe holds now into `state` (called under the lock); false at end of file.
    private func take(into state: inout Collected) -> Bool {
        guard !state.readEndClosed else { return false }
        while true {
            let count = state.buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return true }
            if count <= 0 { return false }
            state.total += count
            switch keep {
            case .first:
                state.bytes.append(contentsOf: state.buffer.prefix(min(count, limit - state.bytes.count)))
            case .last:
                state.bytes.append(contentsOf: state.buffer.prefix(count))
                if state.bytes.count > limit { state.bytes.removeFirst(state.bytes.count - limit) }
            }
        }
    }

    /// What was written so far, while the program may still write (a response's log tail, a
    /// warm instance's): everything the pipe holds now is taken first.
    public func snapshot() -> [UInt8] {
        collected.withLock { state in
            _ = take(into: &state)
            return state.bytes
        }
    }

    /// Closes the write end and returns what was kept and how much was written in all. Call it
    /// once the program can write no more (the sandbox has ended).
    public func finish() -> (bytes: [UInt8], total: Int) {
        close(writeEnd)
        drained.wait()
        return collected.withLock { ($0.bytes, $0.total) }
    }
}
