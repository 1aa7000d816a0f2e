import Glibc

/// Whether an open file is readable or writable now, and what a task waits on until that may
/// change: shared by poll, select and epoll.
enum FileReadiness {
    /// POLLIN/POLLOUT/POLLHUP/POLLERR of `file` now (host fds are asked with a zero-timeout poll).
    static func current(_ file: OpenFile, events: Int16 = Int16(POLLIN | POLLOUT)) -> Int16 {
        switch file.backing {
        case .host(let fd, _):
            var entry = pollfd(fd: fd, events: events, revents: 0)
            return Glibc.poll(&entry, 1, 0) > 0 ? entry.revents : 0
        case .memory:
            return Int16(POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM)
        case .pipe(let pipe):
            if file.isWritable {
                guard pipe.hasReader else { return Int16(POLLERR) }
                // Out of memory, an empty pipe is still writable: the write reports ENOMEM.
                return pipe.room >= Pipe.atomicWriteSize || pipe.room == pipe.capacity || pipe.isOutOfMemory
                    ? Int16(POLLOUT | POLLWRNORM) : 0
            }
            return (pipe.isEmpty ? 0 : Int16(POLLIN | POLLRDNORM)) | (pipe.hasWriter ? 0 : Int16(POLLHUP))
        case .special(let object):
            return object.readiness()
        }
    }

    /// The wait queue woken when `file`'s state changes (nil for host fds and regular files).
    static func changes(of file: OpenFile) -> WaitQueue? {
        switch file.backing {
        case .pipe(let pipe): return pipe.changed
        case .special(let object): return object.changed
        case .host, .memory: return nil
        }
    }

    /// Adds to `wait` what wakes a task waiting for `file` to change: its wait queue, a time it
    /// changes by itself, or its host fd with `events`.
    static func addWaitTargets(of file: OpenFile, events: Int16, to wait: inout Wait) {
        switch file.backing {
        case .host(let fd, _):
            wait.hostDescriptors.append(pollfd(fd: fd, events: events, revents: 0))
        case .memory:
            break
        case .pipe(let pipe):
            wait.queues.append(pipe.changed)
        case .special(let object):
            if let poll = object as? EventPoll {
                poll.addWaitTargets(to: &wait)
            } else {
                wait.queues.append(object.changed)
            }
            if let fd = object.hostPollDescriptor { wait.hostDescriptors.append(pollfd(fd: fd, events: events | 0x2000, revents: 0)) }
            if let change = object.nextChange { wait.deadline = min(wait.deadline ?? .max, change) }
        }
    }
}
