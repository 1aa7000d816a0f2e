import Glibc

/// The futex table: waiters by futex word. A word in private memory is named by its process
/// image and virtual address; a word in a MAP_SHARED file mapping by the file's shared memory and
/// the offset in it, so processes (each with its own VM) that map the same file meet on it.
final class FutexTable {
    struct Key: Hashable {
        let object: ObjectIdentifier
        let address: UInt64

        init(image: ProcessImage, address: UInt64) {
            if let index = image.space.regionIndex(containing: address), let shared = image.space.regions[index].shared {
                object = ObjectIdentifier(shared.memory)
                self.address = shared.offset &+ (address - image.space.regions[index].start)
            } else {
                object = ObjectIdentifier(image)
                self.address = address
            }
        }
    }

    private var queues: [Key: WaitQueue] = [:]
    /// A waiter that times out or is interrupted leaves its queue behind; empty queues are swept
    /// whenever the table has doubled since the last sweep, so waits on ever new words cannot
    /// grow the monitor's memory without bound.
    private var sweepAt = 64

    func queue(_ key: Key) -> WaitQueue {
        if let queue = queues[key] { return queue }
        if queues.count >= sweepAt {
            queues = queues.filter { !$0.value.isEmpty }
            sweepAt = max(64, 2 * queues.count)
        }
        let queue = WaitQueue()
        queues[key] = queue
        return queue
    }

    /// Wakes up to `count` waiters on `key` whose bitset intersects `bitset`; each returns 0.
    func wake(_ key: Key, count: Int, bitset: UInt32) -> Int {
        guard let queue = queues[key] else { return 0 }
        let woken = queue.wake(limit: count, completion: 0) { $0.futexBitset & bitset != 0 }
        if queue.isEmpty { queues[key] = nil }
        return woken
    }

    /// Wakes `wakeCount` waiters on `from` and moves up to `requeueCount` more to `to`.
    func requeue(from: Key, to: Key, wakeCount: Int, requeueCount: Int) -> (woken: Int, moved: Int) {
        guard let source = queues[from] else { return (0, 0) }
        let woken = source.wake(limit: wakeCount, completion: 0)
        let moved = from == to ? 0 : source.requeue(limit: requeueCount, to: queue(to))
        if source.isEmpty { queues[from] = nil }
        return (woken, moved)
    }
}

/// futex(2): wait, wake, requeue, wake-op and their bitset forms, with timeouts; robust lists at
/// thread exit. PI futexes are not implemented (ENOSYS): glibc uses them only for mutexes created
/// with PTHREAD_PRIO_INHERIT.
extension Task {
    private enum FutexOperation: Int32 {
        case wait = 0, wake = 1, requeue = 3, compareRequeue = 4, wakeOp = 5, waitBitset = 9, wakeBitset = 10
    }

    private static let privateFlag: Int32 = 128, clockRealtimeFlag: Int32 = 256

    func futexKey(_ address: UInt64) -> FutexTable.Key { FutexTable.Key(image: image, address: address) }

    func sysFutex(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let command = a.int32(1) & ~(Self.privateFlag | Self.clockRealtimeFlag)
        guard let operation = FutexOperation(rawValue: command) else { throw Errno.ENOSYS }  // PI futexes
        let address = a[0]
        guard address & 3 == 0 else { throw Errno.EINVAL }
        let futexes = sandbox.futexes
        switch operation {
        case .wake, .wakeBitset:
            let bitset = operation == .wakeBitset ? a.uint32(5) : UInt32.max
            guard bitset != 0 else { throw Errno.EINVAL }
            return UInt64(futexes.wake(futexKey(address), count: Int(min(a.uint32(2), UInt32(Int32.max))), bitset: bitset))
        case .requeue, .compareRequeue:
            let wakeCount = Int(a.int32(2)), requeueCount = Int(Int32(truncatingIfNeeded: a[3]))
            guard wakeCount >= 0, requeueCount >= 0, a[4] & 3 == 0 else { throw Errno.EINVAL }
            if operation == .compareRequeue {
                guard try space.load(UInt32.self, at: address) == a.uint32(5) else { throw Errno.EAGAIN }
            }
            let (woken, moved) = futexes.requeue(from: futexKey(address), to: futexKey(a[4]),
                                                 wakeCount: wakeCount, requeueCount: requeueCount)
            return UInt64(operation == .compareRequeue ? woken + moved : woken)
        case .wakeOp:
            guard a[4] & 3 == 0 else { throw Errno.EINVAL }
            let old = try applyWakeOperation(a.uint32(5), at: a[4])
            var woken = futexes.wake(futexKey(address), count: Int(a.int32(2)), bitset: .max)
            if Self.wakeCondition(a.uint32(5), old: old) {
                woken += futexes.wake(futexKey(a[4]), count: Int(Int32(truncatingIfNeeded: a[3])), bitset: .max)
            }
            return UInt64(woken)
        case .wait, .waitBitset:
            let bitset = operation == .waitBitset ? a.uint32(5) : UInt32.max
            guard bitset != 0 else { throw Errno.EINVAL }
            var deadline: UInt64?
            if a[3] != 0 {
                let timeout = try space.loadStruct(timespec.self, at: a[3], zero: timespec())
                guard timeout.tv_sec >= 0, (0..<1_000_000_000).contains(timeout.tv_nsec) else { throw Errno.EINVAL }
                // FUTEX_WAIT's timeout is relative; FUTEX_WAIT_BITSET's is absolute on its clock.
                if operation == .waitBitset {
                    let clock = a.int32(1) & Self.clockRealtimeFlag != 0 ? CLOCK_REALTIME : CLOCK_MONOTONIC
                    deadline = self.deadline(at: hostMonotonic(absolute: timeout, clock: clock))
                } else {
                    deadline = self.deadline(afterNanoseconds: timeout.nanoseconds)
                }
                if hasTimedOut { throw Errno.ETIMEDOUT }
            }
            guard try space.load(UInt32.self, at: address) == a.uint32(2) else { throw Errno.EAGAIN }
            futexBitset = bitset
            try block(Wait(queues: [futexes.queue(futexKey(address))], deadline: deadline,
                           reason: "futex 0x\(hex(address))"))
        }
    }

