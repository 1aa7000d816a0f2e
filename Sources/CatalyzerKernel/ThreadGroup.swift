import Glibc

/// A process: the threads that share a PID (CLONE_THREAD), its parent, its credentials, the signals
/// sent to the process as a whole, its `ITIMER_REAL`, and its exit status once every thread is gone
/// (a zombie until its parent waits for it).
final class ThreadGroup {
    let pid: Int32
    /// The parent's PID; 0 for the sandbox's first process and processes started from outside
    /// (`ProcessLaunch`). Orphans are adopted by pid 1.
    var parentPID: Int32
    /// Who started the process from outside the sandbox, told its wait status when it ends.
    var exitObserver: (@Sendable (Int32) -> Void)?
    var credentials: Credentials
    /// The nice value (getpriority/setpriority); the monitor's scheduler does not weigh it.
    var niceValue: Int32 = 0
    /// Live threads, leader first.
    var tasks: [Task] = []
    /// Signals sent to the process (kill), delivered to any thread that does not block them.
    var pendingSignals = PendingSignals()
    /// Set when the process is dying (exit_group, a fatal signal, or its last thread exited).
    var exitStatus: SandboxExit?
    /// The wait status once the process is a zombie (every thread gone), until reaped.
    var zombieStatus: Int32?
    /// Tasks waiting in wait4/waitid for a child of this process to change state.
    let childEvents = WaitQueue()
    /// A parent blocked in vfork waits here until this child execs or exits.
    let vforkDone = WaitQueue()
    /// Woken when the process exits (pidfds poll for it).
    let exited = WaitQueue()
    var vforkPending = false
    /// The signal the parent gets when this process exits (clone's low byte; SIGCHLD for fork).
    var exitSignal: Int32 = SIGCHLD
    /// ITIMER_REAL / alarm(2), created on first use.
    var realTimerObject: KernelTimer?
    /// ITIMER_VIRTUAL (user time) and ITIMER_PROF (user and system time).
    var virtualTimer = IntervalTimer()
    var profilingTimer = IntervalTimer()
    /// CPU time of its threads, living and exited.
    var cpuTime = CPUTime()
    /// CPU time of the children it (or they) reaped: getrusage(RUSAGE_CHILDREN), times(2).
    var reapedChildrenCPUTime = CPUTime()
    /// timer_create's timers by id.
    var posixTimers: [Int32: PosixTimer] = [:]
    var nextTimerID: Int32 = 0

    init(pid: Int32, parentPID: Int32, credentials: Credentials) {
        self.pid = pid
        self.parentPID = parentPID
        self.credentials = credentials
    }

    var leader: Task? { tasks.first { $0.tid == pid } ?? tasks.first }
    var isZombie: Bool { zombieStatus != nil }

    /// The wait status (as wait4 reports it) for an exit.
    static func waitStatus(_ exit: SandboxExit) -> Int32 {
        switch exit {
        case .exited(let code): (code & 0xFF) << 8
        case .killed(let signal, _): signal & 0x7F
        case .timedOut, .readyPoint: SIGKILL
        }
    }
}

/// Signals waiting for delivery: a bit per signal and the `siginfo` of each (standard signals are
/// not queued: a second one while one is pending is merged, as on Linux).
struct PendingSignals {
    private(set) var bits: UInt64 = 0
    private var information: [Int32: SignalInformation] = [:]

    var isEmpty: Bool { bits == 0 }

    mutating func add(_ info: SignalInformation) {
        let bit = UInt64(1) << UInt64(info.signal - 1)
        if bits & bit == 0 { information[info.signal] = info }
        bits |= bit
    }

    func contains(_ signal: Int32) -> Bool { bits & (UInt64(1) << UInt64(signal - 1)) != 0 }

    /// Removes and returns the lowest-numbered pending signal not in `mask`.
    mutating func take(notIn mask: UInt64) -> SignalInformation? {
        let deliverable = bits & ~mask
        guard deliverable != 0 else { return nil }
        let signal = Int32(deliverable.trailingZeroBitCount + 1)
        return take(signal)
    }

    mutating func take(_ signal: Int32) -> SignalInformation? {
        guard contains(signal) else { return nil }
        bits &= ~(UInt64(1) << UInt64(signal - 1))
        return information.removeValue(forKey: signal) ?? SignalInformation(signal: signal)
    }

    mutating func remove(_ signal: Int32) { _ = take(signal) }
}

/// The fields of `siginfo_t` the monitor fills in.
struct SignalInformation: Equatable {
    var signal: Int32
    var code: Int32 = 0  // SI_USER
    var senderPID: Int32 = 0
    var senderUID: UInt32 = 0
    /// SIGCHLD: the child's status; SIGSEGV/SIGBUS: unused here.
    var status: Int32 = 0
    /// SIGSEGV/SIGBUS/SIGFPE/SIGILL: the faulting address.
    var address: UInt64 = 0
    /// Timer signals: the timer id and overrun.
    var timerID: Int32 = 0
    var value: UInt64 = 0

    static let kernelCode: Int32 = 0x80, timerCode: Int32 = -2, tkillCode: Int32 = -6, queueCode: Int32 = -1
    static let childExited: Int32 = 1, childKilled: Int32 = 2
}
