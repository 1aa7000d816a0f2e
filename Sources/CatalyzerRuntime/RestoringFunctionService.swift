import CatalyzerImage
import CatalyzerKernel
import Foundation
import Glibc
import Synchronization

/// A `FunctionService` that restores a new instance through catalyzerfs for every request: the
/// path `catalyzer invoke` takes, kept as the baseline `ForkingFunctionService` is measured
/// against and as the fallback where no template can be parked.
public final class RestoringFunctionService: FunctionService {
    public let store: ImageStore
    /// The catalyzerfs mount (nil: `CATALYZER_MOUNT`, else the managed mount).
    let mount: String?
    let limits: SandboxLimits

    public init(store: ImageStore, mount: String? = nil, limits: SandboxLimits = SandboxLimits()) {
        self.store = store
        self.mount = mount
        self.limits = limits
    }

    public func functions() throws(FunctionServiceError) -> [FunctionDescription] {
        try FunctionDescription.all(in: store)
    }

    public func function(named name: String) throws(FunctionServiceError) -> FunctionDescription {
        try FunctionDescription.of(name, in: store)
    }

    public func invoke(_ request: FunctionRequest) async throws(FunctionServiceError) -> FunctionResponse {
        _ = try function(named: request.function)
        let store = store, mount = mount, limits = limits
        let outcome = await InstanceThread.run { () -> Result<FunctionResponse, FunctionServiceError> in
            do {
                let stdin = try RequestPipe.holding(String(decoding: request.event, as: UTF8.self))
                defer { close(stdin) }
                let stdout = try OutputCollector(limit: FunctionResponse.standardOutputLimit, keep: .first)
                let stderr = try OutputCollector(limit: FunctionResponse.logTailLimit, keep: .last)
                var invocation = InvocationRequest(image: request.function, store: store)
                invocation.mount = mount
                invocation.standardStreams = [stdin, stdout.writeEnd, stderr.writeEnd]
                invocation.timeoutSeconds = request.timeoutSeconds
                invocation.limits = limits
                let result: InvocationResult
                do {
                    result = try Invocation.run(invocation)
                } catch {
                    _ = stdout.finish()
                    _ = stderr.finish()
                    return .failure(.cannotStart(function: request.function, reason: "\(error)"))
                }
                let output = stdout.finish().bytes
                let log = stderr.finish().bytes
                let timings = result.timings
                func nanoseconds(_ microseconds: Double?) -> UInt64? { microseconds.map { UInt64($0 * 1000) } }
                return .success(FunctionResponse(
                    outcome: FunctionResponse.outcome(exit: result.exit.summary, standardOutput: output, timeoutSeconds: request.timeoutSeconds),
                    logTail: log, firstInstructionNanoseconds: nanoseconds(timings.firstInstructionMicroseconds),
                    responseNanoseconds: nanoseconds(timings.responseMicroseconds)))
            } catch {
                return .failure(.cannotStart(function: request.function, reason: "\(error)"))
            }
        }
        return try outcome.get()
    }
}

extension FunctionResponse {
    /// The most response bytes an instance's stdout is read for: Lambda's 6 MB synchronous
    /// response limit, plus the runner's envelope.
    public static let standardOutputLimit = 6 * 1024 * 1024 + 4096
}

extension SandboxExit {
    /// The exit without the kernel's types, for `FunctionResponse`.
    public var summary: SandboxExitSummary {
        switch self {
        case .exited(let status): .exited(status: status)
        case .killed(let signal, let reason): .killed(reason: "\(reason) (signal \(signal))")
        case .timedOut: .timedOut
        case .readyPoint: .killed(reason: "stopped at its ready point")
        }
    }
}

/// Runs a guest on a thread of its own: a vCPU blocks its thread while the guest runs, which
/// must never be one of Swift concurrency's few cooperative threads. Threads (with the 8 MiB
/// stacks the monitor's deep paths need) are kept for reuse, since creating one per invocation
/// costs tens of microseconds of a sub-millisecond fork.
public enum InstanceThread {
    public static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            start { continuation.resume(returning: body()) }
        }
    }

    /// Runs `body` on an idle instance thread, or a new one.
    public static func start(_ body: @escaping @Sendable () -> Void) {
        let handedOver = pool.withLock { pool -> Bool in
            guard let idle = pool.idle.popLast() else { return false }
            idle.work = body
            idle.wake.signal()
            return true
        }
        if handedOver { return }
        let worker = Worker(work: body)
        let thread = Thread { worker.loop() }
        thread.stackSize = 8 << 20
        thread.start()
    }

    /// Idle threads kept at most; more finish when their work is done.
    static let idleLimit = 64
    private static let pool = Mutex(Pool())

    private struct Pool: ~Copyable {
        var idle: [Worker] = []
    }

    /// One pooled thread: runs its work, then parks until handed more.
    private final class Worker: @unchecked Sendable {
        /// Set under the pool's lock before `wake` is signalled; read by the worker after.
        var work: (@Sendable () -> Void)?
        let wake = DispatchSemaphore(value: 0)

        init(work: @escaping @Sendable () -> Void) { self.work = work }

        func loop() {
            while runWork() {
                let parked = InstanceThread.pool.withLock { pool -> Bool in
                    guard pool.idle.count < InstanceThread.idleLimit else { return false }
                    pool.idle.append(self)
                    return true
                }
                guard parked else { return }
                wake.wait()
            }
        }

        /// Runs the work handed over, if any. A function of its own so that the closure, and
        /// all it captured (a fork, its template and their files), is released before the thread
        /// parks, not when it next wakes.
        private func runWork() -> Bool {
            guard let body = work else { return false }
            work = nil
            body()
            return true
        }
    }
}
