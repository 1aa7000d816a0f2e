import Glibc

/// The guest's view of the host's clocks. Realtime is the host's. The monotonic clocks are the
/// host's plus an offset: zero for a cold start; for a restore, whatever keeps them from going
/// back below what the program saw before its checkpoint. On the host and boot that made the
/// checkpoint the host's clock is already past it and the offset is zero; on another node, or
/// after a reboot, the host's monotonic clock may be behind the checkpoint's.
struct GuestTime {
    /// Nanoseconds added to the host's monotonic clocks.
    let monotonicOffset: UInt64

    static let host = GuestTime(monotonicOffset: 0)

    init(monotonicOffset: UInt64) {
        self.monotonicOffset = monotonicOffset
    }

    /// For a restore: monotonic time continues from `checkpointMonotonic`, the guest's monotonic
    /// clock when it was checkpointed, if the host's is behind it.
    init(continuingFrom checkpointMonotonic: UInt64) {
        let hostNow = Sandbox.monotonicNanoseconds()
        monotonicOffset = checkpointMonotonic > hostNow ? checkpointMonotonic - hostNow : 0
    }

    /// MONOTONIC, MONOTONIC_RAW, MONOTONIC_COARSE and BOOTTIME: the clocks that count from boot.
    static func countsFromBoot(_ clock: clockid_t) -> Bool { [1, 4, 6, 7].contains(clock) }

    /// `clock` as the guest reads it now.
    func now(_ clock: clockid_t) -> timespec {
        var time = timespec()
        clock_gettime(clock, &time)
        return Self.countsFromBoot(clock) ? Self.adding(monotonicOffset, to: time) : time
    }

    /// The guest's monotonic clock now, in nanoseconds.
    var monotonicNanoseconds: UInt64 { Sandbox.monotonicNanoseconds() + monotonicOffset }

    /// An absolute time on the guest's `clock` as the host's same clock reads it (sleep deadlines).
    func hostTime(_ guestTime: timespec, clock: clockid_t) -> timespec {
        guard Self.countsFromBoot(clock), monotonicOffset > 0 else { return guestTime }
        let nanoseconds = UInt64(max(0, guestTime.tv_sec)) &* 1_000_000_000 &+ UInt64(max(0, guestTime.tv_nsec))
        let host = nanoseconds > monotonicOffset ? nanoseconds - monotonicOffset : 0
        return timespec(tv_sec: Int(host / 1_000_000_000), tv_nsec: Int(host % 1_000_000_000))
    }

    private static func adding(_ offset: UInt64, to time: timespec) -> timespec {
        guard offset > 0 else { return time }
        let total = UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec) &+ offset
        return timespec(tv_sec: Int(total / 1_000_000_000), tv_nsec: Int(total % 1_000_000_000))
    }
}
