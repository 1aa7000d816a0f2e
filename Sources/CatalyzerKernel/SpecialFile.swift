import Glibc

/// A file the monitor serves entirely itself (eventfd, timerfd, sockets, epoll): what poll and
/// epoll ask of it, and its read and write. Reads and writes that must wait call `task.block`.
protocol SpecialFile: AnyObject {
    /// `/proc/self/fd` style name, e.g. "anon_inode:[eventfd]".
    var name: String { get }
    /// The st_mode file type bits fstat reports (0 for anonymous inodes, S_IFSOCK for sockets).
    var fileType: mode_t { get }
    /// POLLIN/POLLOUT/POLLHUP/POLLERR as they hold now.
    func readiness() -> Int16
    /// Woken whenever `readiness()` may have changed.
    var changed: WaitQueue { get }
    /// A time (host-monotonic ns) at which readiness changes by itself, for timerfds.
    var nextChange: UInt64? { get }
    func read(_ task: Task, _ file: OpenFile, into vectors: [iovec]) throws(Errno) -> Int
    func write(_ task: Task, _ file: OpenFile, from vectors: [iovec]) throws(Errno) -> Int
    /// The last open file description referring to it went away.
    func lastDescriptionClosed()
    /// The bytes a write can take now without waiting, after waiting for some room (or EAGAIN
    /// when `nonblocking`); nil when writes are not bounded that way. sendfile and splice ask
    /// first, so they never read more from their source than they can write: a call that waits
    /// runs again from the start, and what it read before would be read twice.
    func waitForWriteRoom(_ task: Task, nonblocking: Bool) throws(Errno) -> Int?
    /// A host fd whose readiness is the file's (a socket the monitor holds outside the sandbox):
    /// waits poll it beside `changed`.
    var hostPollDescriptor: Int32? { get }
}

extension SpecialFile {
    var fileType: mode_t { 0 }
    var nextChange: UInt64? { nil }
    var hostPollDescriptor: Int32? { nil }
    func lastDescriptionClosed() {}
    func waitForWriteRoom(_ task: Task, nonblocking: Bool) throws(Errno) -> Int? { nil }
}

extension Task {
    func readSpecial(_ file: OpenFile, into vectors: [iovec]) throws(Errno) -> Int {
        guard case .special(let object) = file.backing else { throw Errno.EINVAL }
        return try object.read(self, file, into: vectors)
    }

    func writeSpecial(_ file: OpenFile, from vectors: [iovec]) throws(Errno) -> Int {
        guard case .special(let object) = file.backing else { throw Errno.EINVAL }
        return try object.write(self, file, from: vectors)
    }
}

/// Copies between host buffers (guest memory already translated) and a byte array.
enum Buffers {
    static func gather(_ vectors: [iovec], limit: Int = .max) -> [UInt8] {
        var bytes: [UInt8] = []
        for vector in vectors where bytes.count < limit {
            let take = min(vector.iov_len, limit - bytes.count)
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: vector.iov_base, count: take))
        }
        return bytes
    }

    @discardableResult
    static func scatter(_ bytes: some Collection<UInt8>, into vectors: [iovec]) -> Int {
        var source = bytes[...]
        var total = 0
        for vector in vectors where !source.isEmpty {
            let take = min(vector.iov_len, source.count)
            let chunk = source.prefix(take)
            UnsafeMutableRawBufferPointer(start: vector.iov_base, count: take).copyBytes(from: chunk)
            source = source.dropFirst(take)
            total += take
        }
        return total
    }

    static func totalLength(_ vectors: [iovec]) -> Int { vectors.reduce(0) { $0 + $1.iov_len } }
}
