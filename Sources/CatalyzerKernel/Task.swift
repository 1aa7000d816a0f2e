import CKVM
import CatalyzerKVM
import Glibc

/// One thread of the guest: its CPU context, signal mask and pending signals, TID and what it waits
/// on. What it shares with other tasks is held by reference, shared exactly as `clone`'s flags say:
/// the address space and vCPU (`image`, CLONE_VM), the fd table (`files`, CLONE_FILES), cwd and
/// umask (`fsContext`, CLONE_FS), signal dispositions (`signalHandlers`, CLONE_SIGHAND) and the
/// thread group (`group`, CLONE_THREAD). Syscall handlers are methods on the calling task
/// (`Sys*.swift`).
///
/// Everything here is touched only by the sandbox's monitor thread (see `Scheduler`).
final class Task {
    enum State: Equatable {
        /// In the run queue, or running now.
        case runnable
        /// Parked in a syscall that re-runs when the task is woken (see `Wait`).
        case blocked
        case exited
    }

    unowned let sandbox: Sandbox
    private(set) var tid: Int32
    var group: ThreadGroup
    var image: ProcessImage
    var files: FileTable
    var fsContext: FilesystemContext
    var signalHandlers: SignalHandlers
    /// The user CPU context while the task is not loaded on its image's vCPU.
    var context: TaskContext
    var state = State.runnable
    /// The task name (`prctl(PR_SET_NAME)`), initially the executable's base name.
    var name: String

    /// Blocked signals (`rt_sigprocmask`); SIGKILL and SIGSTOP are never blocked.
    var signalMask: UInt64 = 0
    /// Signals sent to this thread and not yet delivered, with their `siginfo`.
    var pendingSignals = PendingSignals()
    /// The alternate signal stack (`sigaltstack`): base, size and flags.
    var alternateStack = AlternateStack()
    /// The mask to restore after a `rt_sigsuspend`/`ppoll`/`pselect6`/`epoll_pwait` that set a
    /// temporary one, once the signal that ended it has been delivered.
    var savedSignalMask: UInt64?
    /// `set_tid_address`/CLONE_CHILD_CLEARTID: zeroed and futex-woken when the thread exits.
    var clearChildTID: UInt64 = 0
    /// `set_robust_list`: the head of the thread's list of held robust futexes.
    var robustList: UInt64 = 0

    /// What a blocked task waits for; nil when it is not blocked.
    var wait: Wait?
    /// The trapped syscall has not completed: it runs (again) when the task next runs. Set while
    /// blocked, and for a restored task that was parked in a syscall at the checkpoint.
    var hasPendingSyscall = false
    /// The absolute host-monotonic deadline of the current syscall's timeout, kept across the
    /// re-runs of a blocking syscall so that a timeout is measured from the first attempt.
    var syscallDeadline: UInt64?
    /// Bytes a blocking write already moved before it had to wait for room (pipes, sockets).
    var transferred = 0
    /// Set when a signal interrupted the blocked syscall: it completes with EINTR (or restarts).
    var interruptedBySignal = false
    /// A result a waker handed over (a futex wake-up): the pending syscall returns it as is.
    var completion: Int64?
    /// The number of the syscall that just returned EINTR, for SA_RESTART (see `SignalDelivery`).
    var interruptedSyscall: Int?
    /// rt_sigreturn (and execve) set every register: the dispatcher must not write a result.
    var registersReplaced = false
    /// The bitset of a FUTEX_WAIT_BITSET in progress (all ones for FUTEX_WAIT).
    var futexBitset: UInt32 = .max
    /// The signals an rt_sigtimedwait in progress waits for.
    var sigtimedwaitSet: UInt64?
    /// Why a fault signal was raised, for the exit report if it ends the process.
    var faultReason: String?
    /// sched_yield: go to the back of the run queue after this syscall.
    var yieldRequested = false
    /// This thread's CPU time (CLOCK_THREAD_CPUTIME_ID, RUSAGE_THREAD).
    var cpuTime = CPUTime()

    init(sandbox: Sandbox, tid: Int32, group: ThreadGroup, image: ProcessImage, files: FileTable,
         fsContext: FilesystemContext, signalHandlers: SignalHandlers, context: TaskContext, name: String) {
        self.sandbox = sandbox
        self.tid = tid
        self.group = group
        self.image = image
        self.files = files
        self.fsContext = fsContext
        self.signalHandlers = signalHandlers
        self.context = context
        self.name = name
    }

