/// A pipe's buffer, with Linux's semantics: it holds up to `capacity` bytes (64 KiB unless
/// F_SETPIPE_SZ changes it); a reader of an empty pipe waits while a writer exists and gets
/// end-of-file after; a writer waits while it is full and gets EPIPE once no reader is left.
/// Readers, writers and pollers wait on `changed`.
final class Pipe {
    static let defaultCapacity = 64 << 10
    static let maximumCapacity = 1 << 20
    /// Writes up to this size are atomic (never interleaved, never partial).
    static let atomicWriteSize = 4096
    private(set) var capacity = Pipe.defaultCapacity
    private var buffer: [UInt8] = []
    private var readOffset = 0
    private(set) var hasReader = true
    private(set) var hasWriter = true
    /// Woken whenever data, room or an end changes.
    let changed = WaitQueue()

    init() {}

    /// A checkpoint's pipe with its unread bytes.
    init(buffered: [UInt8], hasReader: Bool, hasWriter: Bool) {
        buffer = buffered
        capacity = max(Pipe.defaultCapacity, buffered.count)
        self.hasReader = hasReader
        self.hasWriter = hasWriter
    }

    /// The bytes written and not yet read.
    var unreadBytes: [UInt8] { Array(buffer[readOffset...]) }

    var count: Int { buffer.count - readOffset }
    var isEmpty: Bool { count == 0 }
    var room: Int { max(0, capacity - count) }

    /// A number unique among live pipes, for `st_ino`.
    var inode: UInt64 { UInt64(UInt(bitPattern: ObjectIdentifier(self).hashValue)) }

    /// F_SETPIPE_SZ: at least the bytes buffered now, rounded up to a power of two of pages.
    func resize(to requested: Int) -> Int? {
        guard requested <= Self.maximumCapacity else { return nil }
        var size = 4096
        while size < requested { size <<= 1 }
        guard size >= count else { return nil }
        capacity = size
        changed.wakeAll()
        return size
    }

    /// Moves up to `destination.count` buffered bytes out.
    func read(into destination: UnsafeMutableRawBufferPointer) -> Int {
        let count = min(destination.count, self.count)
        guard count > 0 else { return 0 }
        buffer.withUnsafeBytes { destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[readOffset..<readOffset + count])) }
        readOffset += count
        if readOffset == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            readOffset = 0
        } else if readOffset > 1 << 16 {
            buffer.removeFirst(readOffset)
            readOffset = 0
        }
        changed.wakeAll()
        return count
    }

    /// Appends what fits.
    func write(_ source: UnsafeRawBufferPointer) -> Int {
        let count = min(source.count, room)
        guard count > 0 else { return 0 }
        buffer.append(contentsOf: source.prefix(count))
        changed.wakeAll()
        return count
    }

    /// The last open file description of one end went away.
    func close(writeEnd: Bool) {
        if writeEnd { hasWriter = false } else { hasReader = false }
        changed.wakeAll()
    }
}
