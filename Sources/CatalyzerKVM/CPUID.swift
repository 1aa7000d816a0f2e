import CKVM

/// The guest's CPUID: what KVM supports, which is what the host offers minus what KVM cannot virtualize.
enum CPUID {
    static let xsaveLeaf: UInt32 = 0xD

    /// XCR0 state-component bits the guest may enable: x87, SSE, AVX, and AVX-512 when all three of its
    /// components are supported (user code checks XCR0 via `xgetbv` before using them).
    static func xcr0(from entries: [kvm_cpuid_entry2]) -> UInt64 {
        guard let leaf = entries.first(where: { $0.function == xsaveLeaf && $0.index == 0 }) else { return 0x3 }
        let supported = UInt64(leaf.eax) | UInt64(leaf.edx) << 32
        let avx512: UInt64 = 0xE0
        var xcr0 = supported & 0x7
        if supported & avx512 == avx512 { xcr0 |= avx512 }
        return xcr0
    }
}
