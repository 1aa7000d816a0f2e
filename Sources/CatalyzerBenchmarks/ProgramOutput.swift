import Dispatch
import Foundation
import Glibc
import Synchronization

/// What the benchmarks' probe programs print: `KEY VALUE` lines, one sample each.
enum ProgramOutput {
    static func samples(_ output: String) -> [String: [Double]] {
        var samples: [String: [Double]] = [:]
        for line in output.split(separator: "\n") {
            let words = line.split(separator: " ")
            if words.count == 2, let value = Double(words[1]) { samples[String(words[0]), default: []].append(value) }
        }
        return samples
    }
}

/// Reads a pipe to its end on a thread of its own, so the sandbox's writes never block on a full
/// pipe while `Sandbox.run` holds the calling thread.
final class OutputReader: Sendable {
    private let bytes = Mutex<[UInt8]>([])
    private let ended = DispatchSemaphore(value: 0)

    init(fd: Int32) {
        Thread.detachNewThread { [self] in
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { break }
                bytes.withLock { $0 += buffer.prefix(count) }
            }
            ended.signal()
        }
    }

    /// Waits for end-of-file (every write end closed) and returns what was read.
    func finish() -> String {
        ended.wait()
        return bytes.withLock { String(decoding: $0, as: UTF8.self) }
    }
}
