import CatalyzerKVM
import Glibc
import Synchronization

/// What other threads send a running sandbox: signals for its first process (an OCI runtime's
/// `kill`, a SIGTERM to the monitor forwarded), delivered as `kill` from a process outside the
/// sandbox would (SI_USER, sender pid 0); and processes to start beside it (an OCI runtime's
/// `exec`). Posted from any thread, taken by the sandbox's run loop.
///
/// Posting records the item, writes a byte to the inbox's pipe (the run loop polls it when every
/// task waits, so a post never sleeps through) and kicks the vCPU out of the guest.
public final class HostInbox: Sendable {
    /// Signals posted and not yet delivered, one bit per signal (bit n-1 for signal n).
    private let pending = Atomic<UInt64>(0)
    /// Processes to start, in the order posted.
    private let launches = Mutex<[ProcessLaunch]>([])
    /// Work to run on the sandbox's thread while no task runs (a checkpoint), in the order posted.
    private let pausedWork = Mutex<[@Sendable (Sandbox) -> Void]>([])
    /// Whether `launches` or `pausedWork` may be non-empty (read without the lock by the run loop).
    private let hasQueued = Atomic<Bool>(false)
    /// Set once someone may post processes (an OCI runtime's exec channel listens).
    private let expectsLaunches = Atomic<Bool>(false)
    /// The pipe's read end, readable while signals are pending (drained by `take()`), and its write end.
    let wakeDescriptor: Int32
    private let wakeWriter: Int32
    private let exitRequester: ExitRequester

    /// Without a pipe from the host (fds exhausted), posts only kick; the descriptors are then -1.
    init(exitRequester: ExitRequester) {
        var ends: [Int32] = [-1, -1]
        if pipe(&ends) == 0 {
            for end in ends {
                _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
                _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            }
        } else {
            ends = [-1, -1]
        }
        wakeDescriptor = ends[0]
        wakeWriter = ends[1]
        self.exitRequester = exitRequester
    }

    deinit {
        if wakeDescriptor >= 0 { close(wakeDescriptor) }
        if wakeWriter >= 0 { close(wakeWriter) }
    }

    /// Queues `signal` (1...64) for the sandbox's first process.
    public func post(_ signal: Int32) {
        guard (1...64).contains(signal) else { return }
        pending.bitwiseOr(UInt64(1) << UInt64(signal - 1), ordering: .releasing)
        wake()
    }

    /// Queues a process to start in the sandbox; `launch.started` says how that went.
    public func post(_ launch: ProcessLaunch) {
        launches.withLock { $0.append(launch) }
        hasQueued.store(true, ordering: .releasing)
        wake()
    }

    /// Queues `work` to run on the sandbox's thread between two slices of its tasks, every vCPU
    /// out of the guest: what it reads of the sandbox (`Sandbox.captureRunningSnapshot()`, its
    /// guest memory) is consistent. It may end the sandbox (`Sandbox.end(_:)`).
    public func post(pausedWork work: @escaping @Sendable (Sandbox) -> Void) {
        pausedWork.withLock { $0.append(work) }
        hasQueued.store(true, ordering: .releasing)
        wake()
    }

    /// Says processes may be posted from now on: a sandbox whose tasks all wait, on anything, is
    /// then not deadlocked, since a process started from outside may be what they wait for (a
    /// client of a server blocked in accept, the other end of a FIFO).
    public func expectLaunches() {
        expectsLaunches.store(true, ordering: .releasing)
    }

    var launchesExpected: Bool { expectsLaunches.load(ordering: .acquiring) }

    private func wake() {
        var byte: UInt8 = 1
        if wakeWriter >= 0 { _ = write(wakeWriter, &byte, 1) }  // a full pipe is already readable
        exitRequester.preempt()
    }

    /// The signals posted since the last call, lowest first, the processes to start, and the
    /// paused work.
    func take() -> (signals: [Int32], launches: [ProcessLaunch], work: [@Sendable (Sandbox) -> Void]) {
        var drained = [UInt8](repeating: 0, count: 256)
        if wakeDescriptor >= 0 { while read(wakeDescriptor, &drained, drained.count) > 0 {} }
        let bits = pending.exchange(0, ordering: .acquiring)
        hasQueued.store(false, ordering: .relaxed)
        let started = launches.withLock { queued in
            defer { queued.removeAll() }
            return queued
        }
        let work = pausedWork.withLock { queued in
            defer { queued.removeAll() }
            return queued
        }
        return ((1...64).filter { bits & (UInt64(1) << UInt64($0 - 1)) != 0 }.map { Int32($0) }, started, work)
    }

    var hasPending: Bool { pending.load(ordering: .relaxed) != 0 || hasQueued.load(ordering: .acquiring) }
}

/// A process started from outside a running sandbox, beside its first process (as `runc exec`
/// starts one in a container): it shares the sandbox's filesystem, memory budget and task limit,
/// has no parent inside it (ppid 0), and its end does not end the sandbox.
public struct ProcessLaunch: Sendable {
    /// The guest path of the program.
    public var programPath: String
    public var arguments: [String]
    public var environment: [String]
    public var workingDirectory: String
    public var user = SandboxUser()
    /// Host fds for its stdin, stdout and stderr. The sandbox owns them from the post on: they
    /// are closed when the process no longer uses them, or at once if it cannot start.
    public var standardStreams: [Int32]
    /// Called on the sandbox's thread with the new process's pid, or why it could not start
    /// (`ProcessLaunchError`, or the loader's error for the program).
    public var started: @Sendable (Result<Int32, any Error>) -> Void
    /// Called on the sandbox's thread with the process's wait status when it ends. A sandbox that
    /// ends first never calls it: the caller sees the sandbox end instead.
    public var exited: @Sendable (Int32) -> Void

    public init(programPath: String, arguments: [String], environment: [String], workingDirectory: String, standardStreams: [Int32],
                started: @escaping @Sendable (Result<Int32, any Error>) -> Void, exited: @escaping @Sendable (Int32) -> Void) {
        self.programPath = programPath
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.standardStreams = standardStreams
        self.started = started
        self.exited = exited
    }
}

/// Why the sandbox did not start a posted process, beside the loader's own errors.
public enum ProcessLaunchError: Error, CustomStringConvertible {
    /// The sandbox already has as many threads and processes as it may.
    case taskLimit(Int)

    public var description: String {
        switch self {
        case .taskLimit(let limit): "the sandbox already has its limit of \(limit) threads and processes"
        }
    }
}
