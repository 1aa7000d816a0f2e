import CKVM
import CatalyzerKVM
import Glibc

/// The bytes of a /tmp file that has been mapped `MAP_SHARED`: a memfd, mapped once into the
/// monitor at a fixed reservation as large as the file may ever grow, so the address never moves.
/// Each process (VM) that maps the file registers that host range as an extra KVM memory slot
/// above its RAM (`GuestMemory.attach`), and its page tables point into the slot: every process
/// and the file's read/write share the same pages, as with Linux's page cache.
///
/// `length` is the file's size; the memfd is kept at least as long as every mapped extent
/// (`backedLength`), never shorter, so neither the guest nor the monitor can touch a page past the
/// memfd's end (which would be SIGBUS in the monitor). Bytes between `length` and `backedLength`
/// are kept zero whenever the file shrinks, so growing it again reads zeros.
final class SharedFileMemory {
    let fd: Int32
    let base: UnsafeMutableRawPointer
    /// Bytes of address space reserved for the mapping: the most the file can hold.
    let reserved: Int
    private(set) var length: Int
    private(set) var backedLength: Int
    /// Memory a mapping past the file's end made the memfd hold, charged to a sandbox's budget
    /// (not to /tmp: it is not part of the file) until the memory is freed.
    private var beyondEndCharge = 0
    private var beyondEndAccount: MemoryAccount?

    /// Charges `bytes` of backing past the file's end; ENOMEM when the budget cannot take them.
    func chargeBeyondEnd(_ bytes: Int, to account: MemoryAccount) throws(Errno) {
        guard account.charge(bytes) else { throw Errno.ENOMEM }
        if let previous = beyondEndAccount, previous !== account {  // another sandbox's: not expected
            previous.release(beyondEndCharge)
            beyondEndCharge = 0
        }
        beyondEndAccount = account
        beyondEndCharge += bytes
    }

    init(bytes: [UInt8], reserved requested: Int) throws(Errno) {
        let reserved = Int(Page.up(UInt64(max(requested, bytes.count, 4096)))!)
        let fd = ckvm_memfd_create("catalyzer-tmp-shared")
        guard fd >= 0 else { throw Errno.ENOMEM }
        let backed = Int(Page.up(UInt64(max(bytes.count, 1)))!)
        guard ftruncate(fd, off_t(backed)) == 0,
              let mapping = mmap(nil, reserved, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0),
              mapping != MAP_FAILED else {
            close(fd)
            throw Errno.ENOMEM
        }
        self.fd = fd
        self.base = mapping
        self.reserved = reserved
        self.length = bytes.count
        self.backedLength = backed
        bytes.withUnsafeBytes { if $0.count > 0 { mapping.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
    }

    deinit {
        beyondEndAccount?.release(beyondEndCharge)
        munmap(base, reserved)
        close(fd)
    }

    var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: base, count: length)) }

    /// Makes the memfd hold at least `extent` bytes (whole pages), for a mapping or a write.
    func ensureBacked(_ extent: Int) throws(Errno) {
        guard extent > backedLength else { return }
        guard extent <= reserved, let pages = Page.up(UInt64(extent)) else { throw Errno.EFBIG }
        guard ftruncate(fd, off_t(pages)) == 0 else { throw Errno.ENOSPC }
        backedLength = Int(pages)
    }

    /// Sets the file's size. Bytes past a shrunk end read as zero: the rest of the last page is
    /// zeroed and whole pages are given back to the host (hole-punched: a mapping of them sees
    /// fresh zero pages), so a truncated file holds no more host memory than its length.
    func resize(to newLength: Int) throws(Errno) {
        try ensureBacked(newLength)
        if newLength < length {
            let pageEnd = min(Int(Page.up(UInt64(newLength)) ?? UInt64(length)), length)
            memset(base + newLength, 0, pageEnd - newLength)
            if backedLength > pageEnd {
                for _ in 0..<4 {  // a kick signal may interrupt shmem's fallocate
                    if ckvm_punch_hole(fd, off_t(pageEnd), off_t(backedLength - pageEnd)) == 0 || errno != EINTR { break }
                }
            }
        }
        length = newLength
    }
}

