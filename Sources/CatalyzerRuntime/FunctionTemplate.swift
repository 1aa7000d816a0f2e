import CKVM
import CatalyzerImage
import CatalyzerKVM
import CatalyzerKernel
import Dispatch
import Glibc
import Synchronization

/// A function parked at its ready point, from which sandboxes are forked (sfork). It is an
/// image restored once through catalyzerfs and never run: its memory is the image's memory file,
/// read once through the mount (catalyzerfs verifies every chunk) into a memfd of the template's
/// own, its kernel state the decoded snapshot with the rootfs checked once. A fork maps that memfd
/// privately (copy-on-write, shared by every fork) and rebuilds the kernel from the in-memory
/// snapshot: no state read, no decode, no rootfs check, and no page ever read through FUSE again,
/// so a mount whose daemon dies cannot fail a fork (nor, through the monitor's own reads of guest
/// memory, take the daemon down with SIGBUS).
///
/// Forks run in VMs from `pool`: created ahead of time, and after a fork ends, reset to the
/// template's memory (only the pages it changed) and parked again, so KVM's shadow page tables for
/// everything the fork did not write stay warm for the next. How much memory a parked VM keeps
/// for that is its `ParkingPolicy`.
public final class FunctionTemplate: @unchecked Sendable {
    /// What a parked VM keeps, trading host memory for the next fork's speed.
    ///
    /// A VM keeps the pages its forks write as private copies (reset to the template's bytes in
    /// place), so the next fork writes them without a shadow fault and a copy: heavy's forks write
    /// ~470 pages (1.8 MiB). A VM that has been parked for `idleSeconds` without a fork is
    /// trimmed to `idleKeptPages` (1 MiB), and the fork that takes it next copies the rest back
    /// in first (heavy 0.9 -> 2.9 ms in `bench serve`'s sfork-idle): under traffic VMs come back
    /// within milliseconds and stay fast; idle capacity is cheap.
    public struct ParkingPolicy: Sendable, Equatable {
        /// Written pages a VM keeps when parked after a fork (4 MiB); 0 gives every one back.
        public var keptPages = 1024
        /// A new VM gets the pages the last fork wrote copied in before its first fork (`hotPages`).
        /// Measured with a new VM per fork (`--pool 0`), copy included: hello 6.1 -> 4.2 ms,
        /// heavy 10.9 -> 7.8 ms.
        public var eagerCopy = true
        /// Seconds a VM stays parked without a fork before it is trimmed; nil: never.
        public var idleSeconds: Double? = 2
        /// Private pages a trimmed VM keeps (256: 1 MiB).
        public var idleKeptPages = 256

        public init(keptPages: Int = 1024, eagerCopy: Bool = true, idleSeconds: Double? = 2, idleKeptPages: Int = 256) {
            self.keptPages = keptPages
            self.eagerCopy = eagerCopy
            self.idleSeconds = idleSeconds
            self.idleKeptPages = idleKeptPages
        }
    }

    public let image: String
    /// The image manifest's digest: a new version of the function gets a new template.
    public let imageDigest: String
    public let memorySize: Int
    let snapshot: KernelSnapshot
    /// Where its forks may connect beyond their sandbox: the policy recorded with the image.
    let network: NetworkPolicy
    let kvm: KVM
    /// The template's memory: a memfd holding the image's stored chunks (holes elsewhere, which
    /// read as zeros), open for the template's lifetime.
    private let memoryFD: Int32
    /// The memfd mapped read-only: the template's memory as every fork starts with it, for
    /// comparing a finished fork's page tables against.
    let view: UnsafeRawPointer
    /// A VM ready for a fork, since when, and whether it has been trimmed since.
    private struct ParkedVM {
        let vm: ForkVM
        let since: UInt64
        var trimmed = false
    }
    /// Parked VMs ready for a fork, in the order they were parked: the last is taken first, so
    /// under light load the same few VMs serve and the rest idle, to be trimmed. Guarded by
    /// `parked`'s lock.
    private let parked = Mutex<[ParkedVM]>([])
    /// Forks that have answered or ended and whose VMs are on their way back (being stopped or
    /// reset): a fork that finds no parked VM waits a little for one of these rather than take a
    /// new VM, whose shadow page tables are cold (a cold VM costs a fork several milliseconds,
    /// a reset well under one).
    private let returning = Atomic<Int>(0)
    static let returnWaitNanoseconds: UInt64 = 3_000_000
    /// How many VMs to keep parked.
    public let poolSize: Int
    /// Counters for reports and metrics.
    private let counters = Mutex(Counters())

