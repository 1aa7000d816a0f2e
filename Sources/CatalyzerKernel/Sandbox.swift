import CKVM
import CatalyzerKVM
import Dispatch
import Glibc
import Synchronization

/// A sandbox: the monitor acting as the kernel of one function instance. It holds what its tasks
/// share — the KVM handle, the rootfs view and /tmp, the task and process tables, the futex table,
/// the limits, the scheduler and the statistics — and runs every task on the calling thread until
/// the sandbox's first process exits, is killed, deadlocks or is stopped.
public final class Sandbox {
    let kvm: KVM
    /// Guest RAM of each process, in bytes.
    let memorySize: Int
    /// The rootfs view and /tmp, shared by all processes (like a mount namespace).
    let filesystem: Filesystem
    /// How the guest's clocks relate to the host's.
    var time = GuestTime.host
    /// Lets another thread stop the sandbox (timeouts) and preempt its vCPUs.
    public let exitRequester: ExitRequester
    let limits: SandboxLimits
    /// What the sandbox makes the host hold — guest RAM of all its processes, /tmp, pipe and
    /// socket buffers — bounded together by `memorySize` (see `MemoryAccount`).
    let memoryAccount: MemoryAccount
    let scheduler = Scheduler()
    let futexes = FutexTable()
    /// Unix sockets bound to abstract names (a leading NUL byte), the sandbox's own namespace.
    let abstractSockets = AbstractSocketNames()
    /// What uname reports as the node and domain name (sethostname changes only the sandbox's).
    var hostName = Array("catalyzer".utf8)
    var domainName = Array("(none)".utf8)
    /// IPv4/IPv6 ports of the sandbox's own loopback.
    let inetPorts = InetPortTable()
    /// The way out: the network policy and the host sockets held for the guest.
    let network: SandboxNetwork
    /// Live tasks by TID and processes by PID (zombies included until reaped).
    var tasks: [Int32: Task] = [:]
    var groups: [Int32: ThreadGroup] = [:]
    var nextID: Int32 = 1
    /// The sandbox's first process: when it ends, the sandbox ends.
    var initialGroup: ThreadGroup!
    /// Set when the sandbox is over; `run()` returns it.
    var exitStatus: SandboxExit?
    /// Signals and processes to start from outside (`hostInbox()` makes it): while there is
    /// one, a sandbox whose tasks all wait, some of them for a signal, is not deadlocked.
    private(set) var inbox: HostInbox?

    /// The inbox through which other threads send the first process signals and start
    /// processes, made on first use.
    public func hostInbox() -> HostInbox {
        if let inbox { return inbox }
        let made = HostInbox(exitRequester: exitRequester)
        inbox = made
        scheduler.hostInboxDescriptor = made.wakeDescriptor
        return made
    }

    let traceSyscalls: Bool
    /// Where `--strace` lines go: the host fd behind the guest's stderr.
    let traceFD: Int32
    var table: [Int: SyscallDefinition] { SyscallTable.shared }

    /// Whether the first read of an empty stdin by the first process's main thread is the ready
    /// point (checkpoint).
    let stopsAtReadyPoint: Bool
    /// The task parked at the ready point; the sandbox stops there once no other task can run.
    var readyPointTask: Task?
    /// Host-monotonic time the ready point was reached: other tasks get `readyPointGrace` to block.
    var readyPointReached: UInt64?
    static let readyPointGrace: UInt64 = 2_000_000_000

    /// Unimplemented syscall numbers the program tried, with counts (each got ENOSYS); numbers
    /// from `syscallNumberLimit` up are counted together as -1.
    public internal(set) var unimplementedSyscalls: [Int: Int] = [:]
    static let syscallNumberLimit = 1024
    public internal(set) var syscallCount = 0
    /// User page faults that reached the monitor (resolved or fatal); KVM's shadow-paging fills
    /// that never leave the guest are not counted.
    public internal(set) var pageFaultCount = 0
    /// When the sandbox first did what `invoke --timings` reports.
    public internal(set) var milestones = Milestones()

    /// The milestones other threads may read while the sandbox runs (a daemon answering as soon
    /// as the response is out, before the sandbox has ended).
    public let progress = SandboxProgress()

    /// CLOCK_MONOTONIC nanoseconds of first events, nil until they happen.
    public struct Milestones: Sendable {
        /// Just before a vCPU first entered the guest.
        public var firstGuestEntry: UInt64?
        /// Just after the program's first write to stdout returned.
        public var firstStandardOutput: UInt64?
    }

