import CKVM
import CatalyzerKVM
import Glibc

/// A signal's disposition, as the kernel's `struct sigaction` holds it (x86-64: handler, flags,
/// restorer, mask; 32 bytes).
struct SignalAction: Equatable {
    var handler: UInt64 = SignalAction.defaultAction
    var flags: UInt64 = 0
    var restorer: UInt64 = 0
    var mask: UInt64 = 0

    static let defaultAction: UInt64 = 0, ignore: UInt64 = 1
    static let noChildStop: UInt64 = 1, noChildWait: UInt64 = 2, siginfo: UInt64 = 4
    static let onStack: UInt64 = 0x0800_0000, restart: UInt64 = 0x1000_0000
    static let noDefer: UInt64 = 0x4000_0000, resetHand: UInt64 = 0x8000_0000, hasRestorer: UInt64 = 0x0400_0000
    static let size = 32

    init() {}

    init(bytes: [UInt8]) {
        func word(_ index: Int) -> UInt64 {
            bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self) }
        }
        handler = word(0)
        flags = word(1)
        restorer = word(2)
        mask = word(3)
    }

    var bytes: [UInt8] {
        withUnsafeBytes(of: (handler, flags, restorer, mask)) { Array($0) }
    }
}

/// Signal dispositions: one table per process unless `clone(CLONE_SIGHAND)` shares it.
final class SignalHandlers {
    private(set) var actions: [Int32: SignalAction] = [:]

    init(actions: [Int32: SignalAction] = [:]) {
        self.actions = actions
    }

    func action(for signal: Int32) -> SignalAction { actions[signal] ?? SignalAction() }

    func setAction(_ action: SignalAction, for signal: Int32) {
        actions[signal] = action == SignalAction() ? nil : action
    }

    func copy() -> SignalHandlers { SignalHandlers(actions: actions) }

    /// execve: caught signals go back to their default action; ignored ones stay ignored.
    func resetForExec() {
        actions = actions.filter { $0.value.handler == SignalAction.ignore }
            .mapValues { _ in SignalAction(handler: SignalAction.ignore) }
    }

    /// What happens to `signal` if it is delivered now.
    func disposition(of signal: Int32) -> Disposition {
        let action = action(for: signal)
        switch action.handler {
        case SignalAction.ignore: return .ignore
        case SignalAction.defaultAction: return Self.ignoredByDefault.contains(signal) ? .ignore : .terminate
        default: return .handle(action)
        }
    }

    enum Disposition {
        case ignore, terminate
        case handle(SignalAction)
    }

    /// Signals whose default action is to do nothing; stop signals count here (no job control).
    static let ignoredByDefault: Set<Int32> = [SIGCHLD, SIGURG, SIGWINCH, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU]
}

extension SignalAction {
    init(handler: UInt64) {
        self.init()
        self.handler = handler
    }
}

/// Bit of `signal` in a signal set.
func signalBit(_ signal: Int32) -> UInt64 { UInt64(1) << UInt64(signal - 1) }

/// SIGKILL and SIGSTOP can be neither blocked nor caught.
let unblockableSignals = signalBit(SIGKILL) | signalBit(SIGSTOP)

extension Sandbox {
    /// Sends a signal to a process (kill): one thread that waits for it in rt_sigtimedwait or does
    /// not block it takes it.
    func send(_ info: SignalInformation, toProcess group: ThreadGroup) {
        guard !group.isZombie, group.exitStatus == nil, let anyTask = group.tasks.first else { return }
        let bit = signalBit(info.signal)
        if info.signal == SIGKILL {
            exitGroup(group, status: .killed(signal: SIGKILL, reason: "killed by SIGKILL"))
            return
        }
        let waiter = group.tasks.first { ($0.sigtimedwaitSet ?? 0) & bit != 0 }
        switch anyTask.signalHandlers.disposition(of: info.signal) {
        case .ignore where waiter == nil:
            return
        case .terminate where waiter == nil && group.tasks.contains(where: { $0.signalMask & bit == 0 }):
            exitGroup(group, status: .killed(signal: info.signal, reason: "killed by signal \(info.signal)"))
            return
        default:
            break
        }
        group.pendingSignals.add(info)
        if let waiter {
            scheduler.wake(waiter)
        } else {
            group.tasks.first { $0.signalMask & bit == 0 }?.interruptWait()
        }
    }