/// File data access for /tmp nodes, whichever way their bytes are held.
extension MemoryNode {
    /// Copies bytes from `position` into host buffers; returns how many (0 at or past the end).
    func readFile(into vectors: [iovec], at start: Int) -> Int {
        var position = start, total = 0
        func copy(from source: UnsafeRawBufferPointer) {
            for vector in vectors where position < source.count {
                let count = min(vector.iov_len, source.count - position)
                vector.iov_base!.copyMemory(from: source.baseAddress! + position, byteCount: count)
                position += count
                total += count
            }
        }
        if let shared {
            copy(from: UnsafeRawBufferPointer(start: shared.base, count: shared.length))
        } else if case .file(let data) = content {
            data.withUnsafeBytes { copy(from: $0) }
        }
        return total
    }

    /// Files larger than this keep their bytes in a memfd (`SharedFileMemory`) rather than an
    /// array: growing one never copies it, and its host memory is the pages written.
    static let sharedThreshold = 256 << 10

    /// Moves a file that grows to `size` past `sharedThreshold` into a memfd; keeps the array if
    /// the host gives no memfd (the bytes are the same either way).
    private func moveToSharedMemory(growingTo size: Int) {
        guard shared == nil, size > Self.sharedThreshold else { return }
        _ = try? makeShared(reserving: max(size, account?.capacity ?? size))
    }

    /// Makes room in a file's array for `size` bytes, growing by at least an eighth so appends
    /// stay linear while the spare capacity (host memory not charged) stays small.
    private static func reserve(_ data: inout [UInt8], for size: Int) {
        guard size > data.capacity else { return }
        data.reserveCapacity(max(size, data.count + data.count / 8))
    }

    /// Writes host buffers at `position`, growing the file (with zeros before `position` when it
    /// is past the end). The caller has charged the growth to the filesystem.
    func writeFile(from vectors: [iovec], at start: Int) throws(Errno) -> Int {
        let length = vectors.reduce(0) { $0 + $1.iov_len }
        moveToSharedMemory(growingTo: start + length)
        if let shared {
            try shared.resize(to: max(shared.length, start + length))
            var position = start
            for vector in vectors {
                (shared.base + position).copyMemory(from: vector.iov_base!, byteCount: vector.iov_len)
                position += vector.iov_len
            }
            return length
        }
        guard case .file(var data) = content else { throw Errno.EISDIR }
        content = .file([])  // keep `data` uniquely referenced while editing
        defer { content = .file(data) }
        Self.reserve(&data, for: start + length)
        var position = start
        for vector in vectors {
            let bytes = UnsafeRawBufferPointer(start: vector.iov_base, count: vector.iov_len)
            if position > data.count { data += [UInt8](repeating: 0, count: position - data.count) }
            let overlap = min(bytes.count, data.count - position)
            data.replaceSubrange(position..<position + overlap, with: bytes)
            position += bytes.count
        }
        return length
    }

    /// Sets a file's size (truncate); the caller has charged the difference.
    func resizeFile(to length: Int) throws(Errno) {
        moveToSharedMemory(growingTo: length)
        if let shared { return try shared.resize(to: length) }
        guard case .file(var data) = content else { throw Errno.EISDIR }
        content = .file([])
        if length < data.count {
            data.removeLast(data.count - length)
            if data.capacity > 2 * data.count + 4096 {  // give back the spare capacity: a fresh, exact copy
                let kept = data
                data = [UInt8](unsafeUninitializedCapacity: kept.count) { buffer, count in
                    kept.withUnsafeBufferPointer { _ = buffer.initialize(fromContentsOf: $0) }
                    count = kept.count
                }
            }
        } else {
            Self.reserve(&data, for: length)
            data += repeatElement(0, count: length - data.count)
        }
        content = .file(data)
    }

    /// Moves the bytes into shared memory (first `MAP_SHARED` mapping); idempotent.
    func makeShared(reserving capacity: Int) throws(Errno) -> SharedFileMemory {
        if let shared { return shared }
        guard case .file(let data) = content else { throw Errno.ENODEV }
        let memory = try SharedFileMemory(bytes: data, reserved: capacity)
        content = .file([])
        shared = memory
        return memory
    }
}