    /// FUTEX_WAKE_OP's update of `*address`: `op` packs the operation, the operand and its shift
    /// flag. Returns the old value.
    private func applyWakeOperation(_ encoded: UInt32, at address: UInt64) throws(Errno) -> UInt32 {
        let operation = (encoded >> 28) & 0x7, shiftOperand = (encoded >> 31) != 0
        var operand = (encoded >> 12) & 0xFFF
        if shiftOperand { operand = 1 << (operand & 31) }
        let old = try space.load(UInt32.self, at: address)
        let new: UInt32
        switch operation {
        case 0: new = operand
        case 1: new = old &+ operand
        case 2: new = old | operand
        case 3: new = old & ~operand
        case 4: new = old ^ operand
        default: throw Errno.EINVAL
        }
        try space.store(new, at: address)
        return old
    }

    /// FUTEX_WAKE_OP's comparison of the old value with the argument packed in `op`.
    private static func wakeCondition(_ encoded: UInt32, old: UInt32) -> Bool {
        let comparison = (encoded >> 24) & 0xF, argument = encoded & 0xFFF
        switch comparison {
        case 0: return old == argument
        case 1: return old != argument
        case 2: return Int32(bitPattern: old) < Int32(argument)
        case 3: return Int32(bitPattern: old) <= Int32(argument)
        case 4: return Int32(bitPattern: old) > Int32(argument)
        case 5: return Int32(bitPattern: old) >= Int32(argument)
        default: return false
        }
    }

    func sysSetRobustList(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[1] == 24 else { throw Errno.EINVAL }  // sizeof(struct robust_list_head)
        robustList = a[0]
        return 0
    }

    func sysGetRobustList(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let target = a.int32(0) == 0 ? self : sandbox.tasks[a.int32(0)]
        guard let target else { throw Errno.ESRCH }
        try space.store(target.robustList, at: a[1])
        try space.store(UInt64(24), at: a[2])
        return 0
    }
}

extension Sandbox {
    /// At thread exit: marks each robust futex the thread still holds as owner-died and wakes a
    /// waiter (the list is guest memory: every read is checked and the walk is bounded).
    func releaseRobustFutexes(of task: Task) {
        let space = task.space
        let head = task.robustList
        guard let first = try? space.load(UInt64.self, at: head),
              let offset = try? space.load(Int64.self, at: head + 8),
              let pending = try? space.load(UInt64.self, at: head + 16) else { return }
        var entries: [UInt64] = []
        var entry = first
        while entry != head && entry != 0 && entries.count < 2048 {
            entries.append(entry)
            guard let next = try? space.load(UInt64.self, at: entry) else { break }
            entry = next
        }
        if pending != 0 { entries.append(pending) }
        let waitersBit: UInt32 = 0x8000_0000, ownerDied: UInt32 = 0x4000_0000, tidMask: UInt32 = 0x3FFF_FFFF
        for entry in entries {
            let word = UInt64(bitPattern: Int64(bitPattern: entry) &+ offset)
            guard word & 3 == 0, let value = try? space.load(UInt32.self, at: word),
                  value & tidMask == UInt32(bitPattern: task.tid) else { continue }
            try? space.store((value & waitersBit) | ownerDied, at: word)
            if value & waitersBit != 0 {
                _ = futexes.wake(FutexTable.Key(image: task.image, address: word), count: 1, bitset: .max)
            }
        }
    }
}
