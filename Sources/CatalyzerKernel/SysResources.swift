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
        if a.int32(0) != children {
            // The vCPU runs on this host thread, so its CPU time is the guest's plus the monitor's.
            var time = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
            usage.ru_utime = timeval(tv_sec: time.tv_sec, tv_usec: time.tv_nsec / 1000)
            usage.ru_maxrss = space.allocator.usedBytes / 1024
        }
        try space.storeStruct(usage, at: a[1])
        return 0
    }
}
