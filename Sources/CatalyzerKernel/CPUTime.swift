/// CPU time as the monitor accounts it. The guest runs on the monitor's thread, so time on the
/// vCPU (`image.cpu.run`) is the task's user time and time serving its syscall or fault is its
/// system time; both are measured on the monotonic clock around each VM exit. They feed
/// getrusage, times, the CPU-time clocks and ITIMER_VIRTUAL / ITIMER_PROF.
struct CPUTime {
    var userNanoseconds: UInt64 = 0
    var systemNanoseconds: UInt64 = 0

    var totalNanoseconds: UInt64 { userNanoseconds &+ systemNanoseconds }

    static func += (left: inout CPUTime, right: CPUTime) {
        left.userNanoseconds &+= right.userNanoseconds
        left.systemNanoseconds &+= right.systemNanoseconds
    }
}

/// ITIMER_VIRTUAL or ITIMER_PROF: counts down CPU time of the process and signals it at zero.
struct IntervalTimer {
    /// CPU nanoseconds left until it fires; 0 when disarmed.
    var value: UInt64 = 0
    /// What it is reloaded with after firing; 0 for one-shot.
    var interval: UInt64 = 0

    var isArmed: Bool { value > 0 }

    /// Counts down `nanoseconds`; true when the timer fired (it then reloads or disarms).
    mutating func consume(_ nanoseconds: UInt64) -> Bool {
        guard isArmed else { return false }
        if nanoseconds < value {
            value -= nanoseconds
            return false
        }
        let overshoot = nanoseconds - value
        value = interval == 0 ? 0 : interval - overshoot % interval
        return true
    }
}
