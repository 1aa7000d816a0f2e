import CatalyzerKVM
import Dispatch
import Glibc
import Synchronization

/// What a blocked task waits for: wait queues that wake it, host fds to poll, a time to wake at.
/// A woken task re-runs its syscall from the start, so a wait needs no state of its own beyond
/// the syscall's deadline (`Task.syscallDeadline`), and spurious wake-ups are harmless.
struct Wait {
    var queues: [WaitQueue] = []
    /// Host fds (stdio pipes, a terminal) with the events awaited.
    var hostDescriptors: [pollfd] = []
    /// Host-monotonic nanoseconds at which to wake and re-check (a timeout, a timer's expiry).
    var deadline: UInt64?
    /// What the task waits on, for the deadlock report ("futex 0x7f…", "read from pipe").
    var reason: String
    /// Whether a signal ends the wait (false only for a vfork parent, as on Linux).
    var interruptible = true
    /// The task waits for a signal and nothing else (pause, sigsuspend, sigtimedwait): one sent
    /// from outside the sandbox can still end it, so all tasks waiting is not a deadlock then.
    var forSignal = false
}

/// Tasks waiting for one condition (a pipe's data, a child's exit, a futex word is a separate
/// table). Waking makes them runnable; each re-checks its condition.
final class WaitQueue {
    private var waiters: [Task] = []
    /// Bumped by every `wakeAll`: edge-triggered epoll reports a file again when its queue's
    /// generation moved (new data arrived), even if it never stopped being ready.
    private(set) var generation: UInt64 = 0

    init() {}

    var isEmpty: Bool { waiters.isEmpty }

    func add(_ task: Task) {
        if !waiters.contains(where: { $0 === task }) { waiters.append(task) }
    }

    func remove(_ task: Task) { waiters.removeAll { $0 === task } }

    /// Wakes up to `limit` waiters that satisfy `matching`, in arrival order, handing each
    /// `completion` as its syscall's result; returns how many it woke.
    func wake(limit: Int, completion: Int64?, matching: (Task) -> Bool = { _ in true }) -> Int {
        var woken = 0, index = 0
        while index < waiters.count && woken < limit {
            let task = waiters[index]
            guard matching(task) else {
                index += 1
                continue
            }
            waiters.remove(at: index)
            task.completion = completion
            task.sandbox.scheduler.wake(task)
            woken += 1
        }
        return woken
    }

    /// Moves up to `limit` waiters to `other` without waking them (FUTEX_CMP_REQUEUE).
    func requeue(limit: Int, to other: WaitQueue) -> Int {
        let moved = Array(waiters.prefix(limit))
        waiters.removeFirst(moved.count)
        for task in moved {
            other.add(task)
            if var wait = task.wait {
                wait.queues = wait.queues.map { $0 === self ? other : $0 }
                task.wait = wait
            }
        }
        return moved.count
    }

    /// Wakes every waiter.
    func wakeAll() {
        generation &+= 1
        guard !waiters.isEmpty else { return }
        let woken = waiters
        waiters.removeAll()
        for task in woken { task.sandbox.scheduler.wake(task) }
    }
}

/// The sandbox's run queue and waits. One host thread (the monitor's) runs every task of the
/// sandbox in turn: a task runs until it blocks, exits, yields, or its time slice ends (a ticker
/// kicks its vCPU out of the guest, see `PreemptionTicker`). When nothing can run, the monitor
/// sleeps in `ppoll` on the host fds tasks wait for, until the next deadline or a kick.
///
/// Chosen by measurement (see docs/benchmarks.md, "Tasks"): on these 2-core hosts the monitor's
/// thread and catalyzerfs already use both cores, and a task switch in the monitor costs a few µs
/// against a ~26 µs syscall trap, while a vCPU per task would need per-vCPU system areas and locks
/// around every piece of kernel state. All kernel state is touched only from this thread.
final class Scheduler {
    /// Taken entries are set to nil at once: an exited task must not be kept alive by the queue.
    private var runQueue: [Task?] = []
    private var runQueueHead = 0
    /// Blocked tasks by identity.
    private(set) var blocked: [ObjectIdentifier: Task] = [:]
    /// Flags the ticker thread reads.
    let signals = SchedulerSignals()

    var hasRunnable: Bool { runQueueHead < runQueue.count }

    /// Appends a runnable task.
    func enqueue(_ task: Task) {
        runQueue.append(task)
        signals.othersRunnable.store(true, ordering: .relaxed)
    }

    /// The next runnable task, or nil.
    func next() -> Task? {
        while runQueueHead < runQueue.count {
            guard let task = runQueue[runQueueHead] else { runQueueHead += 1; continue }
            runQueue[runQueueHead] = nil
            runQueueHead += 1
            if runQueueHead > 64 && runQueueHead * 2 > runQueue.count {
                runQueue.removeFirst(runQueueHead)
                runQueueHead = 0
            }
            if task.state == .runnable { return task }
        }
        return nil
    }

