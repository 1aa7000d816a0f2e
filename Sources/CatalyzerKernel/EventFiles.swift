import Glibc

/// eventfd: a 64-bit counter. A read takes the count (or 1 in semaphore mode) and waits while it
/// is zero; a write adds and waits while the sum would exceed 2⁶⁴−2.
final class EventCounter: SpecialFile {
    private(set) var count: UInt64
    let semaphore: Bool
    let changed = WaitQueue()
    static let maximum: UInt64 = .max - 1

    init(count: UInt64, semaphore: Bool) {
        self.count = count
        self.semaphore = semaphore
    }

    var name: String { "anon_inode:[eventfd]" }

    func readiness() -> Int16 {
        (count > 0 ? Int16(POLLIN | POLLRDNORM) : 0) | (count < Self.maximum ? Int16(POLLOUT | POLLWRNORM) : 0)
    }

    func read(_ task: Task, _ file: OpenFile, into vectors: [iovec]) throws(Errno) -> Int {
        guard Buffers.totalLength(vectors) >= 8 else { throw Errno.EINVAL }
        if count == 0 {
            guard file.statusFlags & O_NONBLOCK == 0 else { throw Errno.EAGAIN }
            try task.block(Wait(queues: [changed], reason: "read from eventfd"))
        }
        let value = semaphore ? 1 : count
        count -= value
        changed.wakeAll()
        return Buffers.scatter(withUnsafeBytes(of: value.littleEndian) { Array($0) }, into: vectors)
    }

    func write(_ task: Task, _ file: OpenFile, from vectors: [iovec]) throws(Errno) -> Int {
        let bytes = Buffers.gather(vectors, limit: 8)
        guard bytes.count == 8 else { throw Errno.EINVAL }
        let value = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        guard value != .max else { throw Errno.EINVAL }
        if value > Self.maximum - count {
            guard file.statusFlags & O_NONBLOCK == 0 else { throw Errno.EAGAIN }
            try task.block(Wait(queues: [changed], reason: "write to eventfd"))
        }
        count += value
        if value > 0 { changed.wakeAll() }
        return 8
    }
}

/// timerfd: a timer whose expirations are read as a 64-bit count. Expiry is computed when asked
/// (reads, polls); waiters sleep until the deadline (`nextChange`).
final class TimerFile: SpecialFile {
    let clock: clockid_t
    /// Host-monotonic deadline of the next expiry, and the period (0: one-shot).
    private(set) var deadline: UInt64?
    private(set) var interval: UInt64 = 0
    private var expirations: UInt64 = 0
    let changed = WaitQueue()

    init(clock: clockid_t) { self.clock = clock }

    var name: String { "anon_inode:[timerfd]" }
    var nextChange: UInt64? { expirations > 0 ? nil : deadline }

    /// Counts the expirations up to now.
    private func update() {
        guard let deadline else { return }
        let now = Sandbox.monotonicNanoseconds()
        guard now >= deadline else { return }
        if interval > 0 {
            let periods = 1 + (now - deadline) / interval
            expirations &+= periods
            self.deadline = deadline &+ periods &* interval
        } else {
            expirations &+= 1
            self.deadline = nil
        }
    }

    func arm(deadline: UInt64?, interval: UInt64) {
        self.deadline = deadline
        self.interval = interval
        expirations = 0
        changed.wakeAll()
    }

    /// Its state for a checkpoint: the time to the next expiry (nil when disarmed), the period
    /// and the expirations not yet read.
    func saved(now: UInt64) -> (remaining: UInt64?, interval: UInt64, expirations: UInt64) {
        update()
        return (deadline.map { $0 > now ? $0 - now : 0 }, interval, expirations)
    }

    /// Takes a checkpoint's state, the next expiry counted from `now`.
    func restore(remainingNanoseconds: UInt64?, interval: UInt64, expirations: UInt64, now: UInt64) {
        deadline = remainingNanoseconds.map { now &+ $0 }
        self.interval = interval
        self.expirations = expirations
    }

    /// Time to the next expiry (0 when disarmed) and the period, for timerfd_gettime.
    func current() -> (remaining: UInt64, interval: UInt64) {
        update()
        guard let deadline else { return (0, interval) }
        let now = Sandbox.monotonicNanoseconds()
        return (deadline > now ? deadline - now : 1, interval)
    }

    func readiness() -> Int16 {
        update()
        return expirations > 0 ? Int16(POLLIN | POLLRDNORM) : 0
    }

    func read(_ task: Task, _ file: OpenFile, into vectors: [iovec]) throws(Errno) -> Int {
        guard Buffers.totalLength(vectors) >= 8 else { throw Errno.EINVAL }
        update()
        if expirations == 0 {
            guard file.statusFlags & O_NONBLOCK == 0 else { throw Errno.EAGAIN }
            try task.block(Wait(queues: [changed], deadline: deadline, reason: "read from timerfd"))
        }
        let value = expirations
        expirations = 0
        return Buffers.scatter(withUnsafeBytes(of: value.littleEndian) { Array($0) }, into: vectors)
    }

    func write(_ task: Task, _ file: OpenFile, from vectors: [iovec]) throws(Errno) -> Int {
        throw Errno.EINVAL
    }
}