    public struct Counters: Sendable {
        /// Forks that found a parked VM / had to create one.
        public var pooledVMs = 0
        public var createdVMs = 0
        /// VMs reset and parked again after a fork / discarded (timed out, killed, shared memory).
        public var recycledVMs = 0
        public var discardedVMs = 0
        /// Pages reset over all recycles.
        public var pagesReset = 0
        /// Parked VMs trimmed for idling, and the pages they gave back.
        public var trimmedVMs = 0
        public var pagesTrimmed = 0
    }

    public var statistics: Counters { counters.withLock { $0 } }
    public var parkedVMs: Int { parked.withLock { $0.count } }
    /// Parked VMs that have not been trimmed since they were parked.
    public var parkedVMsNotTrimmed: Int { parked.withLock { $0.count { !$0.trimmed } } }
    /// Where the parked VMs' guest memory is mapped in this process, for measuring what they hold.
    public var parkedMemoryRanges: [(base: UInt, size: Int)] {
        parked.withLock { $0.map { (UInt(bitPattern: $0.vm.vm.memory.base), $0.vm.vm.memory.size) } }
    }

    /// Restores `image` from `mount` as a template and parks `poolSize` VMs for it, kept as
    /// `parking` says. `network` replaces the policy recorded with the image, for every fork
    /// (nil: the image's).
    public init(image: String, mount: CatalyzerMount, store: ImageStore, poolSize: Int,
                parking: ParkingPolicy = ParkingPolicy(), network: NetworkPolicy? = nil, kvm: KVM? = nil) throws {
        self.image = image
        self.poolSize = poolSize
        self.parking = parking
        let opened = try store.open(image)
        imageDigest = opened.manifestDescriptor.digest.description
        let memoryPath = mount.memoryPath(image)
        let fd = open(memoryPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw RuntimeError("image '\(image)': cannot open its memory \(memoryPath): \(String(cString: strerror(errno))); is \(mount.mountpoint) serving the store \(store.root)?")
        }
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_size > 0, status.st_size % Int(GuestMemory.pageSize) == 0 else {
            close(fd)
            throw RuntimeError("image '\(image)': \(memoryPath) is not a guest memory file (size \(status.st_size)); check it with `catalyzer image verify \(image)`")
        }
        memorySize = Int(status.st_size)
        do {
            var state = try CheckpointState(decoding: RestoredSandbox.readState(mount.statePath(image), image: image, mount: mount), image: image)
            state.kernel.rootfs.path = try RestoredSandbox.rootfs(for: image, recorded: state.kernel.rootfs.path, store: store)
            guard state.kernel.memorySize == memorySize else {
                throw RuntimeError("image '\(image)': its state is for \(state.kernel.memorySize) bytes of memory but its memory file has \(memorySize); the image is inconsistent: re-create it")
            }
            do { try Sandbox.verifyRootfs(of: state.kernel) } catch { throw RuntimeError("image '\(image)' cannot be restored: \(error)") }
            snapshot = state.kernel
            self.network = try network ?? state.networkPolicy(image: image)
            self.kvm = try kvm ?? KVM()
            // Every stored chunk is read (and verified by catalyzerfs) now, once, into memory of
            // the template's own: after this, nothing of the mount is needed.
            let memfd = try Self.copyStoredChunks(from: fd, config: opened.config, image: image, size: memorySize)
            guard let view = mmap(nil, memorySize, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, memfd, 0), view != MAP_FAILED else {
                let code = errno
                close(memfd)
                throw RuntimeError("image '\(image)': cannot map its memory: \(String(cString: strerror(code)))")
            }
            self.view = UnsafeRawPointer(view)
            memoryFD = memfd
            close(fd)
        } catch {
            close(fd)
            throw error
        }
        fillPool()
    }

    deinit {
        parked.withLock { $0.removeAll() }
        munmap(UnsafeMutableRawPointer(mutating: view), memorySize)
        close(memoryFD)
    }

