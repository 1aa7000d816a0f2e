import CKVM
import CatalyzerKVM
import Glibc

/// Serving a trapped syscall on the calling task, and parking it when the call must wait.
///
/// A handler that cannot complete now calls `block(_:)`, which parks the task and unwinds with
/// `Errno.blocked`. When the task is woken it runs the same syscall again from the start, with the
/// same registers: handlers check their condition before changing anything, so a re-run is safe.
/// A waker that must hand over a result (a futex wake-up) sets `completion` instead, and the
/// re-run returns it without calling the handler. A signal that arrives meanwhile wakes the task:
/// the re-run's `block` then throws EINTR (after the handler had its chance to note progress, as
/// nanosleep's time left), and delivery restarts the call when the handler has SA_RESTART.
extension Task {
    /// Serves the syscall the task just trapped with (its registers are on the vCPU).
    func serveSyscall() {
        let arguments = SyscallArguments(registers: registers)
        sandbox.syscallCount += 1
        if sandbox.stopsAtReadyPoint && sandbox.readyPointTask == nil && isReadyPointRead(arguments) {
            // Left unserved: the registers still hold the read, which a restore serves first.
            sandbox.readyPointTask = self
            let now = Sandbox.monotonicNanoseconds()
            sandbox.readyPointReached = now
            // Other tasks get a grace period to park; the ticker ends a slice that outlasts it.
            let signals = sandbox.scheduler.signals
            signals.nextDeadline.store(min(signals.nextDeadline.load(ordering: .relaxed), now + Sandbox.readyPointGrace),
                                       ordering: .relaxed)
            hasPendingSyscall = true
            sandbox.scheduler.block(self, Wait(reason: "its first request (the ready point)", interruptible: false))
            return
        }
        dispatch(arguments)
    }

    /// Runs a syscall left pending: woken from a wait, or restored from a checkpoint.
    func resumeSyscall() {
        hasPendingSyscall = false
        dispatch(SyscallArguments(registers: registers))
    }

    private func dispatch(_ arguments: SyscallArguments) {
        let definition = sandbox.table[arguments.number]
        let trace = sandbox.traceSyscalls ? Strace.callText(arguments, definition: definition, task: self) : nil
        var result: Int64
        if let completion {
            self.completion = nil
            result = completion
        } else if let definition {
            do throws(Errno) {
                result = Int64(bitPattern: try definition.handler(self, arguments))
            } catch where error == Errno.blocked {
                hasPendingSyscall = true
                return
            } catch {
                result = -Int64(error.code)
            }
        } else {
            // Numbers no kernel has are counted together (as -1): a guest issuing every number
            // in turn must not grow the monitor's table without bound.
            let counted = (0..<Sandbox.syscallNumberLimit).contains(arguments.number) ? arguments.number : -1
            sandbox.unimplementedSyscalls[counted, default: 0] += 1
            result = -Int64(Errno.ENOSYS.code)
        }
        syscallDeadline = nil
        transferred = 0
        interruptedBySignal = false
        sigtimedwaitSet = nil
        interruptedSyscall = result == -Int64(Errno.EINTR.code) ? arguments.number : nil
        if let trace { Strace.emit(trace, result: result, arguments: arguments, definition: definition, task: self) }
        guard state != .exited else { return }
        if registersReplaced {
            registersReplaced = false  // rt_sigreturn restored every register
            return
        }
        var registers = self.registers
        registers.rax = UInt64(bitPattern: result)
        // Linux's syscall return leaves RCX = RIP and R11 = RFLAGS.
        registers.rcx = registers.rip
        registers.r11 = registers.rflags
        self.registers = registers
    }

    /// Parks the task until `wait` is satisfied; the syscall then runs again. A signal that is
    /// already deliverable ends an interruptible wait at once with EINTR.
    func block(_ wait: Wait) throws(Errno) -> Never {
        if wait.interruptible && (interruptedBySignal || hasDeliverableSignal) {
            interruptedBySignal = false
            throw Errno.EINTR
        }
        sandbox.scheduler.block(self, wait)
        throw Errno.blocked
    }

    /// `block` for a transfer that has made progress: a signal then ends the call with the bytes
    /// moved so far instead of EINTR (`transferred` is returned by the caller).
    func blockKeepingProgress(_ wait: Wait) throws(Errno) {
        do throws(Errno) {
            try block(wait)
        } catch where error == Errno.EINTR && transferred > 0 {
            return
        }
    }

