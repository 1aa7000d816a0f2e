import CKVM
import Glibc
import Synchronization

/// Why `VCPU.run()` returned.
public enum VCPUExit: Equatable {
    /// The guest wrote to an I/O port (`out`): the trap stubs exit this way.
    case portWrite(port: UInt16)
    /// The guest accessed guest-physical memory outside every memory slot (the syscall doorbell).
    case mmio(address: UInt64, isWrite: Bool)
    case halt
    /// A triple fault or similar: the guest is unrecoverable.
    case shutdown
    /// `KVM_RUN` was interrupted by `VCPU.requestExit()`.
    case interrupted
    case internalError(suberror: UInt32)
    case failEntry(reason: UInt64)
    case other(reason: UInt32)
}

/// One virtual CPU: its fd, its `kvm_run` page and the register ioctls.
public final class VCPU {
    public let fd: Int32
    private let runPage: UnsafeMutablePointer<kvm_run>
    private let runSize: Int
    /// Lets another thread kick this vCPU out of `KVM_RUN` (see `requestExit`).
    public let exitRequester: ExitRequester
    /// Whether KVM_SET_CPUID2 was done (always with the host's supported CPUID).
    private var cpuidSet = false

    /// `exitRequester` is shared when several vCPUs make up one sandbox (a forked process runs in its
    /// own VM but must stop with the sandbox); nil creates a new one.
    init(vmFD: Int32, id: UInt, runSize: Int, exitRequester: ExitRequester?) throws {
        let fd = try check("KVM_CREATE_VCPU") { ckvm_create_vcpu(vmFD, id) }
        guard let mapping = mmap(nil, runSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapping != MAP_FAILED else {
            let error = KVMError("mmap kvm_run")
            close(fd)
            throw error
        }
        self.fd = fd
        self.runSize = runSize
        self.runPage = mapping.assumingMemoryBound(to: kvm_run.self)
        self.exitRequester = exitRequester ?? ExitRequester()
        self.exitRequester.attach(runPage: mapping)
    }

    deinit {
        exitRequester.detach(runPage: runPage)
        munmap(runPage, runSize)
        close(fd)
    }

    /// Whether registers travel in the `kvm_run` page (KVM_CAP_SYNC_REGS) instead of by ioctl: KVM
    /// stores them there on every exit and loads the staged ones on entry, saving up to four ioctls
    /// per trap.
    public private(set) var synchronizesRegisters = false

    /// Turns on register synchronization through `kvm_run` if KVM supports it for REGS and SREGS.
    public func enableRegisterSynchronization(kvm: KVM) {
        let wanted = UInt64(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS)
        guard UInt64(ckvm_check_extension(kvm.fd, KVM_CAP_SYNC_REGS)) & wanted == wanted else { return }
        ckvm_run_set_sync_valid(runPage, wanted)
        synchronizesRegisters = true
    }

    /// Registers for the next entry: staged in `kvm_run` when synchronizing, else set by ioctl now.
    public func stageRegisters(_ regs: kvm_regs) throws {
        guard synchronizesRegisters else { return try setRegisters(regs) }
        ckvm_run_sync_regs(runPage).pointee = regs
        pendingSyncMask |= UInt64(KVM_SYNC_X86_REGS)
    }

    public func stageSpecialRegisters(_ sregs: kvm_sregs) throws {
        guard synchronizesRegisters else { return try setSpecialRegisters(sregs) }
        ckvm_run_sync_sregs(runPage).pointee = sregs
        pendingSyncMask |= UInt64(KVM_SYNC_X86_SREGS)
    }

    /// Registers as of the last exit.
    public func exitRegisters() throws -> kvm_regs {
        synchronizesRegisters ? ckvm_run_sync_regs(runPage).pointee : try registers()
    }

    public func exitSpecialRegisters() throws -> kvm_sregs {
        synchronizesRegisters ? ckvm_run_sync_sregs(runPage).pointee : try specialRegisters()
    }

    private var pendingSyncMask: UInt64 = 0

    /// Runs the guest until its next exit to the monitor.
    public func run() throws -> VCPUExit {
        if exitRequester.isExitRequested { return .interrupted }
        if pendingSyncMask != 0 {
            ckvm_run_set_sync_dirty(runPage, pendingSyncMask)
            pendingSyncMask = 0
        }
        exitRequester.running(runPage: runPage)
        if ckvm_run(fd) != 0 {
            if errno == EINTR || errno == EAGAIN {
                // A preemption kick (see `ExitRequester.preempt`) is one-shot; an exit request stays set.
                ckvm_run_set_immediate_exit(runPage, 0)
                if exitRequester.isExitRequested { ckvm_run_set_immediate_exit(runPage, 1) }
                return .interrupted
            }
            throw KVMError("KVM_RUN")
        }
        let reason = ckvm_run_exit_reason(runPage)
        switch Int32(reason) {
        case KVM_EXIT_IO:
            return .portWrite(port: ckvm_run_io_port(runPage))
        case KVM_EXIT_MMIO:
            return .mmio(address: ckvm_run_mmio_address(runPage), isWrite: ckvm_run_mmio_is_write(runPage) != 0)
        case KVM_EXIT_HLT: return .halt
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_INTR: return .interrupted
        case KVM_EXIT_INTERNAL_ERROR: return .internalError(suberror: ckvm_run_internal_suberror(runPage))
        case KVM_EXIT_FAIL_ENTRY: return .failEntry(reason: ckvm_run_fail_entry_reason(runPage))
        default: return .other(reason: reason)
        }
    }

    public func registers() throws -> kvm_regs {
        var regs = kvm_regs()
        try check("KVM_GET_REGS") { ckvm_get_regs(fd, &regs) }
        return regs
    }

    public func setRegisters(_ regs: kvm_regs) throws {
        var regs = regs
        try check("KVM_SET_REGS") { ckvm_set_regs(fd, &regs) }
    }

    public func specialRegisters() throws -> kvm_sregs {
        var sregs = kvm_sregs()
        try check("KVM_GET_SREGS") { ckvm_get_sregs(fd, &sregs) }
        return sregs
    }

    public func setSpecialRegisters(_ sregs: kvm_sregs) throws {
        var sregs = sregs
        try check("KVM_SET_SREGS") { ckvm_set_sregs(fd, &sregs) }
    }

    public func setMSR(_ index: UInt32, _ value: UInt64) throws {
        try check("KVM_SET_MSRS \(String(index, radix: 16))") { ckvm_set_msr(fd, index, value) }
    }

    public func msr(_ index: UInt32) throws -> UInt64 {
        var value: UInt64 = 0
        try check("KVM_GET_MSRS \(String(index, radix: 16))") { ckvm_get_msr(fd, index, &value) }
        return value
    }

    public func setXCR0(_ value: UInt64) throws {
        try check("KVM_SET_XCRS") { ckvm_set_xcr0(fd, value) }
    }

    public func xcr0() throws -> UInt64 {
        var value: UInt64 = 0
        try check("KVM_GET_XCRS") { ckvm_get_xcr0(fd, &value) }
        return value
    }

    /// The FPU, SSE and AVX state as the XSAVE area KVM keeps for the vCPU.
    public func xsaveArea() throws -> [UInt8] {
        var area = [UInt8](repeating: 0, count: Int(ckvm_xsave_size))
        try area.withUnsafeMutableBytes { buffer in
            _ = try check("KVM_GET_XSAVE") { ckvm_get_xsave(fd, buffer.baseAddress) }
        }
        return area
    }

    public func setXSAVEArea(_ area: [UInt8]) throws {
        guard area.count == Int(ckvm_xsave_size) else {
            throw KVMError("KVM_SET_XSAVE with a \(area.count)-byte area", errno: EINVAL)
        }
        try area.withUnsafeBytes { buffer in
            _ = try check("KVM_SET_XSAVE") { ckvm_set_xsave(fd, buffer.baseAddress) }
        }
    }

    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws {
        // KVM refuses KVM_SET_CPUID2 once the vCPU has run unless nothing changes; a VM reused
        // for another sandbox of the same image keeps the CPUID it was given.
        if cpuidSet { return }
        _ = try entries.withUnsafeBufferPointer { buffer in
            try check("KVM_SET_CPUID2") { ckvm_set_cpuid2(fd, buffer.baseAddress, UInt32(buffer.count)) }
        }
        cpuidSet = true
    }
}

/// Signal handler for the vCPU kick signal: it only has to exist so `KVM_RUN` returns EINTR.
private func ignoreKickSignal(_: Int32) {}

/// Stops a sandbox's vCPUs from another thread: for timeouts (`requestExit`, which stays set) and
/// for preemption (`preempt`, one-shot). Either sets `immediate_exit` in a `kvm_run` page and signals
/// the thread that runs the guest, so `KVM_RUN` or a blocking host call made for the guest returns
/// EINTR.
public final class ExitRequester: Sendable {
    /// SIGUSR2 is reserved for kicking the guest thread out of `KVM_RUN` and blocking host calls.
    public static let kickSignal = SIGUSR2