    /// A memfd of `size` bytes holding every stored chunk of the memory file `fd`, read through
    /// the mount once (catalyzerfs fetches and verifies each). Zero chunks are not stored: they
    /// stay holes, so the memfd holds the image's data, not its whole memory size.
    private static func copyStoredChunks(from fd: Int32, config: ImageConfig, image: String, size: Int) throws -> Int32 {
        let memfd = ckvm_memfd_create("catalyzer-template-\(image)")
        guard memfd >= 0 else { throw RuntimeError("image '\(image)': cannot create memory for its template: memfd_create: \(String(cString: strerror(errno)))") }
        guard ftruncate(memfd, off_t(size)) == 0 else {
            let code = errno
            close(memfd)
            throw RuntimeError("image '\(image)': cannot size its template's memory to \(size) bytes: \(String(cString: strerror(code)))")
        }
        let chunkSize = config.chunkSize
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        do {
            for chunk in config.chunks {
                let offset = chunk.index * chunkSize
                let length = Int(min(Int64(chunkSize), config.memorySize - Int64(offset)))
                guard whole(length, { pread(fd, buffer + $0, length - $0, off_t(offset + $0)) }) else {
                    throw RuntimeError("image '\(image)': its memory chunk \(chunk.index) cannot be read: \(String(cString: strerror(errno))) (catalyzerfs could not serve it; its log names the blob); check the image with `catalyzer image verify \(image)`")
                }
                guard whole(length, { pwrite(memfd, buffer + $0, length - $0, off_t(offset + $0)) }) else {
                    throw RuntimeError("image '\(image)': cannot copy its memory chunk \(chunk.index) into the template's memory: \(String(cString: strerror(errno)))")
                }
            }
        } catch {
            close(memfd)
            throw error
        }
        return memfd
    }

