import Glibc

/// Advisory file locks, shared by the sandbox's processes as Linux's are system-wide: POSIX record
/// locks (fcntl F_SETLK/F_SETLKW/F_GETLK, owned by a process, released when it closes any fd of
/// the file or exits), open file description locks (F_OFD_*, owned by the description) and
/// flock(2) locks (owned by the description, whole file, independent of the other two).
///
/// Owners are held weakly: a lock whose process or description is gone no longer exists, which
/// releases a process's locks when it exits without the exit path having to know about locks.
/// Processes run one at a time today, so a blocking request (F_SETLKW, flock without LOCK_NB)
/// that conflicts could never be granted: it fails with EDEADLK, Linux's answer to a deadlock.
final class FileLockTable {
    enum Kind { case posix, openFileDescription, flock }

    /// Which file a lock is on: a /tmp inode, a host file's device and inode, or a pipe.
    enum FileKey: Hashable {
        case memory(UInt64)
        case host(device: UInt64, inode: UInt64)
        case object(ObjectIdentifier)
    }

    struct Lock {
        let kind: Kind
        /// `[start, end)`; `end` is `UInt64.max` for "to the end of the file, however long".
        var start: UInt64
        var end: UInt64
        let exclusive: Bool
        weak var owner: AnyObject?
        /// The owning process's pid, for F_GETLK (POSIX locks; -1 for the others).
        let pid: Int32
    }

    private var locks: [FileKey: [Lock]] = [:]

    /// The first live lock of another owner that conflicts with the request, if any.
    func conflict(on key: FileKey, kind: Kind, start: UInt64, end: UInt64, exclusive: Bool, owner: AnyObject) -> Lock? {
        purge(key)
        return locks[key]?.first { lock in
            Self.sameNamespace(lock.kind, kind) && lock.owner !== owner && lock.start < end && start < lock.end
                && (lock.exclusive || exclusive)
        }
    }

    /// Takes (or with `exclusive == nil` releases) `[start, end)` for `owner`, replacing whatever
    /// it held there (splitting its locks as needed); EAGAIN if another owner's lock conflicts.
    func set(on key: FileKey, kind: Kind, start: UInt64, end: UInt64, exclusive: Bool?, owner: AnyObject, pid: Int32) throws(Errno) {
        if let exclusive, conflict(on: key, kind: kind, start: start, end: end, exclusive: exclusive, owner: owner) != nil {
            throw Errno.EAGAIN
        }
        purge(key)
        var kept: [Lock] = []
        for lock in locks[key] ?? [] {
            guard lock.kind == kind, lock.owner === owner, lock.start < end, start < lock.end else {
                kept.append(lock)
                continue
            }
            if lock.start < start {
                var before = lock
                before.end = start
                kept.append(before)
            }
            if lock.end > end {
                var after = lock
                after.start = end
                kept.append(after)
            }
        }
        if let exclusive {
            kept.append(Lock(kind: kind, start: start, end: end, exclusive: exclusive, owner: owner, pid: pid))
        }
        locks[key] = kept.isEmpty ? nil : kept
    }

    /// Drops every lock `owner` holds on `key` of `kind` (a POSIX owner closing an fd of the file).
    func release(on key: FileKey, kind: Kind, owner: AnyObject) {
        guard let held = locks[key] else { return }
        let kept = held.filter { $0.owner != nil && !($0.kind == kind && $0.owner === owner) }
        locks[key] = kept.isEmpty ? nil : kept
    }

    private func purge(_ key: FileKey) {
        guard let held = locks[key], held.contains(where: { $0.owner == nil }) else { return }
        let kept = held.filter { $0.owner != nil }
        locks[key] = kept.isEmpty ? nil : kept
    }

    /// POSIX and OFD locks conflict with each other; flock locks only with flock locks.
    private static func sameNamespace(_ a: Kind, _ b: Kind) -> Bool { (a == .flock) == (b == .flock) }
}

extension Task {
    private static let getLock: Int32 = 5, setLock: Int32 = 6, setLockWait: Int32 = 7
    private static let getOFDLock: Int32 = 36, setOFDLock: Int32 = 37, setOFDLockWait: Int32 = 38
    static let lockCommands: Set<Int32> = [getLock, setLock, setLockWait, getOFDLock, setOFDLock, setOFDLockWait]

    /// The key locks on `file` are filed under.
    func lockKey(_ file: OpenFile) throws(Errno) -> FileLockTable.FileKey {
        switch file.backing {
        case .memory(let node): return .memory(node.inode)
        case .pipe(let pipe): return .object(ObjectIdentifier(pipe))
        case .special(let object): return .object(ObjectIdentifier(object))
        case .host(let fd, _):
            var status = stat()
            guard fstat(fd, &status) == 0 else { throw Errno.lastHostError }
            return .host(device: UInt64(status.st_dev), inode: UInt64(status.st_ino))
        }
    }