    private struct Target {
        /// Addresses of the attached `kvm_run` pages (integers, so they are Sendable).
        var runPages: Set<UInt> = []
        /// The thread serving the guest, while it does.
        var thread: pthread_t?
        /// The `kvm_run` page of the vCPU that entered the guest last: the one `preempt` kicks.
        var running: UInt?
    }

    private let target = Mutex(Target())
    private let requested = Atomic<Bool>(false)
    /// `Target.running` as last set by the guest thread, read without the lock by that thread.
    private let lastRunning = Atomic<UInt>(0)

    public init() {
        ExitRequester.installKickHandler()
    }

    public var isExitRequested: Bool { requested.load(ordering: .acquiring) }

    /// Asks the guest to stop as soon as possible; its vCPUs then report `.interrupted`.
    public func requestExit() {
        requested.store(true, ordering: .releasing)
        target.withLock { target in
            for address in target.runPages {
                if let page = UnsafeMutablePointer<kvm_run>(bitPattern: address) { ckvm_run_set_immediate_exit(page, 1) }
            }
            if let thread = target.thread { pthread_kill(thread, ExitRequester.kickSignal) }
        }
    }

    /// Clears a request, for a VM that will run another sandbox: only once the guest thread has
    /// returned and nothing else will call `requestExit` for the sandbox that is over.
    public func rearm() {
        requested.store(false, ordering: .releasing)
        target.withLock { target in
            for address in target.runPages {
                if let page = UnsafeMutablePointer<kvm_run>(bitPattern: address) { ckvm_run_set_immediate_exit(page, 0) }
            }
        }
    }