    /// Repeats `transfer` (a pread or pwrite of the rest, given the bytes done so far) until
    /// `length` bytes have moved; false, with errno set, when one fails or moves nothing.
    private static func whole(_ length: Int, _ transfer: (Int) -> Int) -> Bool {
        var done = 0
        while done < length {
            let count = transfer(done)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return false }
            done += count
        }
        return true
    }

    /// A new VM over a fresh private mapping of the memory file; with `eagerCopy`, the pages the
    /// last fork wrote are copied in (faulted in as if written) before it is used.
    func makeVM() throws -> ForkVM {
        let fd = dup(memoryFD)
        guard fd >= 0 else { throw RuntimeError("cannot duplicate the memory file's fd: \(String(cString: strerror(errno)))") }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        let memory = try GuestMemory(mappingPrivately: fd, size: memorySize)
        memory.recordsDiscards = true
        let forkVM = ForkVM(vm: try VM(kvm: kvm, memory: memory))
        if eagerCopy {
            forkVM.privatePages = hotPages.withLock { $0 }
            memory.populateForWriting(forkVM.privatePages)
        }
        return forkVM
    }

    public let parking: ParkingPolicy
    /// Whether new VMs get `hotPages` copied in before their first fork.
    public var eagerCopy: Bool { parking.eagerCopy }
    /// With `eagerCopy`: the pages the last fork whose VM came back wrote (private copies of the
    /// template's), sorted: what the next fork will most likely write too.
    private let hotPages = Mutex<[UInt64]>([])
    /// How many pages a new VM gets copied in now (for tests and reports).
    public var hotPageCount: Int { hotPages.withLock { $0.count } }

    /// Creates VMs until `poolSize` are parked.
    public func fillPool() {
        while parked.withLock({ $0.count }) < poolSize {
            guard let vm = try? makeVM() else { return }
            park(vm)
        }
    }

    /// Parks `vm` on top (the next fork takes it) and plans its trim.
    private func park(_ vm: ForkVM) {
        parked.withLock { $0.append(ParkedVM(vm: vm, since: Sandbox.monotonicNanoseconds())) }
        planTrim()
    }

    /// Whether a trim is planned (at most one per template).
    private let trimPlanned = Atomic<Bool>(false)

    /// Plans `trimIdleVMs` for when the longest-parked VM not yet trimmed has idled
    /// `parking.idleSeconds`.
    private func planTrim() {
        guard let idleSeconds = parking.idleSeconds else { return }
        let idle = UInt64(max(0, idleSeconds) * 1e9)
        guard let oldest = parked.withLock({ $0.filter { !$0.trimmed }.map(\.since).min() }),
              !trimPlanned.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let wait = (oldest &+ idle).subtractingReportingOverflow(Sandbox.monotonicNanoseconds())
        let delay = wait.overflow ? 0 : Int(min(wait.partialValue, UInt64(Int.max)))
        // Weak: a template replaced by a new version, or shut down, is not kept for its trim.
        DispatchQueue.global(qos: .utility).asyncAfter(deadline: .now() + .nanoseconds(delay)) { [weak self] in
            self?.trimIdleVMs()
        }
    }

    /// The planned trim: VMs parked for `parking.idleSeconds` are trimmed, then the next is planned.
    private func trimIdleVMs() {
        trimPlanned.store(false, ordering: .releasing)
        guard let idleSeconds = parking.idleSeconds else { return }
        trimParkedVMs(idleForAtLeast: idleSeconds)
        planTrim()
    }

    /// Trims every VM parked for `seconds` or more and not trimmed since to
    /// `parking.idleKeptPages` private pages; returns how many it trimmed. Trimmed VMs go back
    /// into the pool in the order they were parked.
    @discardableResult
    public func trimParkedVMs(idleForAtLeast seconds: Double) -> Int {
        let idle = UInt64(max(0, seconds) * 1e9)
        let now = Sandbox.monotonicNanoseconds()
        func due(_ entry: ParkedVM) -> Bool { !entry.trimmed && now &- entry.since >= idle }
        return trim { list in
            let taken = list.filter(due)
            list.removeAll(where: due)
            return taken
        }
    }

    /// Trims the VM the next fork will take, idle or not, as an idle spell would have: for
    /// measuring a fork after one (`bench serve`'s sfork-idle). Returns whether there was one.
    @discardableResult
    public func trimNextParkedVM() -> Bool {
        trim { list in list.popLast().map { [$0] } ?? [] } > 0
    }

    /// Trims the VMs `take` removes from the pool (under its lock) and puts them back.
    private func trim(_ take: (inout [ParkedVM]) -> [ParkedVM]) -> Int {
        let taken = parked.withLock { take(&$0) }
        guard !taken.isEmpty else { return 0 }
        // A fork that finds the pool empty meanwhile waits for these, as for a returning VM.
        returning.add(taken.count, ordering: .releasing)
        defer { returning.subtract(taken.count, ordering: .releasing) }
        var trimmed: [ParkedVM] = []
        for var entry in taken {
            // What a parked VM holds privately is what its reset kept (or its eager copy made):
            // no pagemap scan of all of RAM, which costs ~0.5 ms per VM of 256 MiB here.
            let forkVM = entry.vm
            let given = Array(forkVM.privatePages.dropFirst(max(0, parking.idleKeptPages)))
            do {
                try forkVM.vm.memory.giveBack(given)
            } catch {
                counters.withLock { $0.discardedVMs += 1 }
                continue
            }
            forkVM.privatePages.removeLast(given.count)
            if !given.isEmpty { forkVM.trimmedPages = (forkVM.trimmedPages + given).sorted() }
            entry.trimmed = true
            trimmed.append(entry)
            counters.withLock {
                $0.trimmedVMs += 1
                $0.pagesTrimmed += given.count
            }
        }
        // Back in the order they were parked: a fork takes the VM that served last, whose shadow
        // page tables are warmest, trimmed or not.
        parked.withLock { list in
            list.append(contentsOf: trimmed)
            list.sort { $0.since < $1.since }
        }
        return trimmed.count
    }

    /// A parked VM, or a new one when none is parked (nor about to be).
    func takeVM() throws -> ForkVM {
        let deadline = Sandbox.monotonicNanoseconds() &+ Self.returnWaitNanoseconds
        while parked.withLock({ $0.isEmpty }) && returning.load(ordering: .acquiring) > 0 && Sandbox.monotonicNanoseconds() < deadline {
            usleep(50)
        }
        while let vm = parked.withLock({ $0.popLast()?.vm }) {
            // A timeout that fired as its last fork ended leaves the VM stopped for good.
            guard !vm.vm.vcpu.exitRequester.isExitRequested else { continue }
            counters.withLock { $0.pooledVMs += 1 }
            if !vm.trimmedPages.isEmpty {
                // Copied back in as if written, one call per run, before the fork: cheaper than
                // a copy-on-write fault each, and KVM maps writable neighbours together.
                vm.vm.memory.populateForWriting(vm.trimmedPages)
                vm.trimmedPages = []
            }
            return vm
        }
        counters.withLock { $0.createdVMs += 1 }
        refillInBackground()
        return try makeVM()
    }

    /// Whether a background refill runs now (at most one per template).
    private let refilling = Atomic<Bool>(false)

    /// Creates parked VMs on another thread, so the forks after this one find them ready.
    private func refillInBackground() {
        guard poolSize > 0, !refilling.exchange(true, ordering: .acquiringAndReleasing) else { return }
        DispatchQueue.global(qos: .utility).async { [self] in
            fillPool()
            refilling.store(false, ordering: .releasing)
        }
    }

    /// Takes back the VM of a finished fork: reset to the template and parked, when it can be
    /// made exactly the template's again and the pool has room; otherwise dropped.
    /// Forks that have answered or ended and whose VMs are not back yet.
    public var vmsOnTheirWayBack: Int { returning.load(ordering: .acquiring) }

    /// A fork's VM will come back soon (`giveBack` follows).
    func vmReturning() { returning.add(1, ordering: .releasing) }

    func giveBack(_ forkVM: ForkVM, reusable: Bool, allocationEnd: UInt64? = nil) {
        defer { returning.subtract(1, ordering: .releasing) }
        guard reusable, parked.withLock({ $0.count }) < poolSize, let pagesReset = try? reset(forkVM, allocationEnd: allocationEnd) else {
            if eagerCopy && reusable, let written = try? forkVM.vm.memory.privatePages(below: allocationEnd) {
                hotPages.withLock { $0 = written }
            }
            counters.withLock { $0.discardedVMs += 1 }
            return
        }
        counters.withLock {
            $0.recycledVMs += 1
            $0.pagesReset += pagesReset
        }
        park(forkVM)
    }

    /// Makes a finished fork's memory the template's again; returns the pages it reset. KVM's
    /// translations of every page the fork wrote, and of every page its page tables mapped
    /// differently from the template's, are dropped; all others stay.
    /// `allocationEnd`: where the fork's page allocator ended (nil: unknown, all of RAM is looked
    /// at); above it nobody can have written the template's pages.
    func reset(_ forkVM: ForkVM, allocationEnd: UInt64?) throws -> Int {
        let memory = forkVM.vm.memory
        guard memory.attachedRegions.isEmpty else { throw RuntimeError("the fork mapped shared memory") }
        // Page tables first: which translations the fork's tables made that the template's do not
        // (only table pages the fork wrote can differ), before the reset puts the tables back.
        let privatePages = try memory.privatePages(below: allocationEnd.map { max($0, snapshot.allocator.nextUnused) })
        if eagerCopy { hotPages.withLock { $0 = privatePages } }
        let discarded = Set(memory.discardedPages)
        let written = Set(privatePages).union(discarded)
        let remapped = PageTables.pagesMappedDifferently(root: snapshot.pageTableRoot, memory: memory, template: view,
                                                         changedPages: written)
        for run in GuestMemory.contiguousRuns(remapped) { memory.dropTranslations(pageAt: run.start, count: run.count) }
        let reset = try memory.reset(to: view, privatePages: privatePages, keepingAtMost: parking.keptPages)
        // Discarded ranges are the file's again after the reset, copied into or not.
        forkVM.privatePages = privatePages.prefix(reset.copied).filter { !discarded.contains($0) }
        return reset.copied + reset.givenBack
    }

    /// A sandbox forked from the template, in a pooled VM, with `options`' stdio; it runs on
    /// `ForkedSandbox.run`.
    public func fork(options: RestoreOptions) throws -> ForkedSandbox {
        let forkVM = try takeVM()
        var options = options
        options.rootfsVerified = true
        if options.network == nil { options.network = network }
        do {
            let kernel = try Sandbox(restoring: snapshot, vm: PendingVM(ready: forkVM.vm), options: options)
            return ForkedSandbox(template: self, forkVM: forkVM, kernel: kernel)
        } catch {
            vmReturning()
            giveBack(forkVM, reusable: false)
            throw RuntimeError("image '\(image)': a sandbox cannot be forked from its template: \(error)")
        }
    }
}

