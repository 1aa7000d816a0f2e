import Foundation
import Glibc
import Synchronization

/// Collects what a program writes to a pipe, keeping only the last `limit` bytes: a function
/// that prints without end while it initializes must not fill the host's memory, and the end of
/// its output is what explains a failure.
final class OutputTail: Sendable {
    /// The end the program writes to.
    let writeEnd: Int32
    private let readEnd: Int32
    private let limit: Int
    private let collected = Mutex<(tail: [UInt8], total: Int)>(([], 0))
    private let finished = DispatchSemaphore(value: 0)

    init(limit: Int = 16 << 10) throws {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw RuntimeError("cannot create a pipe for the program's output: \(String(cString: strerror(errno)))") }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        readEnd = ends[0]
        writeEnd = ends[1]
        self.limit = limit
        Thread.detachNewThread { [self] in drain() }
    }

    private func drain() {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            collected.withLock { state in
                state.total += count
                state.tail.append(contentsOf: buffer.prefix(count))
                if state.tail.count > limit { state.tail.removeFirst(state.tail.count - limit) }
            }
        }
        close(readEnd)
        finished.signal()
    }

    /// Closes the write end and returns what was collected, once the program (whose copies of
    /// the write end must be gone by then) can write no more.
    func finish() -> String {
        close(writeEnd)
        finished.wait()
        let (tail, total) = collected.withLock { $0 }
        let text = String(decoding: tail, as: UTF8.self)
        return total > tail.count ? "[… \(total - tail.count) earlier bytes left out]\n" + text : text
    }
}
