import Glibc

/// A read-only run of zero bytes to point replies at, so all-zero chunks are answered with no
/// I/O, no allocation and no memset. It is an untouched anonymous mapping: every page is the
/// kernel's shared zero page, so it costs no memory however large.
final class ZeroBuffer: @unchecked Sendable {
    let bytes: UnsafeRawBufferPointer

    /// Maps `size` bytes; nil if the kernel refuses the mapping.
    init?(size: Int) {
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), base != MAP_FAILED else { return nil }
        bytes = UnsafeRawBufferPointer(start: base, count: size)
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: bytes.baseAddress), bytes.count) }
}
