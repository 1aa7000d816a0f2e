import Glibc

/// A timer on the host's monotonic clock that the scheduler fires: ITIMER_REAL, a POSIX timer,
/// a timerfd. Firing calls `expire`, once per expiry with the number of periods that passed.
final class KernelTimer {
    /// Host-monotonic nanoseconds of the next expiry; nil when disarmed.
    var deadline: UInt64?
    /// Re-arm period in nanoseconds; 0 for one-shot.
    var interval: UInt64 = 0
    /// The process whose death disarms it.
    let owner: ObjectIdentifier?
    let expire: (Sandbox, UInt64) -> Void

    init(owner: ThreadGroup?, expire: @escaping (Sandbox, UInt64) -> Void) {
        self.owner = owner.map(ObjectIdentifier.init)
        self.expire = expire
    }

    /// Nanoseconds until expiry (0 if disarmed), for *_gettime.
    func remaining(now: UInt64) -> UInt64 {
        guard let deadline else { return 0 }
        return deadline > now ? deadline - now : 1
    }
}

/// The sandbox's armed timers.
final class TimerList {
    private var timers: [ObjectIdentifier: KernelTimer] = [:]
    /// Told of new deadlines, so that the ticker ends a running slice when a timer is due.
    private let signals: SchedulerSignals

    init(signals: SchedulerSignals) { self.signals = signals }

    func arm(_ timer: KernelTimer, deadline: UInt64?, interval: UInt64) {
        timer.deadline = deadline
        timer.interval = interval
        timers[ObjectIdentifier(timer)] = deadline == nil ? nil : timer
        if let deadline, deadline < signals.nextDeadline.load(ordering: .relaxed) {
            signals.nextDeadline.store(deadline, ordering: .relaxed)
        }
    }

    func disarm(_ timer: KernelTimer) { arm(timer, deadline: nil, interval: 0) }

    func removeAll(ownedBy group: ThreadGroup) {
        let owner = ObjectIdentifier(group)
        timers = timers.filter { $0.value.owner != owner }
    }

    var nextDeadline: UInt64? { timers.values.compactMap(\.deadline).min() }

    /// Fires every timer that is due, re-arming periodic ones.
    func fire(now: UInt64, sandbox: Sandbox) {
        guard !timers.isEmpty else { return }
        for timer in timers.values {
            guard let deadline = timer.deadline, deadline <= now else { continue }
            var expirations: UInt64 = 1
            if timer.interval > 0 {
                expirations += (now - deadline) / timer.interval
                timer.deadline = deadline &+ expirations &* timer.interval
            } else {
                timer.deadline = nil
                timers[ObjectIdentifier(timer)] = nil
            }
            timer.expire(sandbox, expirations)
        }
    }
}

/// A POSIX timer (timer_create): its clock, how it notifies, and its timer.
final class PosixTimer {
    let id: Int32
    let clock: clockid_t
    /// SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD_ID.
    let notify: Int32
    let signal: Int32
    let value: UInt64
    let threadID: Int32
    var timer: KernelTimer!
    var overrun: UInt64 = 0

    init(id: Int32, clock: clockid_t, notify: Int32, signal: Int32, value: UInt64, threadID: Int32) {
        self.id = id
        self.clock = clock
        self.notify = notify
        self.signal = signal
        self.value = value
        self.threadID = threadID
    }
}

/// alarm, setitimer/getitimer and the POSIX timers. ITIMER_REAL and POSIX timers run on the host's
/// clocks; ITIMER_VIRTUAL and ITIMER_PROF count the process's CPU time (see `CPUTime`).
extension Task {
    private static let timerSignalNone: Int32 = 1, timerSignalSignal: Int32 = 0, timerSignalThreadID: Int32 = 4

    /// The process's ITIMER_REAL: SIGALRM to the process at each expiry.
    private var realTimer: KernelTimer {
        if let timer = group.realTimerObject { return timer }
        let timer = KernelTimer(owner: group) { [weak group] sandbox, _ in
            guard let group else { return }
            var info = SignalInformation(signal: SIGALRM)
            info.code = SignalInformation.kernelCode
            sandbox.send(info, toProcess: group)
        }
        group.realTimerObject = timer
        return timer
    }

