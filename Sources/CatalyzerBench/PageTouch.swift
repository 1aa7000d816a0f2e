import Glibc
import Synchronization

/// First-touch timing: maps memory and times the first access to each 4 KiB page, one by one,
/// the way a restored sandbox pays for its memory.
public enum PageTouch {
    public static let pageSize = 4096

    /// How a page is touched: a read maps the page (from the page cache, or the zero page for
    /// anonymous memory); a write also makes the private copy a sandbox gets when it writes.
    public enum Access: String, Sendable, Codable, CaseIterable {
        case read, write
    }

    public struct MappingError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Maps `size` bytes of `fd` (or anonymous memory when `fd` is nil) `MAP_PRIVATE`, touches
    /// `pages` in the given order, and returns the nanoseconds each touch took.
    public static func measure(fd: Int32?, size: Int, pages: [Int], access: Access) throws -> Samples {
        let flags = fd == nil ? MAP_PRIVATE | MAP_ANONYMOUS : MAP_PRIVATE
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, flags, fd ?? -1, 0), base != MAP_FAILED else {
            throw MappingError(description: "mmap of \(size) bytes failed: \(String(cString: strerror(errno)))")
        }
        defer { munmap(base, size) }
        var nanoseconds: [Double] = []
        nanoseconds.reserveCapacity(pages.count)
        var checksum: UInt8 = 0
        for page in pages {
            let offset = page * pageSize
            let start = Clock.now()
            switch access {
            case .read: checksum &+= base.load(fromByteOffset: offset, as: UInt8.self)
            case .write: base.storeBytes(of: checksum, toByteOffset: offset, as: UInt8.self)
            }
            nanoseconds.append(Double(Clock.now() - start))
        }
        // Publishing the checksum keeps the optimizer from dropping the loads.
        sink.store(checksum, ordering: .relaxed)
        return Samples(nanoseconds)
    }

    private static let sink = Atomic<UInt8>(0)
}