    /// Set by the owner of guest memory that can fail under the monitor (a private mapping of a
    /// file on a FUSE mount whose daemon can die): the offset of a page the monitor could not
    /// read or write, which now holds zeros. Checked before every entry into the guest, so the
    /// program never runs again on that memory: the run ends with `GuestMemoryUnreadable`.
    public var unreadableMemory: (() -> Int?)?

    /// Guest memory failed under the monitor (see `unreadableMemory`): the sandbox was stopped.
    public struct GuestMemoryUnreadable: Error, Equatable {
        /// Offset in guest memory of the first page that failed.
        public let offset: Int
    }

    /// Guest RAM in use by every live process (program pages and page tables), in bytes; once
    /// the sandbox's first process has exited, what it used when it did.
    public var memoryInUse: Int {
        var images: [ObjectIdentifier: Int] = [:]
        for task in tasks.values { images[ObjectIdentifier(task.image)] = task.image.space.allocator.usedBytes }
        return images.isEmpty ? memoryInUseAtExit : images.values.reduce(0, +)
    }
    private var memoryInUseAtExit = 0

    /// The end of what the page allocators of the processes living in `memory` have handed out:
    /// the monitor writes no page of RAM above it. nil when no live task uses `memory`.
    public func allocationEnd(in memory: GuestMemory) -> UInt64? {
        tasks.values.filter { $0.image.memory === memory }.map { $0.image.space.allocator.state.nextUnused }.max()
    }

    /// The guest memory a checkpoint stores: the first process's.
    public var guestMemory: GuestMemory { initialGroup.leader!.image.memory }

    /// KVM's counters of the first process's vCPU (shadow-paging faults, exits), readable after
    /// the process is gone; nil where the kernel has no binary statistics.
    public func initialVCPUStatistics() -> KVMStatisticsReader? {
        initialGroup.leader.flatMap { KVMStatisticsReader(vcpu: $0.image.cpu.vm.vcpu) }
    }

    /// Creates the VM, loads the program and builds its initial stack; the program starts on `run()`.
    public init(configuration: SandboxConfiguration, kvm: KVM? = nil) throws {
        self.kvm = try kvm ?? KVM()
        memorySize = configuration.memorySize
        exitRequester = ExitRequester()
        limits = configuration.limits
        memoryAccount = MemoryAccount(limit: configuration.memorySize)
        filesystem = try Filesystem(rootDirectory: configuration.rootDirectory, tmpCapacity: configuration.memorySize)
        network = SandboxNetwork(policy: configuration.network)
        filesystem.networkFiles = network.generatedFiles()
        filesystem.addMounts(configuration.mounts)
        if configuration.writableRoot { try filesystem.enableWritableRoot() }
        if let name = configuration.hostName { hostName = Array(name.utf8.prefix(64)) }
        traceSyscalls = configuration.traceSyscalls
        traceFD = configuration.standardStreams.count > 2 ? configuration.standardStreams[2] : 2
        stopsAtReadyPoint = configuration.stopsAtReadyPoint
        if stopsAtReadyPoint { filesystem.dependencies = RootfsDependencies() }
        let path = GuestPath.normalize(configuration.programPath)
        let credentials = Credentials(configuration.user)
        let (image, context) = try ProcessImage.load(kvm: self.kvm, memorySize: memorySize, account: memoryAccount,
                                                     exitRequester: exitRequester,
                                                     filesystem: filesystem, path: path, arguments: configuration.arguments,
                                                     environment: configuration.environment, credentials: credentials)
        filesystem.executablePath = path
        filesystem.tmp.account = memoryAccount
        let files = FileTable()
        try files.installStandardStreams(configuration.standardStreams)
        let group = ThreadGroup(pid: allocateID(), parentPID: 0, credentials: credentials)
        initialGroup = group
        let task = Task(sandbox: self, tid: group.pid, group: group, image: image, files: files,
                        fsContext: FilesystemContext(workingDirectory: GuestPath.normalize(configuration.workingDirectory)),
                        signalHandlers: SignalHandlers(), context: context, name: Task.name(ofExecutable: path))
        register(task, in: group)
    }

