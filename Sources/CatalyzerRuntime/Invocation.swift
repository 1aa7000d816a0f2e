import CatalyzerImage
import CatalyzerKVM
import CatalyzerKernel
import Foundation
import Glibc

/// One invocation of a function image: restore, serve the requests on stdin, report timings.
public struct InvocationRequest: Sendable {
    public var image: String
    public var store: ImageStore
    /// A catalyzerfs mount to use; nil: `CATALYZER_MOUNT`, else the managed mount.
    public var mount: String?
    /// Host fds that become the program's stdin, stdout and stderr.
    public var standardStreams: [Int32] = [0, 1, 2]
    public var timeoutSeconds: Double = 30
    public var traceSyscalls = false
    /// Threads plus processes the instance may have (`--max-tasks`).
    public var limits = SandboxLimits()
    /// The network policy for this invocation instead of the image's (nil: the image's).
    public var network: NetworkPolicy?
    /// Read catalyzerfs's `/.stats` before and after, for the FUSE figures of the timings.
    public var collectFilesystemStatistics = false
    /// Report which chunks of the memory file were resident after the run (the working set).
    public var recordResidentChunks = false
    /// When the invocation began (`Sandbox.monotonicNanoseconds`), if before `Invocation.run`:
    /// an `invoke` of a registry reference pulls first, and its timings count from the pull.
    public var startedAt: UInt64?
    /// When that pull ended, for the timings' pull phase.
    public var pulledAt: UInt64?

    public init(image: String, store: ImageStore) {
        self.image = image
        self.store = store
    }
}

/// Where an invocation's time went, in microseconds from the start of the invocation (mount
/// lookup included) to each phase's end, and what it cost in FUSE traffic and page faults.
public struct InvocationTimings: Sendable, Codable {
    /// An `invoke` of a registry reference: the lazy pull done (the mount starting meanwhile);
    /// nil when the image was local.
    public var pullMicroseconds: Double?
    /// Mount found (or mounted), memory file opened and mapped.
    public var openMicroseconds: Double
    /// State read through the mount, decoded, vCPU and kernel state restored.
    public var stateRestoreMicroseconds: Double
    /// The pending read of stdin served with the request; the vCPU enters the guest.
    public var firstInstructionMicroseconds: Double
    /// The program's first write to stdout (its response); nil if it wrote none.
    public var responseMicroseconds: Double?
    /// FUSE read requests catalyzerfs served for the image, and the compressed bytes it fetched
    /// from the store (nil unless statistics were collected).
    public var fuseReads: UInt64?
    public var fuseBytesFetched: UInt64?
    public var imageMemoryBytes: Int
    /// Guest page faults the monitor handled (program faults it resolved or turned into SIGSEGV).
    public var monitorPageFaults: Int
    /// Page faults of the monitor's thread while restoring and running: KVM faulting in guest
    /// pages shows up here; major ones needed FUSE.
    public var hostMinorPageFaults: Int
    public var hostMajorPageFaults: Int
    /// KVM's counters for the restored vCPU over the whole invocation (nil without binary
    /// statistics): its page faults are the first-touch shadow-paging exits.
    public var kvm: KVMCounters?
    /// The page working set the restore installed before the guest ran (nil: none).
    public var workingSet: WorkingSetInstall?
}

public struct InvocationResult: Sendable {
    public var exit: SandboxExit
    public var timings: InvocationTimings
    public var mountpoint: String
    public var residentChunks: [Int]?
    /// With `recordResidentChunks`: the guest pages the invocation touched (`touchedPages`).
    public var touchedPages: [Int64]?
}

public enum Invocation {
    public static func run(_ request: InvocationRequest) throws -> InvocationResult {
        let started = request.startedAt ?? Sandbox.monotonicNanoseconds()
        let faultsBefore = threadPageFaults()
        let mount = try CatalyzerMount.resolve(mount: request.mount, store: request.store)
        let before = request.collectFilesystemStatistics ? counters(of: request.image, on: mount) : nil
        var options = RestoreOptions()
        options.standardStreams = request.standardStreams
        options.traceSyscalls = request.traceSyscalls
        options.limits = request.limits
        options.network = request.network
        let sandbox = try RestoredSandbox(image: request.image, mount: mount, store: request.store, options: options,
                                          recordsWorkingSet: request.recordResidentChunks)
        let statistics = sandbox.kernel.initialVCPUStatistics()
        let exit = try sandbox.run(timeoutSeconds: request.timeoutSeconds)
        let faultsAfter = threadPageFaults()
        let after = request.collectFilesystemStatistics ? counters(of: request.image, on: mount) : nil
        func microseconds(_ time: UInt64?) -> Double? { time.map { Double($0 &- started) / 1000 } }
        let milestones = sandbox.kernel.milestones
        let timings = InvocationTimings(
            pullMicroseconds: microseconds(request.pulledAt),
            openMicroseconds: microseconds(sandbox.memoryMappedAt)!,
            stateRestoreMicroseconds: microseconds(sandbox.stateRestoredAt)!,
            firstInstructionMicroseconds: microseconds(milestones.firstGuestEntry) ?? microseconds(sandbox.stateRestoredAt)!,
            responseMicroseconds: microseconds(milestones.firstStandardOutput),
            fuseReads: before.flatMap { b in after.map { $0.readsServed &- b.readsServed } },
            fuseBytesFetched: before.flatMap { b in after.map { $0.bytesFetched &- b.bytesFetched } },
            imageMemoryBytes: sandbox.memory.size,
            monitorPageFaults: sandbox.kernel.pageFaultCount,
            hostMinorPageFaults: faultsAfter.minor - faultsBefore.minor,
            hostMajorPageFaults: faultsAfter.major - faultsBefore.major,
            kvm: statistics?.sample(),
            workingSet: sandbox.workingSet)
        return InvocationResult(exit: exit, timings: timings, mountpoint: mount.mountpoint,
                                residentChunks: request.recordResidentChunks ? sandbox.residentChunks() : nil,
                                touchedPages: request.recordResidentChunks ? try sandbox.touchedPages() : nil)
    }

    /// The image's FUSE counters on `mount` now; zero before catalyzerfs first serves it.
    private static func counters(of image: String, on mount: CatalyzerMount) -> MountStatistics.ImageCounters? {
        MountStatistics.read(mountpoint: mount.mountpoint).map { $0.images[image] ?? .zero }
    }

    private static func threadPageFaults() -> (minor: Int, major: Int) {
        var usage = rusage()
        getrusage(__rusage_who_t(1), &usage)  // RUSAGE_THREAD: the thread that ran the guest
        return (usage.ru_minflt, usage.ru_majflt)
    }
}