/// A VM (and its private mapping of a template's memory) that serves one fork after another.
/// Only one thread uses it at a time: the pool hands it over under its lock.
final class ForkVM: @unchecked Sendable {
    let vm: VM
    /// While parked: the pages of its memory that are private copies (reset to the template's
    /// bytes), sorted; what it holds beyond the template's page cache.
    var privatePages: [UInt64] = []
    /// The pages its last trim gave back, copied in again when a fork takes it.
    var trimmedPages: [UInt64] = []
    init(vm: VM) { self.vm = vm }
}

/// One sandbox forked from a template. Run it once, on one thread; its VM then goes back to the
/// template.
public final class ForkedSandbox: @unchecked Sendable {
    public let template: FunctionTemplate
    let forkVM: ForkVM
    public private(set) var kernel: Sandbox?

    /// Set by `stopAfterResponse`: the stop that follows is the owner's, not a timeout.
    private let stoppedByOwner = Atomic<Bool>(false)
    private let exitRequester: ExitRequester

    init(template: FunctionTemplate, forkVM: ForkVM, kernel: Sandbox) {
        self.template = template
        self.forkVM = forkVM
        self.kernel = kernel
        exitRequester = kernel.exitRequester
    }

    /// Stops the fork once its answer is out, from any thread. A fork serves one request and is
    /// then thrown away, as a Lambda environment is frozen after its response: letting the
    /// program run to its exit would only spend CPU the next fork needs. Its VM is still reset
    /// and reused.
    public func stopAfterResponse() {
        // Only while the fork runs: once it has ended, its VM's exit requester belongs to the
        // next fork in that VM.
        running.withLock { running in
            guard running else { return }
            stoppedByOwner.store(true, ordering: .releasing)
            exitRequester.requestExit()
            announceReturn()
        }
    }

