import CKVM
import Glibc

/// KVM's own counters for one vCPU (`KVM_GET_STATS_FD`): how often the guest left for the host
/// and why, which the monitor cannot see for exits KVM handles itself, such as shadow-paging
/// faults on first touch of a page.
public struct KVMCounters: Sendable, Equatable, Codable {
    /// Every guest exit, whether KVM or the monitor handled it.
    public var exits: UInt64
    /// Page faults KVM took while running the guest (shadow paging: first touches, COW, MMIO).
    public var pageFaults: UInt64
    /// Of those, faults KVM fixed by installing a shadow entry.
    public var pageFaultsFixed: UInt64

    public init(exits: UInt64 = 0, pageFaults: UInt64 = 0, pageFaultsFixed: UInt64 = 0) {
        self.exits = exits
        self.pageFaults = pageFaults
        self.pageFaultsFixed = pageFaultsFixed
    }

    public static func - (lhs: KVMCounters, rhs: KVMCounters) -> KVMCounters {
        KVMCounters(exits: lhs.exits &- rhs.exits, pageFaults: lhs.pageFaults &- rhs.pageFaults,
                    pageFaultsFixed: lhs.pageFaultsFixed &- rhs.pageFaultsFixed)
    }
}

/// Reads a vCPU's statistics fd. The descriptors are parsed once; each sample is one `pread`
/// per counter. A kernel without binary statistics (before 5.14) gives nil at creation.
public final class KVMStatisticsReader {
    private let fd: Int32
    private let offsets: (exits: off_t, pageFaults: off_t, pageFaultsFixed: off_t)

    public init?(vcpu: VCPU) {
        let fd = ckvm_get_stats_fd(vcpu.fd)
        guard fd >= 0 else { return nil }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        guard let table = Self.dataOffsets(fd), let exits = table["exits"], let taken = table["pf_taken"],
              let fixed = table["pf_fixed"] else {
            close(fd)
            return nil
        }
        self.fd = fd
        offsets = (exits, taken, fixed)
    }

    deinit { close(fd) }

    /// The counters now.
    public func sample() -> KVMCounters {
        KVMCounters(exits: value(at: offsets.exits), pageFaults: value(at: offsets.pageFaults),
                    pageFaultsFixed: value(at: offsets.pageFaultsFixed))
    }

    private func value(at offset: off_t) -> UInt64 {
        var value: UInt64 = 0
        return pread(fd, &value, 8, offset) == 8 ? value : 0
    }

    /// Counter name → file offset of its first value. The sizes come from the kernel and are
    /// checked against what was read, so a short or odd header gives nil, not a wild read.
    private static func dataOffsets(_ fd: Int32) -> [String: off_t]? {
        let header = UnsafeMutableRawPointer.allocate(byteCount: Int(ckvm_stats_header_size), alignment: 8)
        defer { header.deallocate() }
        guard pread(fd, header, Int(ckvm_stats_header_size), 0) == Int(ckvm_stats_header_size) else { return nil }
        let typed = header.assumingMemoryBound(to: kvm_stats_header.self)
        let nameSize = Int(ckvm_stats_header_name_size(typed)), count = Int(ckvm_stats_header_count(typed))
        guard nameSize > 0, nameSize <= 4096, count > 0, count <= 4096 else { return nil }
        let stride = Int(ckvm_stats_desc_size) + nameSize
        let descriptors = UnsafeMutableRawPointer.allocate(byteCount: stride * count, alignment: 8)
        defer { descriptors.deallocate() }
        guard pread(fd, descriptors, stride * count, off_t(ckvm_stats_header_desc_offset(typed))) == stride * count else { return nil }
        let dataOffset = off_t(ckvm_stats_header_data_offset(typed))
        var table: [String: off_t] = [:]
        for index in 0..<count {
            let descriptor = (descriptors + index * stride).assumingMemoryBound(to: kvm_stats_desc.self)
            guard ckvm_stats_desc_values(descriptor) >= 1 else { continue }
            let name = (descriptors + index * stride + Int(ckvm_stats_desc_size)).assumingMemoryBound(to: CChar.self)
            name[nameSize - 1] = 0
            table[String(cString: name)] = dataOffset + off_t(ckvm_stats_desc_offset(descriptor))
        }
        return table
    }
}
