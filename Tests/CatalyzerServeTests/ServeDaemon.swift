import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// `catalyzer serve` run as a subprocess on 127.0.0.1:0: started, its port read from its
/// "listening on" line, its stderr kept, and stopped with SIGTERM.
final class ServeDaemon: @unchecked Sendable {
    let process = Process()
    private let lock = NSLock()
    private var errorText = ""
    private let listening = DispatchSemaphore(value: 0)
    private let finishedReading = DispatchSemaphore(value: 0)
    private(set) var port = 0

    var endpoint: String { "http://127.0.0.1:\(port)" }

    var stderr: String { lock.withLock { errorText } }

    /// Starts the daemon with `arguments` after `serve`; fails if it does not listen within 60 s.
    init(_ arguments: [String], environment: [String: String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        process.executableURL = URL(fileURLWithPath: Command.binary("catalyzer"))
        process.arguments = ["serve", "--listen", "127.0.0.1:0"] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let handle = errors.fileHandleForReading
        Thread.detachNewThread { [self] in
            // Reads stderr to its end so the daemon never blocks on a full pipe.
            var pending = ""
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                let text = String(decoding: data, as: UTF8.self)
                lock.withLock { errorText += text }
                pending += text
                if port == 0, let range = pending.range(of: "listening on http://127.0.0.1:") {
                    let digits = pending[range.upperBound...].prefix { $0.isNumber }
                    if let value = Int(digits), pending[range.upperBound...].dropFirst(digits.count).first != nil {
                        port = value
                        listening.signal()
                    }
                }
            }
            finishedReading.signal()
        }
        if listening.wait(timeout: .now() + 60) == .timedOut {
            process.terminate()
            process.waitUntilExit()
            Issue.record("the daemon did not listen within 60 s: \(stderr)", sourceLocation: sourceLocation)
            throw DaemonError.notListening
        }
    }

    enum DaemonError: Error { case notListening }

    /// SIGTERM, then waits for the exit (SIGKILL after `seconds`); returns the exit status.
    @discardableResult
    func stop(within seconds: Double = 60) -> Int32 {
        guard process.isRunning else { return process.terminationStatus }
        kill(process.processIdentifier, SIGTERM)
        return waitForExit(seconds)
    }

    func waitForExit(_ seconds: Double) -> Int32 {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            Issue.record("the daemon did not exit within \(seconds) s of SIGTERM: \(stderr)")
        }
        _ = finishedReading.wait(timeout: .now() + 5)
        return process.terminationStatus
    }
}

/// Runs `catalyzer serve` with arguments that must make it refuse to start: its status and stderr.
func serveRefusal(_ arguments: [String], environment: [String: String]) throws -> CommandResult {
    try Command.bounded(60, Command.binary("catalyzer"), ["serve"] + arguments, environment: environment)
}
