import CLinux
import Foundation
import Glibc
import Synchronization

/// Collects what a sandboxed program writes to a pipe, keeping at most `limit` bytes: its first
/// bytes (responses gathered for a JSON document) or its last (the end of an output that explains
/// a failure). A program that writes without end must not fill the host's memory; beyond the
/// limit the pipe is still drained, so the program is never blocked, and `total` tells how much
/// was written.
///
/// Pipes are drained by one thread for the whole process (`OutputDrainer`), not a thread per
/// pipe: a fork used to start two (stdout and stderr) beside its vCPU, and on two cores their
/// start and end competed with the fork itself.
public final class OutputCollector: Sendable {
    public enum Keep: Sendable {
        case first, last
    }

    /// The end the program writes to (a sandbox's stdout or stderr).
    public let writeEnd: Int32
    let readEnd: Int32
    private let limit: Int
    private let keep: Keep
    private struct Collected {
        var bytes: [UInt8] = []
        var total = 0
        /// Set when the read end is closed: its number may belong to another file after that.
        var readEndClosed = false
        /// The end of file was read: nothing more will come.
        var ended = false
        /// Whether `onFirstLine` has been called (or is not wanted), and how many bytes were
        /// already searched for the first newline.
        var lineReported = false
        var scanned = 0
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
    }
    private let collected: Mutex<Collected>

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
        collected = Mutex(Collected(lineReported: onFirstLine == nil || keep != .first))
        do {
            try OutputDrainer.shared.watch(self)
        } catch {
            close(ends[0])
            close(ends[1])
            throw error
        }
    }

    /// Takes what the pipe holds now (the drainer calls this when it is readable), and reports
    /// the first line once it is complete. Returns false once the end of file was read.
    @discardableResult
    func pump() -> Bool {
        let (open, line) = collected.withLock { state -> (Bool, [UInt8]?) in
            let open = take(into: &state)
            guard !state.lineReported else { return (open, nil) }
            defer { state.scanned = state.bytes.count }
            guard let newline = state.bytes[state.scanned...].firstIndex(of: UInt8(ascii: "\n")) else { return (open, nil) }
            state.lineReported = true
            return (open, Array(state.bytes[..<newline]))
        }
        if let line { onFirstLine?(line) }
        return open
    }

    /// Reads what the pipe holds now into `state` (called under the lock); false at end of file.
    private func take(into state: inout Collected) -> Bool {
        guard !state.readEndClosed, !state.ended else { return false }
        while true {
            let count = state.buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return true }
            if count <= 0 {
                state.ended = true
                return false
            }
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

    /// Closes the write end, takes what is left in the pipe (up to its end of file, on the
    /// calling thread), and returns what was kept and how much was written in all. Call it once
    /// the program can write no more (the sandbox has ended).
    public func finish() -> (bytes: [UInt8], total: Int) {
        close(writeEnd)
        OutputDrainer.shared.unwatch(self)
        while pump() {
            // Nobody else writes: the read end reaches its end of file once the pipe is empty.
            var poller = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            _ = poll(&poller, 1, 100)
        }
        return collected.withLock { state in
            if !state.readEndClosed {
                state.readEndClosed = true
                close(readEnd)
            }
            return (state.bytes, state.total)
        }
    }
}

/// The one thread that drains every `OutputCollector`'s pipe: an epoll set of their read ends,
/// level-triggered, so a program is never blocked on a full pipe and a response line is seen as
/// soon as it is written. Watching a pipe is one `epoll_ctl`, with no thread to start or wake.
final class OutputDrainer: Sendable {
    static let shared = OutputDrainer()

    private let epoll: Int32
    /// The collectors watched, by read end. Guarded by its lock; a collector is looked up under
    /// it for every event, so one unwatched (its read end closed, the number perhaps reused) is
    /// never pumped.
    private let watched = Mutex<[Int32: OutputCollector]>([:])

    private init() {
        epoll = clinux_epoll_create()
        guard epoll >= 0 else { return }
        let thread = Thread { [self] in drain() }
        thread.name = "catalyzer-output"
        thread.start()
    }

    func watch(_ collector: OutputCollector) throws {
        guard epoll >= 0 else { throw RuntimeError("cannot create an epoll instance to drain program output: \(String(cString: strerror(errno)))") }
        watched.withLock { $0[collector.readEnd] = collector }
        guard clinux_epoll_watch_input(epoll, collector.readEnd) == 0 else {
            let code = errno
            watched.withLock { $0[collector.readEnd] = nil }
            throw RuntimeError("cannot watch a program's output pipe: \(String(cString: strerror(code)))")
        }
    }

    func unwatch(_ collector: OutputCollector) {
        watched.withLock { watched in
            guard watched[collector.readEnd] === collector else { return }
            watched[collector.readEnd] = nil
            _ = clinux_epoll_unwatch(epoll, collector.readEnd)
        }
    }

    private func drain() {
        var ready = [Int32](repeating: -1, count: 64)
        while true {
            let count = ready.withUnsafeMutableBufferPointer { clinux_epoll_wait_fds(epoll, $0.baseAddress, Int32($0.count), -1) }
            if count < 0 {
                if errno == EINTR { continue }
                return
            }
            for fd in ready.prefix(Int(count)) {
                guard let collector = watched.withLock({ $0[fd] }) else { continue }
                // At its end of file a pipe stays readable: stop watching it, or this would spin.
                if !collector.pump() { unwatch(collector) }
            }
        }
    }
}
