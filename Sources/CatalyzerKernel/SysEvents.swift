import Glibc

/// eventfd, timerfd and epoll (the files themselves are in EventFiles.swift).
extension Task {
    private func installSpecial(_ object: SpecialFile, flags: Int32, access: Int32 = O_RDWR) throws(Errno) -> UInt64 {
        let file = OpenFile(backing: .special(object), guestPath: object.name, statusFlags: access | (flags & O_NONBLOCK))
        return UInt64(try files.install(file, closeOnExec: flags & O_CLOEXEC != 0))
    }

    func sysEventfd(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try installSpecial(EventCounter(count: UInt64(a.uint32(0)), semaphore: false), flags: 0)
    }

    func sysEventfd2(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let semaphore: Int32 = 1
        let flags = a.int32(1)
        guard flags & ~(semaphore | O_CLOEXEC | O_NONBLOCK) == 0 else { throw Errno.EINVAL }
        return try installSpecial(EventCounter(count: UInt64(a.uint32(0)), semaphore: flags & semaphore != 0), flags: flags)
    }

    func sysTimerfdCreate(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let clock = clockid_t(a.int32(0)), flags = a.int32(1)
        guard [CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM].contains(clock),
              flags & ~(O_CLOEXEC | O_NONBLOCK) == 0 else { throw Errno.EINVAL }
        return try installSpecial(TimerFile(clock: clock), flags: flags)
    }

    private func timerFile(_ fd: UInt64) throws(Errno) -> TimerFile {
        guard case .special(let object) = try files.file(fd).backing, let timer = object as? TimerFile else { throw Errno.EINVAL }
        return timer
    }

    func sysTimerfdSettime(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let timer = try timerFile(a[0])
        let absolute: Int32 = 1, cancelOnSet: Int32 = 2
        guard a.int32(1) & ~(absolute | cancelOnSet) == 0 else { throw Errno.EINVAL }
        let interval = try space.loadStruct(timespec.self, at: a[2], zero: timespec())
        let value = try space.loadStruct(timespec.self, at: a[2] + 16, zero: timespec())
        guard interval.tv_sec >= 0, (0..<1_000_000_000).contains(interval.tv_nsec),
              value.tv_sec >= 0, (0..<1_000_000_000).contains(value.tv_nsec) else { throw Errno.EINVAL }
        if a[3] != 0 { try storeTimerFile(timer, at: a[3]) }
        var deadline: UInt64?
        if value.nanoseconds != 0 {
            deadline = a.int32(1) & absolute != 0
                ? hostMonotonic(absolute: value, clock: timer.clock == CLOCK_REALTIME_ALARM ? CLOCK_REALTIME
                                : timer.clock == CLOCK_BOOTTIME_ALARM ? CLOCK_BOOTTIME : timer.clock)
                : Sandbox.monotonicNanoseconds() &+ value.nanoseconds
        }
        timer.arm(deadline: deadline, interval: interval.nanoseconds)
        return 0
    }

    func sysTimerfdGettime(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try storeTimerFile(try timerFile(a[0]), at: a[1])
        return 0
    }

    private func storeTimerFile(_ timer: TimerFile, at address: UInt64) throws(Errno) {
        let (remaining, interval) = timer.current()
        try space.storeStruct((timespec(nanoseconds: interval), timespec(nanoseconds: remaining)), at: address)
    }

    func sysEpollCreate(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a.int32(0) > 0 else { throw Errno.EINVAL }
        return try installSpecial(EventPoll(), flags: 0)
    }

    func sysEpollCreate1(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a.int32(0) & ~O_CLOEXEC == 0 else { throw Errno.EINVAL }
        return try installSpecial(EventPoll(), flags: a.int32(0))
    }

    private func eventPoll(_ fd: UInt64) throws(Errno) -> EventPoll {
        guard case .special(let object) = try files.file(fd).backing, let poll = object as? EventPoll else { throw Errno.EINVAL }
        return poll
    }

    func sysEpollCtl(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let poll = try eventPoll(a[0])
        let fd = a.int32(2)
        let file = try files.file(fd)
        switch file.backing {
        case .memory: throw Errno.EPERM  // regular files cannot be watched, as on Linux
        case .host where !file.isHostStream:
            throw Errno.EPERM
        default: break
        }
        let add: Int32 = 1, delete: Int32 = 2, modify: Int32 = 3
        switch a.int32(1) {
        case delete:
            try poll.remove(fd: fd, file: file)
        case add, modify:
            let events = try space.load(UInt32.self, at: a[3])
            let data = try space.load(UInt64.self, at: a[3] + 4)
            if a.int32(1) == add {
                try poll.add(fd: fd, file: file, events: events, data: data)
            } else {
                try poll.modify(fd: fd, file: file, events: events, data: data)
            }
        default:
            throw Errno.EINVAL
        }
        return 0
    }

    func sysEpollWait(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try epollWait(a[0], events: a[1], maximum: a.int32(2), timeoutNanoseconds: a.int32(3) < 0 ? nil : UInt64(a.int32(3)) * 1_000_000)
    }

    func sysEpollPwait(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try applyTemporaryMask(at: a[4], size: a[5])
        return try epollWait(a[0], events: a[1], maximum: a.int32(2), timeoutNanoseconds: a.int32(3) < 0 ? nil : UInt64(a.int32(3)) * 1_000_000)
    }

    func sysEpollPwait2(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try applyTemporaryMask(at: a[4], size: a[5])
        var timeout: UInt64?
        if a[3] != 0 {
            let value = try space.loadStruct(timespec.self, at: a[3], zero: timespec())
            guard value.tv_sec >= 0, (0..<1_000_000_000).contains(value.tv_nsec) else { throw Errno.EINVAL }
            timeout = value.nanoseconds
        }
        return try epollWait(a[0], events: a[1], maximum: a.int32(2), timeoutNanoseconds: timeout)
    }

    private func epollWait(_ fd: UInt64, events address: UInt64, maximum: Int32,
                           timeoutNanoseconds: UInt64?) throws(Errno) -> UInt64 {
        guard maximum > 0, maximum <= Int32(EventPoll.maximumInterests) else { throw Errno.EINVAL }
        let poll = try eventPoll(fd)
        _ = try space.hostBuffers(address, length: Int(maximum) * 12, access: .write)  // EFAULT before waiting
        let ready = poll.collect(limit: Int(maximum))
        if !ready.isEmpty {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(ready.count * 12)
            for (events, data) in ready {
                withUnsafeBytes(of: events.littleEndian) { bytes.append(contentsOf: $0) }
                withUnsafeBytes(of: data.littleEndian) { bytes.append(contentsOf: $0) }
            }
            try space.write(bytes, to: address)
            return UInt64(ready.count)
        }
        if timeoutNanoseconds == 0 || hasTimedOut { return 0 }
        var wait = Wait(reason: "epoll_wait")
        poll.addWaitTargets(to: &wait)
        if let timeoutNanoseconds {
            wait.deadline = min(wait.deadline ?? .max, deadline(afterNanoseconds: timeoutNanoseconds))
        }
        try block(wait)
    }
}
