import CKVM
import CatalyzerKVM
import Glibc

/// The clock data the vDSO's `clock_gettime` reads (`[vvar]`, see `VirtualDSO`): a time-stamp
/// counter value, the monotonic and realtime clocks at that count, and nanoseconds per tick. The
/// monitor rewrites it before every return to the guest, so the guest extrapolates only across
/// the time it runs without trapping.
///
/// The rate is measured slightly slow on purpose: between refreshes the guest's clock may lag the
/// host's a little and catch up at the next refresh, but it never runs ahead, and a refresh never
/// sets it back (the new base is at least what the guest could already have read). So the clocks
/// stay monotonic and within a fraction of a per mille of the host's.
final class GuestClock {
    /// Byte offsets in the page, shared with the vDSO's code.
    private enum Field {
        static let baseTicks: UInt64 = 0, nanosecondsPerTick: UInt64 = 8
        static let monotonicBase: UInt64 = 16, realtimeBase: UInt64 = 24, valid: UInt64 = 32
    }

    /// Guest-virtual address of the `[vvar]` page and the physical page it had when mapped.
    let pageAddress: UInt64
    let physicalPage: UInt64
    /// Guest TSC minus host TSC (KVM may offset the guest's counter); nil when the guest's clock
    /// cannot be derived from the host's TSC, and the vDSO then makes the real syscall.
    private let tickOffset: Int64?
    private var base: (ticks: UInt64, monotonic: UInt64, realtime: UInt64)?

    /// `pageAddress` is the mapped `[vvar]` page of `space`; `vcpu` is the guest's CPU.
    convenience init(pageAddress: UInt64, space: AddressSpace, vcpu: VCPU) throws(Errno) {
        guard let (physical, _) = space.pageTables.translate(virtual: pageAddress) else { throw Errno.EFAULT }
        self.init(pageAddress: pageAddress, physicalPage: physical, vcpu: vcpu)
    }

    /// The clock of a restored program on its new `vcpu`, whose TSC offset is measured anew: the
    /// checkpoint's base is not carried over, so the first refresh sets the host's time now.
    init(pageAddress: UInt64, physicalPage: UInt64, vcpu: VCPU) {
        self.pageAddress = pageAddress
        self.physicalPage = physicalPage
        tickOffset = Self.hasInvariantTSC ? Self.measureTickOffset(vcpu) : nil
    }

    /// Guest TSC minus host TSC from the narrowest of a few reads of the guest's counter
    /// bracketed by the host's (a preempted read would be off by the time it was descheduled).
    private static func measureTickOffset(_ vcpu: VCPU) -> Int64? {
        var best: (width: UInt64, offset: Int64)?
        for _ in 0..<8 {
            let before = chost_rdtsc()
            guard let guestTicks = try? vcpu.msr(0x10) else { return nil }  // IA32_TIME_STAMP_COUNTER
            let after = chost_rdtsc()
            let width = after &- before
            if best == nil || width < best!.width {
                best = (width, Int64(bitPattern: guestTicks &- (before / 2 + after / 2)))
            }
            if width < 20_000 { break }  // a few µs: one uninterrupted ioctl
        }
        return best?.offset
    }

    /// CPUID 0x80000007 EDX bit 8: the TSC ticks at a constant rate in every power state, so it
    /// can stand in for the host's clocks between refreshes.
    private static let hasInvariantTSC: Bool = {
        var eax: UInt32 = 0x8000_0007, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0
        chost_cpuid(&eax, &ebx, &ecx, &edx)
        return edx & (1 << 8) != 0
    }()

    /// The same clock for a forked child, whose memory holds a copy of the page at the same place.
    init(copying other: GuestClock) {
        pageAddress = other.pageAddress
        physicalPage = other.physicalPage
        tickOffset = other.tickOffset
        base = other.base
    }

    /// Nanoseconds per host tick in 32.32 fixed point, measured once per monitor process over
    /// 250 µs and lowered by 0.1 % so measurement error cannot make the guest's clock run fast.
    /// Each sample brackets the clock read between two counter reads and is retaken if the
    /// thread was preempted in between: one preemption inside a sample would make the rate, and
    /// the guest's clock between refreshes, many times too fast.
    private static let nanosecondsPerTick: UInt64 = {
        let (startTicks, startNanoseconds) = hostSample()
        var (ticks, nanoseconds) = (startTicks, startNanoseconds)
        while nanoseconds - startNanoseconds < 250_000 { (ticks, nanoseconds) = hostSample() }
        guard ticks > startTicks else { return 0 }
        let rate = Double(nanoseconds - startNanoseconds) / Double(ticks - startTicks)
        return UInt64(rate * 0.999 * 4_294_967_296)
    }()

    /// A counter value and the monotonic clock at (nearly) the same instant: the narrowest of a
    /// few bracketed reads, so a read interrupted by the scheduler is not taken.
    private static func hostSample() -> (ticks: UInt64, nanoseconds: UInt64) {
        var best: (width: UInt64, ticks: UInt64, nanoseconds: UInt64)?
        for _ in 0..<16 {
            var now = timespec()
            let before = chost_rdtsc()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let after = chost_rdtsc()
            let width = after &- before
            if best == nil || width < best!.width {
                best = (width, before / 2 + after / 2, UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec))
            }
            if width < 2_000 { break }  // well under a microsecond: not preempted
        }
        return (best!.ticks, best!.nanoseconds)
    }

    /// Rewrites the page from the host's clocks. Skipped once the program unmapped, moved or
    /// replaced the page (its frame may since hold the program's own data).
    func refresh(space: AddressSpace, time: GuestTime) {
        let rate = Self.nanosecondsPerTick
        guard rate != 0, let tickOffset, let region = space.regionIndex(containing: pageAddress),
              space.regions[region].name == VirtualDSO.clockDataName,
              space.pageTables.translate(virtual: pageAddress)?.physical == physicalPage else { return }
        var realtimeNow = timespec()
        let hostTicks = chost_rdtsc()
        var monotonic = time.monotonicNanoseconds
        clock_gettime(CLOCK_REALTIME, &realtimeNow)
        let ticks = UInt64(bitPattern: Int64(bitPattern: hostTicks) &+ tickOffset)
        var realtime = UInt64(realtimeNow.tv_sec) * 1_000_000_000 + UInt64(realtimeNow.tv_nsec)
        if let base, ticks > base.ticks {
            // What the guest could have read just now must not be taken back.
            let product = (ticks - base.ticks).multipliedFullWidth(by: rate)
            let elapsed = product.high << 32 | product.low >> 32  // the vDSO's `mul; shrd 32`
            monotonic = max(monotonic, base.monotonic &+ elapsed)
            realtime = max(realtime, base.realtime &+ elapsed)
        }
        base = (ticks, monotonic, realtime)
        let memory = space.memory
        memory.store(ticks, at: physicalPage + Field.baseTicks)
        memory.store(rate, at: physicalPage + Field.nanosecondsPerTick)
        memory.store(monotonic, at: physicalPage + Field.monotonicBase)
        memory.store(realtime, at: physicalPage + Field.realtimeBase)
        memory.store(UInt64(1), at: physicalPage + Field.valid)
    }
}
