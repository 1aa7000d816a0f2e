import Glibc

/// sysinfo(2) and getrusage(2): what the sandbox has and what the process used. Memory figures
/// are the guest's RAM (its cap), not the host's, so runtimes size their caches to the sandbox.
extension Task {
    func sysSysinfo(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let uptime = time.now(CLOCK_BOOTTIME)
        // struct sysinfo (x86-64): uptime, loads[3], totalram, freeram, ..., procs at 80, mem_unit at 104.
        var info = [UInt8](repeating: 0, count: 112)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { info.replaceSubrange(offset..<offset + $0.count, with: $0) }
        }
        put(Int64(uptime.tv_sec), 0)
        put(UInt64(memorySize), 32)
        put(UInt64(max(0, memorySize - space.allocator.usedBytes)), 40)
        put(UInt16(1), 80)  // procs: processes run one at a time
        put(UInt32(1), 104)
        try space.write(info, to: a[0])
        return 0
    }

    func sysGetrusage(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let current: Int32 = 0, children: Int32 = -1, thread: Int32 = 1
        guard [current, children, thread].contains(a.int32(0)) else { throw Errno.EINVAL }
        var usage = rusage()
        let time = switch a.int32(0) {
        case children: group.reapedChildrenCPUTime
        case thread: cpuTime
        default: group.cpuTime
        }
        usage.ru_utime = timeval(nanoseconds: time.userNanoseconds)
        usage.ru_stime = timeval(nanoseconds: time.systemNanoseconds)
        if a.int32(0) != children { usage.ru_maxrss = space.allocator.usedBytes / 1024 }
        try space.storeStruct(usage, at: a[1])
        return 0
    }

    /// times(2): CPU times in clock ticks (USER_HZ, 100 a second) and the ticks since boot.
    func sysTimes(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let nanosecondsPerTick: UInt64 = 10_000_000
        if a[0] != 0 {
            let own = group.cpuTime, children = group.reapedChildrenCPUTime
            try space.storeStruct((Int64(own.userNanoseconds / nanosecondsPerTick), Int64(own.systemNanoseconds / nanosecondsPerTick),
                                   Int64(children.userNanoseconds / nanosecondsPerTick),
                                   Int64(children.systemNanoseconds / nanosecondsPerTick)), at: a[0])
        }
        return time.now(CLOCK_BOOTTIME).nanoseconds / nanosecondsPerTick
    }
}
