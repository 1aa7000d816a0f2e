import Dispatch
import Foundation
import Synchronization

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