/// An epoll instance: an interest list of (fd, open file) pairs with the events asked for.
/// Readiness is evaluated when asked; edge-triggered entries report a condition once until it
/// clears and comes back, and one-shot entries are disabled after they report.
final class EventPoll: SpecialFile {
    struct Interest {
        let fd: Int32
        /// The open file description; the interest goes away with it, as on Linux.
        weak var file: OpenFile?
        var events: UInt32
        var data: UInt64
        /// Conditions already reported (edge-triggered entries), and the generation of the file's
        /// wait queue when they were.
        var reported: UInt32 = 0
        var reportedGeneration: UInt64 = 0
    }

    static let edgeTriggered: UInt32 = 1 << 31, oneShot: UInt32 = 1 << 30
    static let wakeUp: UInt32 = 1 << 29, exclusive: UInt32 = 1 << 28
    static let maximumInterests = 65536

    private(set) var interests: [Interest] = []
    let changed = WaitQueue()

    var name: String { "anon_inode:[eventpoll]" }

    private func index(fd: Int32, file: OpenFile) -> Int? {
        interests.firstIndex { $0.fd == fd && $0.file === file }
    }

    func add(fd: Int32, file: OpenFile, events: UInt32, data: UInt64) throws(Errno) {
        interests.removeAll { $0.file == nil }
        guard index(fd: fd, file: file) == nil else { throw Errno.EEXIST }
        guard interests.count < Self.maximumInterests else { throw Errno.ENOSPC }
        if case .special(let object) = file.backing, object === self { throw Errno.EINVAL }
        var interest = Interest(fd: fd, file: file, events: events, data: data)
        interest.reportedGeneration = FileReadiness.changes(of: file).map { $0.generation &- 1 } ?? 0
        interests.append(interest)
    }

    func modify(fd: Int32, file: OpenFile, events: UInt32, data: UInt64) throws(Errno) {
        guard let index = index(fd: fd, file: file) else { throw Errno.ENOENT }
        interests[index].events = events
        interests[index].data = data
        interests[index].reported = 0
        interests[index].reportedGeneration = FileReadiness.changes(of: file).map { $0.generation &- 1 } ?? 0
    }

    func remove(fd: Int32, file: OpenFile) throws(Errno) {
        guard let index = index(fd: fd, file: file) else { throw Errno.ENOENT }
        interests.remove(at: index)
    }

    /// The entries whose open file is still open, for a checkpoint.
    var liveInterests: [(fd: Int32, file: OpenFile, events: UInt32, data: UInt64)] {
        interests.compactMap { interest in interest.file.map { (interest.fd, $0, interest.events, interest.data) } }
    }

    /// The conditions of one entry now, masked to what it asks for (ERR and HUP always).
    private func conditions(_ interest: Interest) -> UInt32 {
        guard let file = interest.file else { return 0 }
        let wanted = interest.events & 0xFFFF | UInt32(POLLERR | POLLHUP)
        return UInt32(UInt16(bitPattern: FileReadiness.current(file, events: Int16(truncatingIfNeeded: interest.events & 0xFFFF)))) & wanted
    }

    func readiness() -> Int16 {
        interests.contains { $0.events & 0xFFFF != 0 && conditions($0) != 0 } ? Int16(POLLIN | POLLRDNORM) : 0
    }

    /// Up to `limit` ready entries as (events, data), updating edge and one-shot state.
    func collect(limit: Int) -> [(UInt32, UInt64)] {
        interests.removeAll { $0.file == nil }
        var ready: [(UInt32, UInt64)] = []
        for index in interests.indices where ready.count < limit {
            let interest = interests[index]
            guard interest.events & 0xFFFF != 0 || interest.events & UInt32(POLLERR | POLLHUP) != 0 else { continue }
            if interest.events & Self.oneShot != 0 && interest.events & 0xFFFF == 0 { continue }
            let now = conditions(interest)
            if interest.events & Self.edgeTriggered != 0 {
                // New conditions, or a new event on the file (data arrived while it stayed readable).
                let generation = interest.file.flatMap { FileReadiness.changes(of: $0)?.generation }
                let moved = generation.map { $0 != interest.reportedGeneration } ?? false
                interests[index].reported &= now  // conditions that cleared can report again
                let fresh = now & ~interest.reported
                guard now != 0, fresh != 0 || moved else { continue }
                interests[index].reported |= now
                interests[index].reportedGeneration = generation ?? 0
            } else if now == 0 {
                continue
            }
            ready.append((now, interest.data))
            if interest.events & Self.oneShot != 0 { interests[index].events &= ~UInt32(0xFFFF) }
        }
        return ready
    }

    /// What wakes a task waiting on this instance: every watched file's wait targets.
    func addWaitTargets(to wait: inout Wait) {
        for interest in interests {
            guard let file = interest.file else { continue }
            if case .special(let object) = file.backing, object === self { continue }
            FileReadiness.addWaitTargets(of: file, events: Int16(truncatingIfNeeded: interest.events & 0xFFFF), to: &wait)
        }
    }

    func read(_ task: Task, _ file: OpenFile, into vectors: [iovec]) throws(Errno) -> Int { throw Errno.EINVAL }
    func write(_ task: Task, _ file: OpenFile, from vectors: [iovec]) throws(Errno) -> Int { throw Errno.EINVAL }
}