    /// A sandbox rebuilt from checkpointed parts (see `Sandbox+Checkpoint.swift`).
    init(kvm: KVM, memorySize: Int, filesystem: Filesystem, time: GuestTime, exitRequester: ExitRequester,
         limits: SandboxLimits, traceSyscalls: Bool, traceFD: Int32, network: NetworkPolicy) {
        self.kvm = kvm
        self.network = SandboxNetwork(policy: network)
        filesystem.networkFiles = self.network.generatedFiles()
        self.memorySize = memorySize
        self.filesystem = filesystem
        self.time = time
        self.exitRequester = exitRequester
        self.limits = limits
        memoryAccount = MemoryAccount(limit: memorySize)
        self.traceSyscalls = traceSyscalls
        self.traceFD = traceFD
        stopsAtReadyPoint = false
        filesystem.tmp.account = memoryAccount
    }

    /// Ends the sandbox with `status` (unless it has already ended): every task stops where it
    /// is, and `run()` returns `status`. For work posted with `HostInbox.post(pausedWork:)`,
    /// such as a checkpoint that stops the container it saved.
    public func end(_ status: SandboxExit) {
        if exitStatus == nil { exitStatus = status }
    }

    /// Starts a process posted from outside (`HostInbox.post(_:)`) and tells its poster.
    private func start(_ launch: ProcessLaunch) {
        var streams = launch.standardStreams
        do {
            guard taskCount < limits.maximumTasks else { throw ProcessLaunchError.taskLimit(limits.maximumTasks) }
            let path = GuestPath.normalize(launch.programPath)
            let credentials = Credentials(launch.user)
            let (image, context) = try ProcessImage.load(kvm: kvm, memorySize: memorySize, account: memoryAccount, exitRequester: exitRequester,
                                                         filesystem: filesystem, path: path, arguments: launch.arguments,
                                                         environment: launch.environment, credentials: credentials)
            let files = FileTable()
            try files.installStandardStreams(streams, owned: true)
            streams = []
            let group = ThreadGroup(pid: allocateID(), parentPID: 0, credentials: credentials)
            group.exitObserver = launch.exited
            let task = Task(sandbox: self, tid: group.pid, group: group, image: image, files: files,
                            fsContext: FilesystemContext(workingDirectory: GuestPath.normalize(launch.workingDirectory)),
                            signalHandlers: SignalHandlers(), context: context, name: Task.name(ofExecutable: path))
            register(task, in: group)
            launch.started(.success(group.pid))
        } catch {
            for fd in streams { close(fd) }
            launch.started(.failure(error))
        }
    }

    /// Tasks and processes refer to each other (a task to its process, a process to its tasks),
    /// and wait queues inside files refer to tasks: untie them all, so that everything the program
    /// held (VMs, memory, host fds) is released with the sandbox and no file's last close wakes a
    /// task of a sandbox that is gone.
    deinit {
        for task in Array(scheduler.blocked.values) { scheduler.detach(task) }
        for task in tasks.values { task.state = .exited }
        for group in groups.values { group.tasks.removeAll() }
        tasks.removeAll()
        readyPointTask = nil
    }

    func allocateID() -> Int32 {
        while tasks[nextID] != nil || groups[nextID] != nil { nextID = nextID == Int32.max ? 2 : nextID + 1 }
        defer { nextID = nextID == Int32.max ? 2 : nextID + 1 }
        return nextID
    }

    /// Adds a new task to its process and the run queue.
    func register(_ task: Task, in group: ThreadGroup) {
        tasks[task.tid] = task
        groups[group.pid] = group
        group.tasks.append(task)
        task.state = .runnable
        scheduler.enqueue(task)
    }

    /// Threads plus processes, for `--max-tasks`.
    var taskCount: Int { tasks.count }

    // MARK: running