    func sysAlarm(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let now = Sandbox.monotonicNanoseconds()
        let timer = realTimer
        let remaining = timer.remaining(now: now)
        let seconds = UInt64(a.uint32(0))
        sandbox.timers.arm(timer, deadline: seconds == 0 ? nil : now + seconds * 1_000_000_000, interval: 0)
        return (remaining + 999_999_999) / 1_000_000_000
    }

    private static let realTimerWhich: Int32 = 0, virtualTimerWhich: Int32 = 1, profilingTimerWhich: Int32 = 2

    func sysSetitimer(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let which = a.int32(0)
        guard (Self.realTimerWhich...Self.profilingTimerWhich).contains(which) else { throw Errno.EINVAL }
        var interval = timeval(), value = timeval()
        if a[1] != 0 {
            interval = try space.loadStruct(timeval.self, at: a[1], zero: timeval())
            value = try space.loadStruct(timeval.self, at: a[1] + 16, zero: timeval())
            guard interval.tv_sec >= 0, (0..<1_000_000).contains(interval.tv_usec),
                  value.tv_sec >= 0, (0..<1_000_000).contains(value.tv_usec) else { throw Errno.EINVAL }
        }
        if a[2] != 0 { try storeIntervalTimer(which, at: a[2]) }
        switch which {
        case Self.realTimerWhich:
            let first = value.nanoseconds
            sandbox.timers.arm(realTimer, deadline: first == 0 ? nil : Sandbox.monotonicNanoseconds() &+ first,
                               interval: interval.nanoseconds)
        case Self.virtualTimerWhich:
            group.virtualTimer = IntervalTimer(value: value.nanoseconds, interval: interval.nanoseconds)
        default:
            group.profilingTimer = IntervalTimer(value: value.nanoseconds, interval: interval.nanoseconds)
        }
        sandbox.publishNextDueTime(running: self)  // so the ticker ends the slice when it is due
        return 0
    }

    func sysGetitimer(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let which = a.int32(0)
        guard (Self.realTimerWhich...Self.profilingTimerWhich).contains(which) else { throw Errno.EINVAL }
        try storeIntervalTimer(which, at: a[1])
        return 0
    }

    /// `struct itimerval` (interval, then value) of the timer `which`.
    private func storeIntervalTimer(_ which: Int32, at address: UInt64) throws(Errno) {
        let interval: UInt64, remaining: UInt64
        switch which {
        case Self.realTimerWhich:
            let timer = realTimer
            (interval, remaining) = (timer.interval, timer.remaining(now: Sandbox.monotonicNanoseconds()))
        case Self.virtualTimerWhich:
            (interval, remaining) = (group.virtualTimer.interval, group.virtualTimer.value)
        default:
            (interval, remaining) = (group.profilingTimer.interval, group.profilingTimer.value)
        }
        // Rounded up to a microsecond, so an armed timer never reads as disarmed.
        try space.storeStruct((timeval(nanoseconds: interval), timeval(nanoseconds: (remaining + 999) / 1000 * 1000)), at: address)
    }