    /// Sends a signal to one thread (tgkill, a timer's SIGEV_THREAD_ID).
    func send(_ info: SignalInformation, toTask task: Task) {
        let group = task.group
        guard task.state != .exited, group.exitStatus == nil else { return }
        let bit = signalBit(info.signal)
        if info.signal == SIGKILL {
            exitGroup(group, status: .killed(signal: SIGKILL, reason: "killed by SIGKILL"))
            return
        }
        let waiting = (task.sigtimedwaitSet ?? 0) & bit != 0
        switch task.signalHandlers.disposition(of: info.signal) {
        case .ignore where !waiting:
            return
        case .terminate where !waiting && task.signalMask & bit == 0:
            exitGroup(group, status: .killed(signal: info.signal, reason: "killed by signal \(info.signal)"))
            return
        default:
            break
        }
        task.pendingSignals.add(info)
        if waiting {
            scheduler.wake(task)
        } else if task.signalMask & bit == 0 {
            task.interruptWait()
        }
    }
}

extension Task {
    /// Whether a signal is pending for this thread or its process and not blocked.
    var hasDeliverableSignal: Bool {
        (pendingSignals.bits | group.pendingSignals.bits) & ~signalMask != 0
    }

    /// A signal arrived for a blocked task: end its wait with EINTR (if the wait allows it).
    func interruptWait() {
        guard state == .blocked, let wait, wait.interruptible, completion == nil else { return }
        interruptedBySignal = true
        sandbox.scheduler.wake(self)
    }

    /// A synchronous fault: delivered to a handler if one is installed and the signal is not
    /// blocked; otherwise it ends the process with that signal (Linux's force_sig).
    func forceSignal(_ info: SignalInformation, reason: String) {
        let blocked = signalMask & signalBit(info.signal) != 0
        if case .handle = signalHandlers.disposition(of: info.signal), !blocked {
            pendingSignals.add(info)
            faultReason = reason
            return
        }
        sandbox.exitGroup(group, status: .killed(signal: info.signal, reason: reason))
    }

    /// On the way back to user mode: runs the default action of pending signals or sets up the
    /// handler frame for the first one that has a handler.
    func deliverPendingSignals() {
        guard hasDeliverableSignal else {
            if let saved = savedSignalMask {
                signalMask = saved  // a temporary mask whose wait ended without a signal
                savedSignalMask = nil
            }
            return
        }
        while state == .runnable {
            guard let info = pendingSignals.take(notIn: signalMask) ?? group.pendingSignals.take(notIn: signalMask) else { break }
            switch signalHandlers.disposition(of: info.signal) {
            case .ignore:
                continue
            case .terminate:
                sandbox.exitGroup(group, status: .killed(signal: info.signal,
                                                         reason: faultReason ?? "killed by signal \(info.signal)"))
                return
            case .handle(let action):
                do {
                    try setUpHandlerFrame(info, action: action)
                } catch {
                    sandbox.exitGroup(group, status: .killed(signal: SIGSEGV, reason: "cannot deliver signal \(info.signal): "
                                                             + "its frame does not fit the stack (\(error))"))
                }
                faultReason = nil
                return  // one frame per return to user mode, as Linux
            }
        }
    }

    // MARK: the signal frame