    /// Runs the program as `run()` does, stopping it after `timeoutSeconds` (`.timedOut`). The
    /// timer has a queue of its own: it must fire even when every pool thread is busy.
    public func run(timeoutSeconds: Double) throws -> SandboxExit {
        let exitRequester = exitRequester
        // The VM may serve another sandbox once this one is over (a pooled fork): a timer that
        // fires as the run ends must not stop the next one, so the handler checks, under the
        // same lock the end of the run takes, that the run is still on.
        let running = TimeoutGuard()
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "catalyzer-sandbox-timeout"))
        timer.schedule(deadline: .now() + timeoutSeconds)
        timer.setEventHandler { running.ifRunning { exitRequester.requestExit() } }
        timer.resume()
        defer {
            running.end()
            timer.cancel()
        }
        return try run()
    }

    /// Runs the sandbox's tasks until its first process exits, is killed, or `exitRequester` stops it.
    public func run() throws -> SandboxExit {
        exitRequester.bindCurrentThread()
        defer { exitRequester.unbindThread() }
        let ticker = PreemptionTicker(signals: scheduler.signals, exitRequester: exitRequester)
        defer { ticker.stop() }
        while true {
            if let exitStatus { return exitStatus }
            if exitRequester.isExitRequested { return .timedOut }
            if let inbox, inbox.hasPending, let group = initialGroup {
                let (signals, launches, work) = inbox.take()
                for signal in signals { send(SignalInformation(signal: signal), toProcess: group) }
                for launch in launches { start(launch) }
                for item in work where exitStatus == nil { item(self) }
                continue
            }
            let now = Self.monotonicNanoseconds()
            collectDueEvents(now: now)
            if let task = scheduler.next() {
                if readyPointGraceExpired(running: task) { continue }
                try runSlice(task)
                continue
            }
            if readyPointTask != nil {
                exitStatus = .readyPoint
                continue
            }
            let deadline = nextDueTime
            // Tasks that wait only for a signal can still get one from outside (`hostInbox()`).
            let signalCanCome = inbox != nil && scheduler.hasSignalWaiters
            let processCanCome = inbox?.launchesExpected ?? false
            guard deadline != nil || scheduler.hasHostWaiters || signalCanCome || processCanCome else {
                exitStatus = .killed(signal: SIGKILL, reason: "deadlock: every task is blocked and nothing can wake "
                                     + "them: " + blockedTaskReport())
                continue
            }
            scheduler.pollHost(timeoutNanoseconds: deadline.map { $0 > now ? $0 - now : 0 })
        }
    }

    /// Fires due timers and wakes the tasks whose deadline passed or whose host fd is ready.
    private func collectDueEvents(now: UInt64) {
        timers.fire(now: now, sandbox: self)
        scheduler.expireDeadlines(now: now)
        if scheduler.hasHostWaiters { scheduler.pollHost(timeoutNanoseconds: 0) }
    }

    /// Tells the ticker when the running slice must end at the latest: when something is due, or
    /// when the running process's CPU-time timer would fire if it kept the CPU.
    func publishNextDueTime(running task: Task) {
        let group = task.group
        let cpuTimers = [group.virtualTimer, group.profilingTimer].filter(\.isArmed).map(\.value).min()
            .map { Self.monotonicNanoseconds() &+ $0 }
        let due = [nextDueTime, cpuTimers].compactMap { $0 }.min()
        scheduler.signals.nextDeadline.store(due ?? .max, ordering: .relaxed)
    }

    /// The next time something is due without an event: a blocked task's deadline, a timer, the
    /// end of the ready point's grace period.
    var nextDueTime: UInt64? {
        [scheduler.nextDeadline, timers.nextDeadline, readyPointReached.map { $0 + Self.readyPointGrace }].compactMap { $0 }.min()
    }

    /// Whether the ready point was reached and `task` still runs after the grace period; if so
    /// the sandbox ends with an error naming it (a checkpoint needs every other task parked).
    private func readyPointGraceExpired(running task: Task) -> Bool {
        guard let reached = readyPointReached, Self.monotonicNanoseconds() - reached > Self.readyPointGrace else { return false }
        exitStatus = .killed(signal: SIGKILL, reason: "checkpoint: the program reached its ready point "
            + "(its main thread reads stdin) but task \(task.tid) (\(task.name)) was still running "
            + "\(Self.readyPointGrace / 1_000_000_000) s later; every other thread must be blocked "
            + "(waiting on a lock, a queue, a sleep or a pipe) for a checkpoint")
        return true
    }

    /// "tid 1 (python3): futex 0x…; tid 2 (python3): read from pipe" for a deadlock report.
    func blockedTaskReport() -> String {
        tasks.values.sorted { $0.tid < $1.tid }.map { task in
            "tid \(task.tid) (\(task.name)) waits on \(task.wait?.reason ?? String(describing: task.state))"
        }.joined(separator: "; ")
    }

    /// Runs `task` until it blocks, exits, yields or its slice ends.
    private func runSlice(_ task: Task) throws {
        try task.image.load(task)
        filesystem.executablePath = task.image.executablePath  // what /proc/self/exe names
        filesystem.callingTask = task  // whose /proc/self
        let signals = scheduler.signals
        signals.othersRunnable.store(scheduler.hasRunnable, ordering: .relaxed)
        signals.hostWaiters.store(scheduler.hasHostWaiters, ordering: .relaxed)
        publishNextDueTime(running: task)
        signals.preemptRequested.store(false, ordering: .relaxed)
        signals.sliceNumber.add(1, ordering: .relaxed)
        signals.inGuest.store(true, ordering: .relaxed)
        defer { signals.inGuest.store(false, ordering: .relaxed) }

        if task.hasPendingSyscall { task.resumeSyscall() }
        while task.state == .runnable && exitStatus == nil {
            task.deliverPendingSignals()
            guard task.state == .runnable, exitStatus == nil else { return }
            let image = task.image
            try image.load(task)  // after execve: the new image
            image.clock.refresh(space: image.space, time: time)
            if milestones.firstGuestEntry == nil {
                let now = Self.monotonicNanoseconds()
                milestones.firstGuestEntry = now
                progress.firstGuestEntry.store(now, ordering: .releasing)
            }
            if let offset = unreadableMemory?() { throw GuestMemoryUnreadable(offset: offset) }
            let entered = Self.monotonicNanoseconds()
            let exit = try image.cpu.run()
            let exited = Self.monotonicNanoseconds()
            chargeCPUTime(task, user: exited &- entered, system: 0)  // before the syscall that may read it
            defer { chargeCPUTime(task, user: 0, system: Self.monotonicNanoseconds() &- exited) }
            switch exit {
            case .syscall:
                task.serveSyscall()
            case .exception(let exception):
                task.handleException(exception)
            case .interrupted:
                if exitRequester.isExitRequested { return }
            case .fatal(let reason):
                exitGroup(task.group, status: .killed(signal: SIGKILL, reason: "sandbox failure: \(reason)"))
                return
            }
            if task.state == .runnable && task.yieldRequested {
                task.yieldRequested = false
                if scheduler.hasRunnable {
                    scheduler.enqueue(task)
                    return
                }
            }
            if signals.preemptRequested.exchange(false, ordering: .acquiring) && task.state == .runnable {
                collectDueEvents(now: Self.monotonicNanoseconds())
                if scheduler.hasRunnable {
                    scheduler.enqueue(task)
                    return
                }
                if readyPointGraceExpired(running: task) { return }
                publishNextDueTime(running: task)
                signals.sliceNumber.add(1, ordering: .relaxed)
            }
        }
    }

    /// Adds a VM entry's time to the task and its process, and runs the process's CPU-time timers.
    private func chargeCPUTime(_ task: Task, user: UInt64, system: UInt64) {
        task.cpuTime.userNanoseconds &+= user
        task.cpuTime.systemNanoseconds &+= system
        let group = task.group
        group.cpuTime.userNanoseconds &+= user
        group.cpuTime.systemNanoseconds &+= system
        var fired = false
        if group.virtualTimer.consume(user) {
            sendTimerSignal(SIGVTALRM, to: group)
            fired = true
        }
        if group.profilingTimer.consume(user &+ system) {
            sendTimerSignal(SIGPROF, to: group)
            fired = true
        }
        if fired { publishNextDueTime(running: task) }  // the reloaded timer's next expiry
    }

    private func sendTimerSignal(_ signal: Int32, to group: ThreadGroup) {
        var info = SignalInformation(signal: signal)
        info.code = SignalInformation.kernelCode
        send(info, toProcess: group)
    }

    /// The sandbox's timers (ITIMER_REAL, POSIX timers, timerfds with waiters).
    lazy var timers = TimerList(signals: scheduler.signals)

    /// CLOCK_MONOTONIC in nanoseconds: the clock of `Milestones`, deadlines and timers.
    public static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    // MARK: ending tasks and processes

    /// Ends one thread: exit(2), or part of its process's death.
    func exitTask(_ task: Task) {
        guard task.state != .exited else { return }
        scheduler.detach(task)
        task.state = .exited
        task.hasPendingSyscall = false
        let group = task.group
        if task.clearChildTID != 0 && group.exitStatus == nil {
            // The thread library's join: zero the TID word and wake one waiter.
            if (try? task.space.store(UInt32(0), at: task.clearChildTID)) != nil {
                _ = futexes.wake(FutexTable.Key(image: task.image, address: task.clearChildTID), count: 1, bitset: .max)
            }
        }
        if task.robustList != 0 { releaseRobustFutexes(of: task) }
        task.image.unload(task)
        // Its fds close now (a pipe's reader sees end-of-file), unless other threads share them.
        task.files = FileTable()
        tasks[task.tid] = nil
        group.tasks.removeAll { $0 === task }
        if group.tasks.isEmpty && group === initialGroup { memoryInUseAtExit = task.image.space.allocator.usedBytes }
        if group.tasks.isEmpty { processEnded(group) }
    }

    /// Ends every thread of `group` with `status` (exit_group, a fatal signal).
    func exitGroup(_ group: ThreadGroup, status: SandboxExit) {
        if group.exitStatus == nil { group.exitStatus = status }
        for task in group.tasks { exitTask(task) }
    }

    /// The last thread of `group` is gone: it becomes a zombie for its parent, or ends the sandbox.
    private func processEnded(_ group: ThreadGroup) {
        let status = group.exitStatus ?? .exited(status: 0)
        group.exitStatus = status
        group.zombieStatus = ThreadGroup.waitStatus(status)
        timers.removeAll(ownedBy: group)
        group.vforkDone.wakeAll()
        group.exited.wakeAll()
        if group === initialGroup {
            if exitStatus == nil { exitStatus = status }
            return
        }
        group.exitObserver?(group.zombieStatus ?? 0)
        group.exitObserver = nil
        for child in groups.values where child.parentPID == group.pid { child.parentPID = initialGroup.pid }
        guard let parent = groups[group.parentPID], !parent.isZombie else {
            groups[group.pid] = nil  // nobody can wait for it
            return
        }
        parent.childEvents.wakeAll()
        let action = parent.leader?.signalHandlers.action(for: SIGCHLD) ?? SignalAction()
        if group.exitSignal == SIGCHLD && (action.handler == SignalAction.ignore || action.flags & SignalAction.noChildWait != 0) {
            groups[group.pid] = nil  // auto-reaped, as Linux does when SIGCHLD is ignored
            return
        }
        if group.exitSignal > 0 {
            var info = SignalInformation(signal: group.exitSignal)
            info.code = status.isSignal ? SignalInformation.childKilled : SignalInformation.childExited
            info.senderPID = group.pid
            info.status = status.isSignal ? status.signalNumber : status.exitCode
            send(info, toProcess: parent)
        }
    }

    /// Removes and returns an exited child of `parent` (a specific one when `pid` > 0, any with -1).
    func reapChild(of parent: ThreadGroup, pid: Int32, remove: Bool = true) -> ThreadGroup? {
        let child = groups.values.filter { $0.parentPID == parent.pid && $0.isZombie && (pid <= 0 || $0.pid == pid) }
            .min { $0.pid < $1.pid }
        if let child, remove {
            groups[child.pid] = nil
            parent.reapedChildrenCPUTime += child.cpuTime
            parent.reapedChildrenCPUTime += child.reapedChildrenCPUTime
        }
        return child
    }

    func hasChildren(_ parent: ThreadGroup, pid: Int32) -> Bool {
        groups.values.contains { $0.parentPID == parent.pid && (pid <= 0 || $0.pid == pid) }
    }
}

