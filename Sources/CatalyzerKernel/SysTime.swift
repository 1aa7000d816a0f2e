import Glibc

/// Clock syscalls, served from the host's clocks (so they stay fresh across restore and sfork).
extension Task {
    /// CLOCK_REALTIME, MONOTONIC, PROCESS/THREAD_CPUTIME, MONOTONIC_RAW, *_COARSE, BOOTTIME.
    private static let clocks: Set<Int32> = [0, 1, 2, 3, 4, 5, 6, 7]

    /// The CPU time a clock id names: CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID, or a
    /// negative id made by clock_getcpuclockid/pthread_getcpuclockid (`~pid << 3` or `~tid << 3`,
    /// bit 2 for a thread, low bits 0 profiling, 1 virtual (user), 2 scheduler time). Nil for a
    /// wall clock.
    private func cpuClockTime(_ clock: Int32) throws(Errno) -> UInt64? {
        switch clockid_t(clock) {
        case CLOCK_PROCESS_CPUTIME_ID: return group.cpuTime.totalNanoseconds
        case CLOCK_THREAD_CPUTIME_ID: return cpuTime.totalNanoseconds
        default: break
        }
        guard clock < 0 else { return nil }
        let id = ~(clock >> 3), perThread = clock & 4 != 0, kind = clock & 3
        guard kind != 3 else { throw Errno.EINVAL }
        let time: CPUTime
        if perThread {
            guard let task = id == 0 ? self : sandbox.tasks[id] else { throw Errno.EINVAL }
            time = task.cpuTime
        } else {
            guard let process = id == 0 ? group : sandbox.groups[id], !process.isZombie else { throw Errno.EINVAL }
            time = process.cpuTime
        }
        return kind == 1 ? time.userNanoseconds : time.totalNanoseconds
    }

    func sysClockGettime(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let clock = a.int32(0)
        if let nanoseconds = try cpuClockTime(clock) {
            try space.storeStruct(timespec(nanoseconds: nanoseconds), at: a[1])
            return 0
        }
        guard Self.clocks.contains(clock) else { throw Errno.EINVAL }
        try space.storeStruct(time.now(clockid_t(clock)), at: a[1])
        return 0
    }

    func sysClockGetres(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let clock = a.int32(0)
        guard try cpuClockTime(clock) != nil || Self.clocks.contains(clock) else { throw Errno.EINVAL }
        if a[1] != 0 {
            var resolution = timespec()
            clock_getres(clock < 0 ? CLOCK_PROCESS_CPUTIME_ID : clockid_t(clock), &resolution)
            try space.storeStruct(resolution, at: a[1])
        }
        return 0
    }

    /// clock_settime: the sandbox shares the host's clock and may not set it (EPERM, as for a
    /// process without CAP_SYS_TIME); clocks that cannot be set at all are EINVAL, as on Linux.
    func sysClockSettime(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a.int32(0) == Int32(CLOCK_REALTIME) else { throw Errno.EINVAL }
        _ = try space.loadStruct(timespec.self, at: a[1], zero: timespec())
        throw Errno.EPERM
    }

    /// settimeofday: as clock_settime; a call that sets nothing (both pointers NULL) succeeds.
    func sysSettimeofday(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[0] != 0 || a[1] != 0 else { return 0 }
        throw Errno.EPERM
    }

    func sysGettimeofday(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        if a[0] != 0 {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            try space.storeStruct(timeval(tv_sec: now.tv_sec, tv_usec: now.tv_nsec / 1000), at: a[0])
        }
        if a[1] != 0 { try space.write([UInt8](repeating: 0, count: 8), to: a[1]) }  // struct timezone: UTC
        return 0
    }

    func sysTime(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        if a[0] != 0 { try space.store(Int64(now.tv_sec), at: a[0]) }
        return UInt64(now.tv_sec)
    }

    func sysNanosleep(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try sleep(clock: CLOCK_MONOTONIC, flags: 0, request: a[0], remaining: a[1])
    }

    func sysClockNanosleep(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard Self.clocks.contains(a.int32(0)) else { throw Errno.EINVAL }
        return try sleep(clock: clockid_t(a.int32(0)), flags: a.int32(1), request: a[2], remaining: a[3])
    }

    /// Parks the task until the deadline; a handled signal ends the sleep early with EINTR and
    /// the time left (relative sleeps).
    private func sleep(clock: clockid_t, flags: Int32, request: UInt64, remaining: UInt64) throws(Errno) -> UInt64 {
        let requested = try space.loadStruct(timespec.self, at: request, zero: timespec())
        guard requested.tv_sec >= 0, (0..<1_000_000_000).contains(requested.tv_nsec) else { throw Errno.EINVAL }
        let deadline = flags & TIMER_ABSTIME != 0
            ? self.deadline(at: hostMonotonic(absolute: requested, clock: clock))
            : self.deadline(afterNanoseconds: requested.nanoseconds)
        let now = Sandbox.monotonicNanoseconds()
        if now >= deadline { return 0 }
        do throws(Errno) {
            try block(Wait(deadline: deadline, reason: "sleep"))
        } catch where error == Errno.EINTR {
            if remaining != 0 && flags & TIMER_ABSTIME == 0 {
                try space.storeStruct(timespec(nanoseconds: deadline - now), at: remaining)
            }
            throw error
        }
    }
}
