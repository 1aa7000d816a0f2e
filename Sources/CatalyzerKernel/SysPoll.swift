import Glibc

/// poll(2) and ppoll(2). Host-backed fds (stdio, rootfs files) are polled on the host; /tmp files are
/// always ready, as regular files are on Linux. A blocking poll is interrupted by the timeout's kick.
extension Kernel {
    func sysPoll(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let timeout = a.int32(2)
        return try poll(a[0], count: a[1], timeoutMilliseconds: timeout < 0 ? -1 : timeout)
    }

    func sysPpoll(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        var timeout: Int32 = -1
        if a[2] != 0 {
            let limit = try space.loadStruct(timespec.self, at: a[2], zero: timespec())
            guard limit.tv_sec >= 0, (0..<1_000_000_000).contains(limit.tv_nsec) else { throw Errno.EINVAL }
            timeout = Int32(clamping: limit.tv_sec * 1000 + limit.tv_nsec / 1_000_000)
        }
        return try poll(a[0], count: a[1], timeoutMilliseconds: timeout)
    }

    private func poll(_ address: UInt64, count: UInt64, timeoutMilliseconds: Int32) throws(Errno) -> UInt64 {
        guard count <= UInt64(FileTable.limit) else { throw Errno.EINVAL }
        var entries = [pollfd](repeating: pollfd(), count: Int(count))
        let bytes = try space.read(address, count: Int(count) * MemoryLayout<pollfd>.stride)
        entries.withUnsafeMutableBytes { $0.copyBytes(from: bytes) }
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
            switch file.backing {
            case .host(let fd, _):
                hostEntries.append(pollfd(fd: fd, events: entries[index].events, revents: 0))
                hostIndices.append(index)
            case .memory:
                entries[index].revents = entries[index].events & Int16(POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM)
                if entries[index].revents != 0 { ready += 1 }
            case .pipe(let pipe):
                // Never "would block": with children run one at a time, nobody could unblock it.
                entries[index].revents = file.isWritable
                    ? (pipe.hasReader ? entries[index].events & Int16(POLLOUT) : Int16(POLLERR))
                    : (pipe.hasWriter ? entries[index].events & Int16(POLLIN) : Int16(POLLHUP))
                if entries[index].revents == 0 { entries[index].revents = entries[index].events & Int16(POLLIN) }
                if entries[index].revents != 0 { ready += 1 }
            }
        }
        if !hostEntries.isEmpty {
            let wait = ready > 0 ? 0 : timeoutMilliseconds
            let result = hostEntries.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t($0.count), wait) }
            guard result >= 0 else { throw Errno.lastHostError }
            for (hostEntry, index) in zip(hostEntries, hostIndices) where hostEntry.revents != 0 {
                entries[index].revents = hostEntry.revents
                ready += 1
            }
        } else if ready == 0 && timeoutMilliseconds != 0 {
            // Nothing can become ready: sleep out the timeout (forever is until the sandbox is stopped).
            var duration = timespec(tv_sec: Int(timeoutMilliseconds / 1000), tv_nsec: Int(timeoutMilliseconds % 1000) * 1_000_000)
            if timeoutMilliseconds < 0 { duration.tv_sec = Int(Int32.max) }
            guard nanosleep(&duration, nil) == 0 else { throw Errno.EINTR }
        }
        try space.write(entries.withUnsafeBytes { Array($0) }, to: address)
        return UInt64(ready)
    }
}
