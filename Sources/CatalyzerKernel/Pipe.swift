/// A pipe's buffer. Processes of a sandbox run one at a time (a forked child runs to completion
/// before its parent continues, see SysFork.swift), so nothing can ever block on a pipe: a reader
/// that finds it empty gets end-of-file, and the buffer holds up to `capacity` bytes so that a
/// producer can finish before its consumer starts.
final class Pipe {
    static let capacity = 16 << 20
    private var buffer: [UInt8] = []
    private var readOffset = 0
    private(set) var hasReader = true
    private(set) var hasWriter = true

    init() {}

    /// A checkpoint's pipe with its unread bytes.
    init(buffered: [UInt8], hasReader: Bool, hasWriter: Bool) {
        buffer = buffered
        self.hasReader = hasReader
        self.hasWriter = hasWriter
    }

    /// The bytes written and not yet read.
    var unreadBytes: [UInt8] { Array(buffer[readOffset...]) }

    /// Whether no bytes are buffered.
    var isEmpty: Bool { buffer.count == readOffset }

    /// A number unique among live pipes, for `st_ino`.
    var inode: UInt64 { UInt64(UInt(bitPattern: ObjectIdentifier(self).hashValue)) }

    /// Moves up to `destination.count` buffered bytes out; 0 means end-of-file (or nothing yet).
    func read(into destination: UnsafeMutableRawBufferPointer) -> Int {
        let count = min(destination.count, buffer.count - readOffset)
        guard count > 0 else { return 0 }
        buffer.withUnsafeBytes { destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[readOffset..<readOffset + count])) }
        readOffset += count
        if readOffset == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            readOffset = 0
        }
        return count
    }

    /// Appends what fits; 0 when there is no reader or no room.
    func write(_ source: UnsafeRawBufferPointer) -> Int {
        guard hasReader else { return 0 }
        let count = min(source.count, Self.capacity - (buffer.count - readOffset))
        guard count > 0 else { return 0 }
        buffer.append(contentsOf: source.prefix(count))
        return count
    }

    /// The last open file description of one end went away.
    func close(writeEnd: Bool) {
        if writeEnd { hasWriter = false } else { hasReader = false }
    }
}