    /// Marks the calling thread as the one serving the guest until `unbindThread()`, and unblocks the
    /// kick signal in it (thread pools such as Dispatch's start their threads with signals blocked).
    public func bindCurrentThread() {
        var kick = sigset_t()
        sigemptyset(&kick)
        sigaddset(&kick, ExitRequester.kickSignal)
        pthread_sigmask(SIG_UNBLOCK, &kick, nil)
        target.withLock { $0.thread = pthread_self() }
    }

    /// Kicks the vCPU that runs (or last ran) out of the guest once, so the monitor can switch
    /// tasks: a one-shot `immediate_exit`, cleared by `VCPU.run` when it returns `.interrupted`.
    public func preempt() {
        target.withLock { target in
            guard let running = target.running, target.runPages.contains(running),
                  let page = UnsafeMutablePointer<kvm_run>(bitPattern: running) else { return }
            ckvm_run_set_immediate_exit(page, 1)
            if let thread = target.thread { pthread_kill(thread, ExitRequester.kickSignal) }
        }
    }

    /// Notes the vCPU about to enter the guest (cheap when it is the same as last time).
    func running(runPage: UnsafeMutablePointer<kvm_run>) {
        let address = UInt(bitPattern: runPage)
        if lastRunning.load(ordering: .relaxed) == address { return }
        lastRunning.store(address, ordering: .relaxed)
        target.withLock { $0.running = address }
    }

    public func unbindThread() {
        target.withLock { $0.thread = nil }
    }

    /// A vCPU's `kvm_run` page joins: a request sets its `immediate_exit` (also if already requested).
    func attach(runPage: UnsafeMutableRawPointer) {
        let address = UInt(bitPattern: runPage)
        target.withLock { _ = $0.runPages.insert(address) }
        if isExitRequested { ckvm_run_set_immediate_exit(runPage.assumingMemoryBound(to: kvm_run.self), 1) }
    }

    /// Called when a vCPU is destroyed: later requests must not touch its `kvm_run` page.
    func detach(runPage: UnsafeMutableRawPointer) {
        let address = UInt(bitPattern: runPage)
        target.withLock {
            _ = $0.runPages.remove(address)
            if $0.running == address { $0.running = nil }
        }
        lastRunning.compareExchange(expected: address, desired: 0, ordering: .relaxed)
    }

    private static let installed = Mutex(false)

    private static func installKickHandler() {
        installed.withLock { installed in
            guard !installed else { return }
            var action = sigaction()
            action.__sigaction_handler.sa_handler = ignoreKickSignal
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0  // no SA_RESTART: blocking calls must return EINTR
            sigaction(kickSignal, &action, nil)
            installed = true
        }
    }
}
