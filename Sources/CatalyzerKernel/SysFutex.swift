import Glibc

/// futex(2) for a single-threaded process. No other thread exists to change a futex word or wake a
/// waiter, so: a wait whose word differs is EAGAIN as usual; a wait with a timeout sleeps it out
/// (ETIMEDOUT); a wait without one could never end, so it is reported as a deadlock that ends the
/// sandbox instead of hanging it. Wakes and requeues find no waiters.
extension Kernel {
    private enum FutexOperation: Int32 {
        case wait = 0, wake = 1, requeue = 3, compareRequeue = 4, wakeOp = 5, waitBitset = 9, wakeBitset = 10
    }

    private static let privateFlag: Int32 = 128, clockRealtimeFlag: Int32 = 256

    func sysFutex(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let command = a.int32(1) & ~(Self.privateFlag | Self.clockRealtimeFlag)
        guard let operation = FutexOperation(rawValue: command) else { throw Errno.ENOSYS }  // PI futexes
        let address = a[0]
        guard address & 3 == 0 else { throw Errno.EINVAL }
        switch operation {
        case .wake, .wakeBitset, .requeue:
            _ = try space.load(UInt32.self, at: address)
            return 0
        case .compareRequeue:
            guard try space.load(UInt32.self, at: address) == a.uint32(5) else { throw Errno.EAGAIN }
            return 0
        case .wakeOp:
            // Applies the operation to the second word, as the caller relies on; nobody waits on either.
            try applyWakeOperation(a.uint32(5), at: a[4])
            return 0
        case .wait, .waitBitset:
            if operation == .waitBitset && a.uint32(5) == 0 { throw Errno.EINVAL }
            guard try space.load(UInt32.self, at: address) == a.uint32(2) else { throw Errno.EAGAIN }
            guard a[3] != 0 else {
                kill(signal: SIGKILL, reason: "deadlock: futex wait at 0x\(hex(address)) with no timeout can never be "
                     + "woken (the sandbox runs one thread)")
                throw Errno.EINTR
            }
            let timeout = try space.loadStruct(timespec.self, at: a[3], zero: timespec())
            guard timeout.tv_sec >= 0, (0..<1_000_000_000).contains(timeout.tv_nsec) else { throw Errno.EINVAL }
            // FUTEX_WAIT's timeout is relative; FUTEX_WAIT_BITSET's is absolute on its clock.
            let absolute = operation == .waitBitset
            let clock = absolute && a.int32(1) & Self.clockRealtimeFlag != 0 ? CLOCK_REALTIME : CLOCK_MONOTONIC
            let deadline = absolute ? time.hostTime(timeout, clock: clock) : timeout
            let result = withUnsafePointer(to: deadline) { clock_nanosleep(clock, absolute ? TIMER_ABSTIME : 0, $0, nil) }
            guard result == 0 else { throw Errno(result) }
            throw Errno.ETIMEDOUT
        }
    }

    /// FUTEX_WAKE_OP's update of `*address`: `op` packs the operation, the operand and its shift flag.
    private func applyWakeOperation(_ encoded: UInt32, at address: UInt64) throws(Errno) {
        let operation = (encoded >> 28) & 0x7, shiftOperand = encoded >> 31 != 0
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
    }
}
