import Glibc

/// poll(2), ppoll(2), select(2) and pselect6(2) (select is poll over the fds its sets name). Host
/// fds (stdio, rootfs files) are polled on the host; /tmp files are always ready, as regular files
/// are on Linux; pipes and the monitor's own files report their state. A poll that finds nothing
/// ready parks the task on every object it watches (and the host fds) until one changes, a signal
/// arrives or the timeout passes.
extension Task {
    func sysPoll(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let timeout = a.int32(2)
        return try poll(a[0], count: a[1], timeoutMilliseconds: timeout < 0 ? -1 : timeout)
    }

    func sysPpoll(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try applyTemporaryMask(at: a[3], size: a[4])
        return try poll(a[0], count: a[1], timeoutMilliseconds: timeoutMilliseconds(at: a[2], fractionsPerSecond: 1_000_000_000))
    }

    /// ppoll/pselect6/epoll_pwait's signal mask: in force while the call waits, restored on the
    /// way back to user mode after the handler of the signal that ended it (see SignalDelivery).
    func applyTemporaryMask(at address: UInt64, size: UInt64) throws(Errno) {
        guard address != 0 else { return }
        guard size == 8 else { throw Errno.EINVAL }
        let mask = try space.load(UInt64.self, at: address) & ~unblockableSignals
        if savedSignalMask == nil { savedSignalMask = signalMask }
        signalMask = mask
    }

    /// A `struct timespec` (`fractionsPerSecond` 10⁹) or `struct timeval` (10⁶) timeout at
    /// `address` in whole milliseconds, rounded up as Linux does so a wait is never cut short;
    /// -1 (wait forever) for NULL. Both structs are two 64-bit fields on x86-64.
    private func timeoutMilliseconds(at address: UInt64, fractionsPerSecond: Int64) throws(Errno) -> Int32 {
        guard address != 0 else { return -1 }
        let seconds = try space.load(Int64.self, at: address), fraction = try space.load(Int64.self, at: address + 8)
        guard seconds >= 0, (0..<fractionsPerSecond).contains(fraction) else { throw Errno.EINVAL }
        let fractionsPerMillisecond = fractionsPerSecond / 1000
        return Int32(clamping: seconds.multipliedReportingOverflow(by: 1000).overflow ? Int64.max
                     : seconds * 1000 + (fraction + fractionsPerMillisecond - 1) / fractionsPerMillisecond)
    }

    private func poll(_ address: UInt64, count: UInt64, timeoutMilliseconds: Int32) throws(Errno) -> UInt64 {
        guard count <= UInt64(FileTable.limit) else { throw Errno.EINVAL }
        var entries = [pollfd](repeating: pollfd(), count: Int(count))
        let bytes = try space.read(address, count: Int(count) * MemoryLayout<pollfd>.stride)
        entries.withUnsafeMutableBytes { $0.copyBytes(from: bytes) }
        let ready = try poll(&entries, timeoutMilliseconds: timeoutMilliseconds)
        try space.write(entries.withUnsafeBytes { Array($0) }, to: address)
        return UInt64(ready)
    }

    func sysSelect(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try select(count: a[0], sets: [a[1], a[2], a[3]], timeoutMilliseconds: timeoutMilliseconds(at: a[4], fractionsPerSecond: 1_000_000))
    }

    /// pselect6's sixth argument points at {const sigset_t *mask; size_t size}.
    func sysPselect6(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        if a[5] != 0 {
            let mask = try space.load(UInt64.self, at: a[5]), size = try space.load(UInt64.self, at: a[5] + 8)
            try applyTemporaryMask(at: mask, size: size)
        }
        return try select(count: a[0], sets: [a[1], a[2], a[3]], timeoutMilliseconds: timeoutMilliseconds(at: a[4], fractionsPerSecond: 1_000_000_000))
    }

    /// select over the read, write and exception `fd_set`s (bitmaps of `count` bits, NULL for none):
    /// polls the fds they name and rewrites them to the ready ones; returns the number of set bits.
    private func select(count: UInt64, sets: [UInt64], timeoutMilliseconds: Int32) throws(Errno) -> UInt64 {
        guard count <= UInt64(FileTable.limit) else { throw Errno.EINVAL }
        let bytes = (Int(count) + 63) / 64 * 8
        let bitmaps = try sets.map { (address) throws(Errno) -> [UInt8]? in
            address == 0 || bytes == 0 ? nil : try space.read(address, count: bytes)
        }
        let interest: [Int16] = [Int16(POLLIN), Int16(POLLOUT), Int16(POLLPRI)]
        let readiness: [Int16] = [Int16(POLLIN | POLLHUP | POLLERR), Int16(POLLOUT | POLLERR), Int16(POLLPRI)]
        var entries: [pollfd] = []
        for fd in 0..<Int32(count) {
            var events: Int16 = 0
            for (set, bitmap) in bitmaps.enumerated() where bitmap.map({ $0[Int(fd) / 8] & (1 << (fd % 8)) != 0 }) == true {
                events |= interest[set]
            }
            if events != 0 { entries.append(pollfd(fd: fd, events: events, revents: 0)) }
        }
        _ = try poll(&entries, timeoutMilliseconds: timeoutMilliseconds)
        if entries.contains(where: { $0.revents & Int16(POLLNVAL) != 0 }) { throw Errno.EBADF }
        var ready: UInt64 = 0
        for (set, bitmap) in bitmaps.enumerated() {
            guard var bitmap else { continue }
            bitmap = [UInt8](repeating: 0, count: bitmap.count)
            for entry in entries where entry.events & interest[set] != 0 && entry.revents & readiness[set] != 0 {
                bitmap[Int(entry.fd) / 8] |= 1 << (entry.fd % 8)
                ready += 1
            }
            try space.write(bitmap, to: sets[set])
        }
        return ready
    }

    /// Polls `entries` in place: each entry's `revents`; returns how many have any. Waits (parks
    /// the task) when none is ready and the timeout allows.
    private func poll(_ entries: inout [pollfd], timeoutMilliseconds: Int32) throws(Errno) -> Int {
        var wait = Wait(reason: "poll")
        var hostEntries: [pollfd] = []
        var hostIndices: [Int] = []
        var ready = 0
        for index in entries.indices {
            entries[index].revents = 0
            guard entries[index].fd >= 0 else { continue }
            guard let file = try? files.file(entries[index].fd) else {
                entries[index].revents = Int16(POLLNVAL)
                ready += 1
                continue
            }
            let events = entries[index].events | Int16(POLLHUP | POLLERR)
            if case .host(let fd, _) = file.backing {
                hostEntries.append(pollfd(fd: fd, events: entries[index].events, revents: 0))
                hostIndices.append(index)
                continue
            }
            entries[index].revents = FileReadiness.current(file) & events
            if entries[index].revents != 0 { ready += 1 }
            FileReadiness.addWaitTargets(of: file, events: entries[index].events, to: &wait)
        }
        if !hostEntries.isEmpty {
            let result = hostEntries.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t($0.count), 0) }
            guard result >= 0 else { throw Errno.lastHostError }
            for (hostEntry, index) in zip(hostEntries, hostIndices) where hostEntry.revents != 0 {
                entries[index].revents = hostEntry.revents
                ready += 1
            }
        }
        if ready > 0 || timeoutMilliseconds == 0 || hasTimedOut { return ready }
        if timeoutMilliseconds > 0 {
            let deadline = self.deadline(afterNanoseconds: UInt64(timeoutMilliseconds) * 1_000_000)
            wait.deadline = min(wait.deadline ?? .max, deadline)
        }
        wait.hostDescriptors += hostEntries
        try block(wait)
    }
}
