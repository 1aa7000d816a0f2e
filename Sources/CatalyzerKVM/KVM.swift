import CKVM
import Glibc

/// The `/dev/kvm` system fd: API version, capabilities and the host's supported CPUID.
public final class KVM {
    public let fd: Int32
    /// Size of the per-vCPU `kvm_run` mapping.
    public let vcpuMmapSize: Int

    public init(path: String = "/dev/kvm") throws {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw KVMError("open \(path)") }
        self.fd = fd
        let version = ckvm_get_api_version(fd)
        guard version == KVM_API_VERSION else {
            close(fd)
            throw KVMError("KVM_GET_API_VERSION returned \(version)", errno: EINVAL)
        }
        let size = try check("KVM_GET_VCPU_MMAP_SIZE") { ckvm_get_vcpu_mmap_size(fd) }
        vcpuMmapSize = Int(size)
    }

    deinit { close(fd) }

    /// Whether the host KVM reports `capability` (a `KVM_CAP_*` constant) as available.
    public func hasCapability(_ capability: Int32) -> Bool {
        ckvm_check_extension(fd, capability) > 0
    }

    private var cachedCPUID: [kvm_cpuid_entry2]?

    /// The CPUID leaves KVM can present to a guest, as reported by `KVM_GET_SUPPORTED_CPUID`; asked
    /// once per KVM handle, since every VM (each restore, each fork) needs them.
    public func supportedCPUID() throws -> [kvm_cpuid_entry2] {
        if let cachedCPUID { return cachedCPUID }
        let entries = try querySupportedCPUID()
        cachedCPUID = entries
        return entries
    }

    private func querySupportedCPUID() throws -> [kvm_cpuid_entry2] {
        let capacity: UInt32 = 256
        var entries = [kvm_cpuid_entry2](repeating: kvm_cpuid_entry2(), count: Int(capacity))
        let count = try entries.withUnsafeMutableBufferPointer { buffer in
            try check("KVM_GET_SUPPORTED_CPUID") { ckvm_get_supported_cpuid(fd, buffer.baseAddress, capacity) }
        }
        return Array(entries.prefix(Int(count)))
    }
}
