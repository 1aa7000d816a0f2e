import CatalyzerImage
import CatalyzerRegistry
import Foundation
import Glibc
import Synchronization

/// Shows a push or pull as it goes: a live bar on a terminal (stderr), one JSON object per line
/// on stdout otherwise or with `--json`, nothing with `--quiet`.
final class TransferProgress: Sendable {
    enum Mode: Sendable { case bar, json, quiet }

    let mode: Mode

    private struct State {
        var totalBlobs = 0
        var totalBytes: Int64 = 0
        var doneBlobs = 0
        /// Bytes settled: transferred, plus the sizes of blobs that needed no transfer.
        var doneBytes: Int64 = 0
        var wireBytes: Int64 = 0
        var retries = 0
        var lastDraw: UInt64 = 0
        var drawn = false
    }
    private let state = Mutex(State())
    private let started = DispatchTime.now().uptimeNanoseconds

    init(json: Bool, quiet: Bool) {
        mode = quiet ? .quiet : json || isatty(STDERR_FILENO) == 0 ? .json : .bar
    }

    func handle(_ event: TransferEvent) {
        switch mode {
        case .quiet:
            return
        case .json:
            switch event {
            case let .plan(operation, reference, blobs, bytes):
                line(["event": "plan", "operation": operation.rawValue, "reference": reference, "blobs": blobs, "bytes": bytes])
            case let .blob(digest, role, size, action):
                line(["event": "blob", "digest": digest.description, "role": role, "size": size, "action": action.rawValue])
            case let .retry(operation, attempt, delay, reason):
                line(["event": "retry", "operation": operation, "attempt": attempt, "delay": (delay * 1000).rounded() / 1000, "reason": reason])
            case .bytes:
                return
            }
        case .bar:
            let now = DispatchTime.now().uptimeNanoseconds
            let text: String? = state.withLock { state in
                switch event {
                case let .plan(_, _, blobs, bytes):
                    state.totalBlobs = blobs
                    state.totalBytes = bytes
                case let .blob(_, _, size, action):
                    state.doneBlobs += 1
                    if action == .existing || action == .mounted { state.doneBytes += size }
                case let .bytes(count):
                    state.doneBytes += count
                    state.wireBytes += count
                case .retry:
                    state.retries += 1
                }
                guard now - state.lastDraw > 100_000_000 || state.doneBlobs == state.totalBlobs else { return nil }
                state.lastDraw = now
                state.drawn = true
                return Self.bar(state, elapsed: Double(now - started) / 1e9)
            }
            if let text { Self.write(STDERR_FILENO, "\r" + text + "\u{1B}[K") }
        }
    }

    /// Ends the bar's line, so what follows starts on a fresh one.
    func finish() {
        if mode == .bar && state.withLock({ $0.drawn }) { Self.write(STDERR_FILENO, "\n") }
    }

    /// The final report: a JSON line (`event: done`) or nothing (the caller prints text).
    func done(_ fields: [String: Any]) {
        if mode == .json { line(["event": "done"].merging(fields) { $1 }) }
    }

    private static func bar(_ state: State, elapsed: Double) -> String {
        let width = 24
        let fraction = state.totalBytes > 0 ? min(1, Double(state.doneBytes) / Double(state.totalBytes)) : 1
        let filled = Int(fraction * Double(width))
        let rate = elapsed > 0 ? Double(state.wireBytes) / elapsed : 0
        let remaining = Double(max(0, state.totalBytes - state.doneBytes))
        let eta = rate > 0 ? String(format: "%.0fs", remaining / rate) : "-"
        return "[" + String(repeating: "=", count: filled) + (filled < width ? ">" : "") + String(repeating: " ", count: max(0, width - filled - 1)) + "] "
            + "\(ByteCount.format(state.doneBytes))/\(ByteCount.format(state.totalBytes))  "
            + "blobs \(state.doneBlobs)/\(state.totalBlobs)  \(ByteCount.format(Int64(rate)))/s  ETA \(eta)"
            + (state.retries > 0 ? "  (\(state.retries) retries)" : "")
    }

    private func line(_ object: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        Self.write(STDOUT_FILENO, String(decoding: data, as: UTF8.self) + "\n")
    }

    private static func write(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            done += n
        }
        bytes.removeAll()
    }
}