    /// Tells the template, once, that this fork's VM is on its way back.
    private let returnAnnounced = Atomic<Bool>(false)
    private func announceReturn() {
        if !returnAnnounced.exchange(true, ordering: .acquiringAndReleasing) { template.vmReturning() }
    }

    /// Whether the fork still runs; cleared (under the lock) before its VM is handed back.
    private let running = Mutex(true)

    /// Guest RAM as the fork left it (for inspection before the VM is reset).
    public var memory: GuestMemory { forkVM.vm.memory }

    /// Runs the fork until its program exits or `timeoutSeconds` pass, then lets `inspect` look
    /// at it and hands the VM back to the template (reset and parked when the run ended cleanly).
    /// Without a timeout it runs until the program ends or its `exitRequester` stops it.
    public func run(timeoutSeconds: Double?, inspect: ((ForkedSandbox) -> Void)? = nil) throws -> (exit: SandboxExit, milestones: Sandbox.Milestones) {
        guard let kernel else { throw RuntimeError("a forked sandbox runs once") }
        var exit: SandboxExit?
        defer {
            announceReturn()
            inspect?(self)
            let allocationEnd = kernel.allocationEnd(in: forkVM.vm.memory)
            self.kernel = nil  // its tasks, files and other VMs go now; the fork's VM stays ours
            running.withLock { $0 = false }
            let stopped = stoppedByOwner.load(ordering: .acquiring)
            let clean: Bool
            switch exit {
            case .exited?: clean = !exitRequester.isExitRequested || stopped
            case .timedOut?: clean = stopped
            default: clean = false
            }
            if clean && stopped { exitRequester.rearm() }
            template.giveBack(forkVM, reusable: clean && !exitRequester.isExitRequested, allocationEnd: allocationEnd)
        }
        do {
            exit = try timeoutSeconds.map { try kernel.run(timeoutSeconds: $0) } ?? kernel.run()
        } catch let error as KVMError where error.errno == EFAULT {
            // Its memory is the template's memfd: nothing on a mount can fail a page of it.
            throw RuntimeError("image '\(template.image)': KVM could not map a page of a fork's memory (EFAULT); the invocation was stopped")
        }
        if exit == .timedOut && stoppedByOwner.load(ordering: .acquiring) { exit = .exited(status: 0) }
        return (exit!, kernel.milestones)
    }
}