    /// The host-monotonic deadline of a timeout of `nanoseconds` from the syscall's first attempt.
    func deadline(afterNanoseconds nanoseconds: UInt64) -> UInt64 {
        if let syscallDeadline { return syscallDeadline }
        let (sum, overflow) = Sandbox.monotonicNanoseconds().addingReportingOverflow(nanoseconds)
        let deadline = overflow ? UInt64.max : sum
        syscallDeadline = deadline
        return deadline
    }

    /// Sets the current syscall's deadline to an absolute host-monotonic time.
    func deadline(at hostMonotonic: UInt64) -> UInt64 {
        if let syscallDeadline { return syscallDeadline }
        syscallDeadline = hostMonotonic
        return hostMonotonic
    }

    /// Whether the current syscall's deadline has passed.
    var hasTimedOut: Bool { syscallDeadline.map { Sandbox.monotonicNanoseconds() >= $0 } ?? false }

    /// A CPU exception: a page fault the address space resolves, or a signal.
    func handleException(_ exception: ExceptionInfo) {
        if exception.vector == ExceptionInfo.pageFault {
            sandbox.pageFaultCount += 1
            let write = exception.errorCode & 2 != 0, fetch = exception.errorCode & 16 != 0
            if exception.errorCode & 1 == 0,
               space.handleFault(address: exception.faultAddress, write: write, execute: fetch) {
                return
            }
            let access = fetch ? "execute" : write ? "write" : "read"
            var info = SignalInformation(signal: SIGSEGV)
            info.code = exception.errorCode & 1 == 0 ? 1 : 2  // SEGV_MAPERR, SEGV_ACCERR
            info.address = exception.faultAddress
            forceSignal(info, reason: "invalid \(access) at address 0x\(hex(exception.faultAddress)) "
                        + "(rip 0x\(hex(exception.rip)))")
            return
        }
        let (signal, name): (Int32, String) = switch exception.vector {
        case 0: (SIGFPE, "divide error")
        case 1, 3: (SIGTRAP, "breakpoint")
        case 6: (SIGILL, "invalid opcode")
        case 16, 19: (SIGFPE, "floating-point exception")
        case 17: (SIGBUS, "alignment check")
        default: (SIGSEGV, "general protection fault (vector \(exception.vector))")
        }
        var info = SignalInformation(signal: signal)
        info.code = SignalInformation.kernelCode
        info.address = exception.rip
        forceSignal(info, reason: "\(name) at rip 0x\(hex(exception.rip))")
    }

    /// The program has initialized and now waits for its first request: its first process's main
    /// thread reads the sandbox's stdin (read(2), readv(2)), or waits for it alone without a
    /// timeout (poll(2), ppoll(2), as busybox's `read` does), and stdin has no data.
    private func isReadyPointRead(_ arguments: SyscallArguments) -> Bool {
        let read = 0, poll = 7, readv = 19, ppoll = 271
        guard group === sandbox.initialGroup, isLeader else { return false }
        switch arguments.number {
        case read, readv:
            guard arguments[0] == 0 else { return false }
        case poll, ppoll:
            let waitsForever = arguments.number == poll ? arguments.int32(2) < 0 : arguments[2] == 0
            guard waitsForever, arguments[1] == 1, let entry = try? space.read(arguments[0], count: 8) else { return false }
            let fd = entry.withUnsafeBytes { $0.load(as: Int32.self) }
            let events = entry.withUnsafeBytes { $0.load(fromByteOffset: 4, as: Int16.self) }
            guard fd == 0, events & Int16(POLLIN) != 0 else { return false }
        default:
            return false
        }
        guard let file = try? files.file(Int32(0)), file.standardStream == 0, case .host(let fd, _) = file.backing else { return false }
        var request = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return Glibc.poll(&request, 1, 0) == 0
    }
}

extension SyscallArguments {
    init(registers: kvm_regs) {
        self.init(number: Int(truncatingIfNeeded: registers.rax),
                  values: [registers.rdi, registers.rsi, registers.rdx, registers.r10, registers.r8, registers.r9])
    }
}

func hex(_ value: UInt64) -> String { String(value, radix: 16) }
