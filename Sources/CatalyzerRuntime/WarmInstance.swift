import CatalyzerKVM
import CatalyzerKernel
import Dispatch
import Foundation
import Glibc
import Synchronization

/// A forked sandbox kept running between invocations (`serve --reuse N`): its runner stays in
/// its read of stdin, each invocation writes one request line and reads one response line. This
/// is AWS Lambda's warm container: module state, /tmp and memory carry over from one invocation
/// to the next within the instance, which is weaker isolation than a fork per invocation.
final class WarmInstance: @unchecked Sendable {
    private let requestWrite: Int32
    private let responseRead: Int32
    private let standardError: OutputCollector
    private let exitRequester: ExitRequester
    /// Set by the instance's thread when its program has ended.
    private let ended = Mutex<SandboxExit?>(nil)
    private let finished = DispatchSemaphore(value: 0)
    /// Invocations served so far; read and written only by the invocation that holds the instance.
    private(set) var served = 0
    /// Response bytes read past the last newline (none, with the runner's one line per request).
    private var pending: [UInt8] = []
    private var stopped = false

    init(template: FunctionTemplate, limits: SandboxLimits) throws {
        var input: [Int32] = [-1, -1], output: [Int32] = [-1, -1]
        guard pipe(&input) == 0 else { throw RuntimeError("cannot create a pipe: \(String(cString: strerror(errno)))") }
        guard pipe(&output) == 0 else {
            close(input[0]); close(input[1])
            throw RuntimeError("cannot create a pipe: \(String(cString: strerror(errno)))")
        }
        for fd in input + output { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let stderr: OutputCollector
        do { stderr = try OutputCollector(limit: FunctionResponse.logTailLimit, keep: .last) } catch {
            for fd in input + output { close(fd) }
            throw error
        }
        var options = RestoreOptions()
        options.standardStreams = [input[0], output[1], stderr.writeEnd]
        options.limits = limits
        let fork: ForkedSandbox
        do { fork = try template.fork(options: options) } catch {
            for fd in input + output { close(fd) }
            _ = stderr.finish()
            throw error
        }
        requestWrite = input[1]
        responseRead = output[0]
        standardError = stderr
        exitRequester = fork.kernel!.exitRequester
        let readEnd = input[0], writeEnd = output[1]
        let thread = Thread { [self] in
            let exit = (try? fork.run(timeoutSeconds: nil).exit) ?? .killed(signal: SIGKILL, reason: "the monitor failed")
            close(readEnd)
            close(writeEnd)  // the invocation waiting for a response sees end of file
            ended.withLock { $0 = exit }
            finished.signal()
        }
        thread.stackSize = 8 << 20
        thread.start()
    }

    var isAlive: Bool { ended.withLock { $0 == nil } }

    /// Serves one request: writes its line, waits for the response line until the timeout.
    func serve(_ request: FunctionRequest, accepted: UInt64) async -> FunctionResponse {
        served += 1
        return await InstanceThread.run { [self] in serveBlocking(request, accepted: accepted) }
    }

    private func serveBlocking(_ request: FunctionRequest, accepted: UInt64) -> FunctionResponse {
        let line = request.event + [UInt8(ascii: "\n")]
        var written = 0
        while written < line.count {
            let count = line[written...].withUnsafeBytes { write(requestWrite, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return failure("the instance stopped reading requests") }
            written += count
        }
        let deadline = Sandbox.monotonicNanoseconds() &+ UInt64(request.timeoutSeconds * 1e9)
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while !pending.contains(UInt8(ascii: "\n")) {
            let now = Sandbox.monotonicNanoseconds()
            guard now < deadline else {
                stop()
                return FunctionResponse(outcome: .timedOut(seconds: request.timeoutSeconds), logTail: standardError.snapshot())
            }
            var poller = pollfd(fd: responseRead, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(min(1000, (deadline - now) / 1_000_000 + 1)))
            if ready <= 0 { continue }
            let count = buffer.withUnsafeMutableBytes { read(responseRead, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                finished.wait()
                finished.signal()
                let exit = ended.withLock { $0 } ?? .exited(status: 0)
                return FunctionResponse(outcome: FunctionResponse.outcome(exit: exit.summary, standardOutput: [], timeoutSeconds: request.timeoutSeconds),
                                        logTail: standardError.snapshot())
            }
            pending.append(contentsOf: buffer.prefix(count))
            if pending.count > FunctionResponse.standardOutputLimit {
                stop()
                return failure("the response is longer than \(FunctionResponse.standardOutputLimit) bytes")
            }
        }
        let responded = Sandbox.monotonicNanoseconds()
        let end = pending.firstIndex(of: UInt8(ascii: "\n"))!
        let response = Array(pending[..<end])
        pending.removeSubrange(...end)
        return FunctionResponse(outcome: FunctionResponse.outcome(exit: .exited(status: 0), standardOutput: response, timeoutSeconds: request.timeoutSeconds),
                                logTail: standardError.snapshot(), responseNanoseconds: responded &- accepted)
    }

    private func failure(_ reason: String) -> FunctionResponse {
        FunctionResponse(outcome: .failed(reason: reason), logTail: standardError.snapshot())
    }

    /// Ends the instance (its VM is discarded, never reused) and waits for its thread; once.
    func stop() {
        guard !stopped else { return }
        stopped = true
        close(requestWrite)  // a runner in its read sees end of input and exits
        exitRequester.requestExit()
        finished.wait()
        finished.signal()
        close(responseRead)
        _ = standardError.finish()
    }
}