    /// Parks `task` until a queue in `wait` wakes it, a host fd is ready or the deadline passes.
    func block(_ task: Task, _ wait: Wait) {
        task.state = .blocked
        task.wait = wait
        for queue in wait.queues { queue.add(task) }
        blocked[ObjectIdentifier(task)] = task
    }

    /// Makes a blocked task runnable; it re-runs its syscall.
    func wake(_ task: Task) {
        guard task.state == .blocked else { return }
        detach(task)
        task.state = .runnable
        enqueue(task)
    }

    /// Takes `task` off every wait (it woke or exited).
    func detach(_ task: Task) {
        if let wait = task.wait {
            for queue in wait.queues { queue.remove(task) }
        }
        task.wait = nil
        blocked[ObjectIdentifier(task)] = nil
    }

    /// Wakes the tasks whose deadline has passed.
    func expireDeadlines(now: UInt64) {
        for task in blocked.values where (task.wait?.deadline).map({ $0 <= now }) == true {
            wake(task)
        }
    }

    /// The earliest deadline of any blocked task.
    var nextDeadline: UInt64? { blocked.values.compactMap { $0.wait?.deadline }.min() }

    var hasHostWaiters: Bool { blocked.values.contains { !($0.wait?.hostDescriptors.isEmpty ?? true) } }
    var hasSignalWaiters: Bool { blocked.values.contains { $0.wait?.forSignal ?? false } }

    /// Polls the host fds blocked tasks wait for, for up to `timeoutNanoseconds` (nil: no limit,
    /// 0: just look), and wakes the tasks whose fds are ready. Returns early on a kick (EINTR).
    /// The host inbox's pipe, polled beside the tasks' host fds so a signal or process posted
    /// from outside ends the wait (-1: none).
    var hostInboxDescriptor: Int32 = -1

    func pollHost(timeoutNanoseconds: UInt64?) {
        var entries: [pollfd] = []
        var owners: [Task] = []
        if hostInboxDescriptor >= 0 { entries.append(pollfd(fd: hostInboxDescriptor, events: Int16(POLLIN), revents: 0)) }
        for task in blocked.values {
            for entry in task.wait?.hostDescriptors ?? [] {
                entries.append(entry)
                owners.append(task)
            }
        }
        // Milliseconds, rounded up so a deadline is never missed by sleeping too little.
        let milliseconds = timeoutNanoseconds.map { Int32(clamping: ($0 + 999_999) / 1_000_000) } ?? -1
        let result = entries.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t($0.count), milliseconds) }
        guard result > 0 else { return }
        let taskEntries = hostInboxDescriptor >= 0 ? entries.dropFirst() : entries[...]
        for (entry, task) in zip(taskEntries, owners) where entry.revents != 0 { wake(task) }
    }
}

/// What the monitor thread tells the ticker thread, and back.
final class SchedulerSignals: Sendable {
    /// Another task is runnable: the running one should yield at its slice's end.
    let othersRunnable = Atomic<Bool>(false)
    /// A blocked task waits on a host fd, which only a poll notices.
    let hostWaiters = Atomic<Bool>(false)
    /// The earliest deadline of a blocked task or timer (host-monotonic ns), UInt64.max if none.
    let nextDeadline = Atomic<UInt64>(.max)
    /// The monitor is running guest code (a kick then ends a slice).
    let inGuest = Atomic<Bool>(false)
    /// Set by the ticker when it kicks: the slice is over.
    let preemptRequested = Atomic<Bool>(false)
    /// Bumped at each slice start, so a slice gets at least one full tick.
    let sliceNumber = Atomic<UInt64>(0)
}

/// Ends time slices: every `period` it kicks the vCPU out of the guest if the slice has run for a
/// whole period and something else is due (another runnable task, a deadline, a host fd).
final class PreemptionTicker {
    static let period: UInt64 = 5_000_000  // 5 ms, near Linux's default minimum granularity
    private let timer: DispatchSourceTimer

    init(signals: SchedulerSignals, exitRequester: ExitRequester) {
        let queue = DispatchQueue(label: "catalyzer-preemption")
        timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + .nanoseconds(Int(Self.period)), repeating: .nanoseconds(Int(Self.period)),
                       leeway: .microseconds(500))
        nonisolated(unsafe) var lastSlice: UInt64 = .max  // only touched on `queue`
        timer.setEventHandler {
            let slice = signals.sliceNumber.load(ordering: .relaxed)
            defer { lastSlice = slice }
            guard signals.inGuest.load(ordering: .relaxed), slice == lastSlice else { return }
            let due = signals.othersRunnable.load(ordering: .relaxed) || signals.hostWaiters.load(ordering: .relaxed)
                || Sandbox.monotonicNanoseconds() >= signals.nextDeadline.load(ordering: .relaxed)
            guard due else { return }
            signals.preemptRequested.store(true, ordering: .releasing)
            exitRequester.preempt()
        }
        timer.resume()
    }

    func stop() { timer.cancel() }
}
