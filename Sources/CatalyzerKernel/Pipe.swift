import CatalyzerKVM

/// A pipe's buffer, with Linux's semantics: it holds up to `capacity` bytes (64 KiB unless
/// F_SETPIPE_SZ changes it); a reader of an empty pipe waits while a writer exists and gets
/// end-of-file after; a writer waits while it is full and gets EPIPE once no reader is left.
/// Readers, writers and pollers wait on `changed`.
///
/// Memory: the bytes live in a ring buffer that grows as data arrives (4 KiB first, doubling up
/// to `capacity`) and is given back when the pipe drains (one larger than the default 64 KiB), like
/// Linux's pipe pages. What it holds is charged to the sandbox's `MemoryAccount`, the budget of
/// `--memory` that guest RAM and /tmp also draw from, so a guest's pipes together never hold
/// more host memory than the sandbox may use. When the account cannot take a growth the buffer
/// stays as it is: a writer then waits for the reader (as with a full pipe), and a write to an
/// empty pipe that cannot get a single page fails with ENOMEM, as Linux's does when it cannot
/// allocate one.
final class Pipe {
    static let defaultCapacity = 64 << 10
    static let maximumCapacity = 1 << 20
    /// Writes up to this size are atomic (never interleaved, never partial).
    static let atomicWriteSize = 4096
    private(set) var capacity = Pipe.defaultCapacity
    /// The ring buffer: `allocated` bytes, the unread ones starting at `head`, `count` of them.
    private var storage: UnsafeMutableRawPointer?
    private(set) var allocated = 0
    private var head = 0
    private(set) var count = 0
    /// Where the buffer's bytes are charged; nil for a pipe no sandbox owns (tests).
    let account: MemoryAccount?
    private(set) var hasReader = true
    private(set) var hasWriter = true
    /// Woken whenever data, room or an end changes.
    let changed = WaitQueue()

    init(account: MemoryAccount? = nil) {
        self.account = account
    }

    /// A checkpoint's pipe with its unread bytes (charged whatever the account holds: the
    /// checkpointed sandbox held them within its limit).
    init(buffered: [UInt8], hasReader: Bool, hasWriter: Bool, account: MemoryAccount? = nil) {
        self.account = account
        capacity = max(Pipe.defaultCapacity, buffered.count)
        self.hasReader = hasReader
        self.hasWriter = hasWriter
        if !buffered.isEmpty {
            let size = Self.bufferSize(for: buffered.count, capacity: capacity)
            account?.forceCharge(size)
            replaceStorage(size: size)
            buffered.withUnsafeBytes { storage!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            count = buffered.count
        }
    }

    deinit {
        storage?.deallocate()
        account?.release(allocated)
    }

    /// The bytes written and not yet read.
    var unreadBytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { _ = peek(into: $0) }
        return bytes
    }

    var isEmpty: Bool { count == 0 }

    /// Bytes a write can take now: the free part of the buffer plus what it may still grow by,
    /// within `capacity` and what the sandbox's memory account has left.
    var room: Int {
        let free = allocated - count
        let growable = min(capacity - allocated, (account?.available ?? Int.max) & ~(GuestMemory.pageSize - 1))
        return max(0, min(capacity - count, free + max(0, growable)))
    }

    /// Whether the pipe is empty and yet cannot take a byte: the sandbox's memory is used up.
    var isOutOfMemory: Bool { count == 0 && room == 0 && capacity > 0 }

    /// A number unique among live pipes, for `st_ino`.
    var inode: UInt64 { UInt64(UInt(bitPattern: ObjectIdentifier(self).hashValue)) }

    /// F_SETPIPE_SZ: at least the bytes buffered now, rounded up to a power of two of pages.
    func resize(to requested: Int) -> Int? {
        guard requested <= Self.maximumCapacity else { return nil }
        var size = 4096
        while size < requested { size <<= 1 }
        guard size >= count else { return nil }
        capacity = size
        if allocated > capacity {
            account?.release(allocated - capacity)
            replaceStorage(size: capacity)
        }
        changed.wakeAll()
        return size
    }

    /// Moves up to `destination.count` buffered bytes out.
    func read(into destination: UnsafeMutableRawBufferPointer) -> Int {
        let moved = peek(into: destination)
        guard moved > 0 else { return 0 }
        head = (head + moved) % allocated
        count -= moved
        if count == 0 {
            head = 0
            // A drained pipe keeps at most the default buffer, as Linux frees a pipe's pages.
            if allocated > Self.defaultCapacity {
                account?.release(allocated)
                replaceStorage(size: 0)
            }
        }
        changed.wakeAll()
        return moved
    }

    /// Appends what fits (see `room`).
    func write(_ source: UnsafeRawBufferPointer) -> Int {
        let wanted = min(source.count, capacity - count)
        guard wanted > 0 else { return 0 }
        if count + wanted > allocated { grow(toHold: count + wanted) }
        let written = min(wanted, allocated - count)
        guard written > 0 else { return 0 }
        var tail = (head + count) % allocated
        var done = 0
        while done < written {
            let run = min(written - done, allocated - tail)
            (storage! + tail).copyMemory(from: source.baseAddress! + done, byteCount: run)
            done += run
            tail = (tail + run) % allocated
        }
        count += written
        changed.wakeAll()
        return written
    }

    /// The last open file description of one end went away.
    func close(writeEnd: Bool) {
        if writeEnd { hasWriter = false } else { hasReader = false }
        changed.wakeAll()
    }

    // MARK: the ring buffer

    /// The buffer size for `bytes`: a power of two of at least a page, at most `capacity`.
    private static func bufferSize(for bytes: Int, capacity: Int) -> Int {
        var size = GuestMemory.pageSize
        while size < bytes { size <<= 1 }
        return max(min(size, capacity), bytes)
    }

    /// Copies the unread bytes, oldest first, without consuming them.
    private func peek(into destination: UnsafeMutableRawBufferPointer) -> Int {
        let total = min(destination.count, count)
        var done = 0, position = head
        while done < total {
            let run = min(total - done, allocated - position)
            (destination.baseAddress! + done).copyMemory(from: storage! + position, byteCount: run)
            done += run
            position = (position + run) % allocated
        }
        return total
    }

    /// Grows the buffer toward `bytes` as far as the account allows (whole pages).
    private func grow(toHold bytes: Int) {
        var size = Self.bufferSize(for: bytes, capacity: capacity)
        if let account, !account.charge(size - allocated) {
            // As much as `room` promised: whole pages of what the account has left.
            size = min(size, allocated + account.available & ~(GuestMemory.pageSize - 1))
            guard size > allocated, account.charge(size - allocated) else { return }
        }
        replaceStorage(size: size)
    }

    /// Moves the unread bytes into a fresh buffer of `size` bytes (none for 0); the caller has
    /// charged or released the difference.
    private func replaceStorage(size: Int) {
        let fresh = size > 0 ? UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16) : nil
        if let fresh, count > 0 { _ = peek(into: UnsafeMutableRawBufferPointer(start: fresh, count: size)) }
        storage?.deallocate()
        storage = fresh
        allocated = size
        head = 0
    }
}