    func sysTimerCreate(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let clock = clockid_t(a.int32(0))
        guard [CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME].contains(clock) else { throw Errno.EINVAL }
        let id = group.nextTimerID
        var notify = Self.timerSignalSignal, signal = SIGALRM, value = UInt64(id), threadID: Int32 = 0
        if a[1] != 0 {
            value = try space.load(UInt64.self, at: a[1])
            signal = try space.load(Int32.self, at: a[1] + 8)
            notify = try space.load(Int32.self, at: a[1] + 12)
            threadID = try space.load(Int32.self, at: a[1] + 16)
            switch notify {
            case Self.timerSignalNone: break
            case Self.timerSignalSignal: guard (1...64).contains(signal) else { throw Errno.EINVAL }
            case Self.timerSignalThreadID:
                guard (1...64).contains(signal), sandbox.tasks[threadID]?.group === group else { throw Errno.EINVAL }
            default: throw Errno.EINVAL  // SIGEV_THREAD is the C library's, built on SIGEV_THREAD_ID
            }
        }
        guard group.posixTimers.count < 1024 else { throw Errno.EAGAIN }
        let posix = PosixTimer(id: id, clock: clock, notify: notify, signal: signal, value: value, threadID: threadID)
        posix.timer = KernelTimer(owner: group) { [unowned posix, weak group] sandbox, expirations in
            guard let target = group else { return }
            posix.overrun = expirations - 1
            guard posix.notify != Task.timerSignalNone else { return }
            var info = SignalInformation(signal: posix.signal)
            info.code = SignalInformation.timerCode
            info.timerID = posix.id
            info.value = posix.value
            if posix.notify == Task.timerSignalThreadID, let task = sandbox.tasks[posix.threadID], task.group === target {
                sandbox.send(info, toTask: task)
            } else {
                sandbox.send(info, toProcess: target)
            }
        }
        try space.store(id, at: a[2])
        group.posixTimers[id] = posix
        group.nextTimerID += 1
        return 0
    }

    func sysTimerSettime(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard let posix = group.posixTimers[a.int32(0)] else { throw Errno.EINVAL }
        let interval = try space.loadStruct(timespec.self, at: a[2], zero: timespec())
        let value = try space.loadStruct(timespec.self, at: a[2] + 16, zero: timespec())
        guard interval.tv_sec >= 0, (0..<1_000_000_000).contains(interval.tv_nsec),
              value.tv_sec >= 0, (0..<1_000_000_000).contains(value.tv_nsec) else { throw Errno.EINVAL }
        if a[3] != 0 { try storeTimer(posix.timer, at: a[3]) }
        let now = Sandbox.monotonicNanoseconds()
        var deadline: UInt64?
        if value.nanoseconds != 0 {
            deadline = a.int32(1) & TIMER_ABSTIME != 0
                ? hostMonotonic(absolute: value, clock: posix.clock)
                : now &+ value.nanoseconds
        }
        sandbox.timers.arm(posix.timer, deadline: deadline, interval: interval.nanoseconds)
        return 0
    }

    func sysTimerGettime(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard let posix = group.posixTimers[a.int32(0)] else { throw Errno.EINVAL }
        try storeTimer(posix.timer, at: a[1])
        return 0
    }

    func sysTimerGetoverrun(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard let posix = group.posixTimers[a.int32(0)] else { throw Errno.EINVAL }
        return min(posix.overrun, UInt64(Int32.max))
    }

    func sysTimerDelete(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard let posix = group.posixTimers.removeValue(forKey: a.int32(0)) else { throw Errno.EINVAL }
        sandbox.timers.disarm(posix.timer)
        return 0
    }

    private func storeTimer(_ timer: KernelTimer, at address: UInt64) throws(Errno) {
        let remaining = timer.remaining(now: Sandbox.monotonicNanoseconds())
        try space.storeStruct((timespec(nanoseconds: timer.interval), timespec(nanoseconds: remaining)), at: address)
    }

    /// An absolute time on a guest clock as host-monotonic nanoseconds.
    func hostMonotonic(absolute: timespec, clock: clockid_t) -> UInt64 {
        let guestNow = time.now(clock).nanoseconds
        let target = absolute.nanoseconds
        let hostNow = Sandbox.monotonicNanoseconds()
        return target > guestNow ? hostNow &+ (target - guestNow) : hostNow
    }
}

extension timeval {
    var nanoseconds: UInt64 {
        let (product, overflow) = UInt64(max(0, tv_sec)).multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : product &+ UInt64(max(0, tv_usec)) * 1000
    }

    init(nanoseconds: UInt64) {
        self.init(tv_sec: Int(nanoseconds / 1_000_000_000), tv_usec: Int(nanoseconds % 1_000_000_000 / 1000))
    }
}