    /// fcntl's record-lock commands on `struct flock` at `address`.
    func recordLock(_ file: OpenFile, command: Int32, address: UInt64) throws(Errno) -> UInt64 {
        var request = try space.read(address, count: 32)
        let type = Int32(request.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: Int16.self) })
        let whence = Int32(request.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 2, as: Int16.self) })
        let offset = request.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: Int64.self) }
        let length = request.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: Int64.self) }
        let requestPID = request.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 24, as: Int32.self) }
        let isOFD = command >= Self.getOFDLock
        if isOFD && requestPID != 0 { throw Errno.EINVAL }
        let kind: FileLockTable.Kind = isOFD ? .openFileDescription : .posix
        let owner: AnyObject = isOFD ? file : group

        let base: Int64
        switch whence {
        case SEEK_SET: base = 0
        case SEEK_CUR:
            if case .host(let fd, _) = file.backing { base = Int64(lseek(fd, 0, SEEK_CUR)) } else { base = Int64(file.position) }
        case SEEK_END: base = Int64(try status(of: file).st_size)
        default: throw Errno.EINVAL
        }
        var (start, overflow) = base.addingReportingOverflow(offset)
        guard !overflow else { throw Errno.EOVERFLOW }
        var end: UInt64
        if length > 0 {
            let (last, overflow) = start.addingReportingOverflow(length)
            end = overflow ? UInt64.max : UInt64(last)
        } else if length == 0 {
            end = UInt64.max
        } else {
            end = UInt64(max(start, 0))
            start += length
        }
        guard start >= 0 else { throw Errno.EINVAL }
        let lockStart = UInt64(start)
        if end == UInt64(Int64.max) { end = UInt64.max }

        let exclusive: Bool?
        switch Int16(truncatingIfNeeded: type) {
        case Int16(F_RDLCK): exclusive = false
        case Int16(F_WRLCK): exclusive = true
        case Int16(F_UNLCK): exclusive = nil
        default: throw Errno.EINVAL
        }
        let key = try lockKey(file)
        let locks = filesystem.locks
        if command == Self.getLock || command == Self.getOFDLock {
            guard let exclusive else { throw Errno.EINVAL }
            guard let held = locks.conflict(on: key, kind: kind, start: lockStart, end: end, exclusive: exclusive, owner: owner) else {
                request.withUnsafeMutableBytes { $0.storeBytes(of: Int16(F_UNLCK), toByteOffset: 0, as: Int16.self) }
                try space.write(request, to: address)
                return 0
            }
            request.withUnsafeMutableBytes { raw in
                raw.storeBytes(of: Int16(held.exclusive ? F_WRLCK : F_RDLCK), toByteOffset: 0, as: Int16.self)
                raw.storeBytes(of: Int16(SEEK_SET), toByteOffset: 2, as: Int16.self)
                raw.storeBytes(of: Int64(held.start), toByteOffset: 8, as: Int64.self)
                raw.storeBytes(of: held.end == UInt64.max ? Int64(0) : Int64(held.end - held.start), toByteOffset: 16, as: Int64.self)
                raw.storeBytes(of: held.pid, toByteOffset: 24, as: Int32.self)
            }
            try space.write(request, to: address)
            return 0
        }
        if exclusive == true && !file.isWritable { throw Errno.EBADF }
        if exclusive == false && !file.isReadable { throw Errno.EBADF }
        do throws(Errno) {
            try locks.set(on: key, kind: kind, start: lockStart, end: end, exclusive: exclusive, owner: owner,
                          pid: isOFD ? -1 : pid)
        } catch {
            // Waiting could only end when the holder runs, and it cannot while this process waits.
            throw command == Self.setLockWait || command == Self.setOFDLockWait ? Errno.EDEADLK : error
        }
        return 0
    }

    /// flock(2): a whole-file lock owned by the open file description.
    func sysFlock(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let file = try files.file(a.int32(0))
        let operation = a.int32(1)
        let shared: Int32 = 1, exclusive: Int32 = 2, nonBlocking: Int32 = 4, unlock: Int32 = 8
        let mode: Bool?
        switch operation & ~nonBlocking {
        case shared: mode = false
        case exclusive: mode = true
        case unlock: mode = nil
        default: throw Errno.EINVAL
        }
        do throws(Errno) {
            try filesystem.locks.set(on: try lockKey(file), kind: .flock, start: 0, end: UInt64.max, exclusive: mode,
                                     owner: file, pid: -1)
        } catch {
            throw operation & nonBlocking != 0 ? Errno.EAGAIN : Errno.EDEADLK
        }
        return 0
    }

    /// Closing any fd of a file releases the process's POSIX locks on it (close(2)).
    func releasePOSIXLocks(_ file: OpenFile) {
        guard let key = try? lockKey(file) else { return }
        filesystem.locks.release(on: key, kind: .posix, owner: group)
    }
}