/// Whether a run is still on, for its timeout's handler (see `Sandbox.run(timeoutSeconds:)`).
final class TimeoutGuard: Sendable {
    private let running = Mutex(true)
    func ifRunning(_ body: () -> Void) { running.withLock { if $0 { body() } } }
    func end() { running.withLock { $0 = false } }
}

/// `Sandbox.milestones` readable from any thread: 0 until the event happens.
public final class SandboxProgress: Sendable {
    public let firstGuestEntry = Atomic<UInt64>(0)
}

/// Limits on what a sandbox's program may create.
public struct SandboxLimits: Sendable {
    /// Threads plus processes alive at once; clone/fork beyond it get EAGAIN.
    public var maximumTasks: Int = 256

    public init(maximumTasks: Int = 256) {
        self.maximumTasks = maximumTasks
    }
}

extension SandboxExit {
    var isSignal: Bool { if case .killed = self { true } else { self == .timedOut || self == .readyPoint } }
    var signalNumber: Int32 { if case .killed(let signal, _) = self { signal } else { SIGKILL } }
    var exitCode: Int32 { if case .exited(let status) = self { status } else { 0 } }
}

/// The sandbox's abstract unix socket names. A name is free again once its socket closes (its
/// binding's socket is nil); such entries are swept whenever the table has doubled since the last
/// sweep, so binding and closing ever new names cannot grow the monitor's memory without bound.
final class AbstractSocketNames {
    private var bindings: [[UInt8]: UnixSocketBinding] = [:]
    private var sweepAt = 64

    subscript(name: [UInt8]) -> UnixSocketBinding? {
        get { bindings[name] }
        set {
            bindings[name] = newValue
            guard bindings.count >= sweepAt else { return }
            bindings = bindings.filter { $0.value.socket != nil }
            sweepAt = max(64, 2 * bindings.count)
        }
    }
}