    /// Offsets in the frame Linux builds for a handler on x86-64 (`struct rt_sigframe`): the return
    /// address (`sa_restorer`), `struct ucontext` and `siginfo_t`.
    private enum Frame {
        static let ucontext = 8, ucStack = ucontext + 16, mcontext = ucontext + 40
        static let sigmask = mcontext + 256, siginfo = sigmask + 8, size = siginfo + 128
        /// `struct sigcontext` register order, as offsets in `mcontext`.
        static let registerOrder = 0, rip = 128, eflags = 136, csgsfs = 144, err = 152, trapno = 160
        static let oldmask = 168, cr2 = 176, fpstate = 184
    }

    private func setUpHandlerFrame(_ info: SignalInformation, action: SignalAction) throws {
        var registers = self.registers
        // A syscall a signal interrupted restarts after the handler if it is restartable and the
        // handler asked for SA_RESTART (Linux's ERESTARTSYS), else returns EINTR.
        if let number = interruptedSyscall {
            interruptedSyscall = nil
            if action.flags & SignalAction.restart != 0 && Self.restartableSyscalls.contains(number) {
                registers.rax = UInt64(number)
                registers.rip &-= 2  // back onto the `syscall` instruction
            }
        }
        let onAlternateStack = alternateStack.contains(registers.rsp)
        var top: UInt64
        if action.flags & SignalAction.onStack != 0 && alternateStack.flags & AlternateStack.disabled == 0 && !onAlternateStack {
            top = alternateStack.base &+ alternateStack.size
        } else {
            top = registers.rsp &- 128  // the red zone
        }
        let extended = try extendedState() ?? []
        let fpstate = (top &- UInt64(extended.count)) & ~63
        let frame = ((fpstate &- UInt64(Frame.size)) & ~15) &- 8
        var bytes = [UInt8](repeating: 0, count: Frame.size)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<offset + $0.count, with: $0) }
        }
        put(action.restorer, 0)
        // ucontext: flags (UC_FP_XSTATE), link, stack, mcontext, sigmask.
        put(UInt64(1), Frame.ucontext)
        put(alternateStack.base, Frame.ucStack)
        put(Int32(alternateStack.flags | (onAlternateStack ? AlternateStack.onStack : 0)), Frame.ucStack + 8)
        put(alternateStack.size, Frame.ucStack + 16)
        let general = [registers.r8, registers.r9, registers.r10, registers.r11, registers.r12, registers.r13,
                       registers.r14, registers.r15, registers.rdi, registers.rsi, registers.rbp, registers.rbx,
                       registers.rdx, registers.rax, registers.rcx, registers.rsp]
        for (index, value) in general.enumerated() { put(value, Frame.mcontext + index * 8) }
        put(registers.rip, Frame.mcontext + Frame.rip)
        put(registers.rflags, Frame.mcontext + Frame.eflags)
        put(UInt64(0x33) | UInt64(0x2b) << 48, Frame.mcontext + Frame.csgsfs)  // cs, gs, fs, ss
        put(info.address, Frame.mcontext + Frame.cr2)
        put(extended.isEmpty ? 0 : fpstate, Frame.mcontext + Frame.fpstate)
        let maskToRestore = savedSignalMask ?? signalMask
        savedSignalMask = nil
        put(maskToRestore, Frame.mcontext + Frame.oldmask)
        put(maskToRestore, Frame.sigmask)
        writeSignalInformation(info, into: &bytes, at: Frame.siginfo)
        if !extended.isEmpty { try space.write(extended, to: fpstate) }
        try space.write(bytes, to: frame)

        registers.rsp = frame
        registers.rip = action.handler
        registers.rdi = UInt64(info.signal)
        registers.rsi = frame + UInt64(Frame.siginfo)
        registers.rdx = frame + UInt64(Frame.ucontext)
        registers.rax = 0
        registers.rflags &= ~UInt64(0x40500)  // TF, DF, AC: cleared for the handler
        self.registers = registers
        signalMask |= action.mask | (action.flags & SignalAction.noDefer != 0 ? 0 : signalBit(info.signal))
        signalMask &= ~unblockableSignals
        if action.flags & SignalAction.resetHand != 0 { signalHandlers.setAction(SignalAction(), for: info.signal) }
    }

    /// `siginfo_t`: signo, errno, code, then the union (pid/uid, status, address, timer fields).
    private func writeSignalInformation(_ info: SignalInformation, into bytes: inout [UInt8], at offset: Int) {
        func put<T: FixedWidthInteger>(_ value: T, _ at: Int) {
            withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset + at..<offset + at + $0.count, with: $0) }
        }
        put(info.signal, 0)
        put(info.code, 8)
        switch info.signal {
        case SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP:
            put(info.address, 16)
        case SIGCHLD:
            put(info.senderPID, 16)
            put(info.senderUID, 20)
            put(info.status, 24)
        default:
            if info.code == SignalInformation.timerCode {
                put(info.timerID, 16)
                put(Int32(0), 20)  // overrun
                put(info.value, 24)
            } else {
                put(info.senderPID, 16)
                put(info.senderUID, 20)
                put(info.value, 24)
            }
        }
    }

    /// rt_sigreturn: restores what `setUpHandlerFrame` saved; the frame is at RSP - 8 after the
    /// handler's `ret` popped the restorer's address.
    func returnFromSignal() throws(Errno) {
        let frame = registers.rsp &- 8
        let bytes = try space.read(frame, count: Frame.size)
        func word(_ offset: Int) -> UInt64 { bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) } }
        var registers = self.registers
        let saved = (0..<16).map { word(Frame.mcontext + $0 * 8) }
        (registers.r8, registers.r9, registers.r10, registers.r11) = (saved[0], saved[1], saved[2], saved[3])
        (registers.r12, registers.r13, registers.r14, registers.r15) = (saved[4], saved[5], saved[6], saved[7])
        (registers.rdi, registers.rsi, registers.rbp, registers.rbx) = (saved[8], saved[9], saved[10], saved[11])
        (registers.rdx, registers.rax, registers.rcx, registers.rsp) = (saved[12], saved[13], saved[14], saved[15])
        registers.rip = word(Frame.mcontext + Frame.rip)
        // Only the flags user code may change; IF stays set.
        let userFlags: UInt64 = 0x0004_0DD5
        registers.rflags = (registers.rflags & ~userFlags) | (word(Frame.mcontext + Frame.eflags) & userFlags) | 0x202
        let fpstate = word(Frame.mcontext + Frame.fpstate)
        if fpstate != 0 {
            let size = (try? image.cpu.vm.vcpu.xsaveArea().count) ?? 0
            let state = try space.read(fpstate, count: size)
            do {
                if isLoaded { try image.cpu.vm.vcpu.setXSAVEArea(state) } else { context.extendedState = state }
            } catch {
                throw Errno.EFAULT  // a corrupted FP state in the frame: Linux sends SIGSEGV
            }
        }
        signalMask = word(Frame.sigmask) & ~unblockableSignals
        let stackFlags = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: Frame.ucStack + 8, as: Int32.self) }
        if !alternateStack.contains(registers.rsp) {
            alternateStack = AlternateStack(base: word(Frame.ucStack), size: word(Frame.ucStack + 16),
                                            flags: stackFlags & ~AlternateStack.onStack)
        }
        self.registers = registers
        registersReplaced = true
    }

    /// Syscalls that restart after a handler with SA_RESTART (Linux: those returning ERESTARTSYS);
    /// the others (sleeps, poll, select, epoll_wait, sigsuspend) return EINTR.
    static let restartableSyscalls: Set<Int> = [
        0, 1, 17, 18, 19, 20, 295, 296,  // read, write, pread64, pwrite64, readv, writev, preadv, pwritev
        61, 247, 202,  // wait4, waitid, futex
        43, 288, 42, 44, 45, 46, 47,  // accept, accept4, connect, sendto, recvfrom, sendmsg, recvmsg
        72, 2, 257, 40, 275, 276,  // fcntl (F_SETLKW), open, openat, sendfile, splice, tee
    ]
}