    /// The thread that calls execve takes the thread group leader's TID (Linux does the same).
    func becomeLeader() { tid = group.pid }

    var isLeader: Bool { tid == group.pid }

    // MARK: CPU context, wherever it lives now

    /// Whether this task's registers are the ones in its image's vCPU.
    var isLoaded: Bool { image.loadedTask === self }

    var registers: kvm_regs {
        get { isLoaded ? image.cpu.registers : context.registers }
        set { if isLoaded { image.cpu.registers = newValue } else { context.registers = newValue } }
    }

    var fsBase: UInt64 {
        get { isLoaded ? image.cpu.fsBase : context.fsBase }
        set { if isLoaded { image.cpu.fsBase = newValue } else { context.fsBase = newValue } }
    }

    var gsBase: UInt64 {
        get { isLoaded ? image.cpu.gsBase : context.gsBase }
        set { if isLoaded { image.cpu.gsBase = newValue } else { context.gsBase = newValue } }
    }

    /// The FPU/SSE/AVX state, read from the vCPU if the task is loaded.
    func extendedState() throws -> [UInt8]? {
        isLoaded ? try image.cpu.vm.vcpu.xsaveArea() : context.extendedState
    }

    // MARK: shared state, as handlers see it

    var space: AddressSpace { image.space }
    var cpu: UserModeCPU { image.cpu }
    var filesystem: Filesystem { sandbox.filesystem }
    var time: GuestTime { sandbox.time }
    var memorySize: Int { sandbox.memorySize }
    var exitRequester: ExitRequester { sandbox.exitRequester }
    var pid: Int32 { group.pid }
    var parentPID: Int32 { group.parentPID }
    var credentials: Credentials {
        get { group.credentials }
        set { group.credentials = newValue }
    }
    var executablePath: String { image.executablePath }

    var workingDirectory: String {
        get { fsContext.workingDirectory }
        set { fsContext.workingDirectory = newValue }
    }

    var fileCreationMask: UInt32 {
        get { fsContext.fileCreationMask }
        set { fsContext.fileCreationMask = newValue }
    }

    var milestones: Sandbox.Milestones {
        get { sandbox.milestones }
        set { sandbox.milestones = newValue }
    }

    /// Resolves a guest path relative to `dirfd` (or the cwd for AT_FDCWD) into an absolute guest path.
    func absolutePath(_ path: String, relativeTo dirfd: Int32) throws(Errno) -> String {
        if path.hasPrefix("/") { return path }
        if dirfd == AT_FDCWD { return GuestPath.join(workingDirectory, path) }
        let directory = try files.file(dirfd)
        if !path.isEmpty && !directory.isDirectory { throw Errno.ENOTDIR }
        return GuestPath.join(directory.guestPath, path)
    }

    static func name(ofExecutable path: String) -> String {
        String(GuestPath.components(path).last?.prefix(15) ?? "")
    }
}

/// A task's user-mode CPU state while it is not on the vCPU.
struct TaskContext {
    var registers = kvm_regs()
    var fsBase: UInt64 = 0
    var gsBase: UInt64 = 0
    /// The XSAVE area; nil keeps whatever the vCPU holds (a fresh image's initial state).
    var extendedState: [UInt8]?
}

/// `sigaltstack`'s `stack_t`.
struct AlternateStack: Equatable {
    var base: UInt64 = 0
    var size: UInt64 = 0
    /// SS_DISABLE (2) when there is none.
    var flags: Int32 = 2
    static let disabled: Int32 = 2, onStack: Int32 = 1

    func contains(_ address: UInt64) -> Bool {
        flags & Self.disabled == 0 && address > base && address <= base &+ size
    }
}

/// cwd and umask: one per process unless `clone(CLONE_FS)` shares them.
final class FilesystemContext {
    var workingDirectory: String
    var fileCreationMask: UInt32

    init(workingDirectory: String = "/", fileCreationMask: UInt32 = 0o022) {
        self.workingDirectory = workingDirectory
        self.fileCreationMask = fileCreationMask
    }

    func copy() -> FilesystemContext {
        FilesystemContext(workingDirectory: workingDirectory, fileCreationMask: fileCreationMask)
    }
}
