import Glibc

/// pipe(2) and pipe2(2); the buffer semantics are in Pipe.swift.
extension Task {
    func sysPipe(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        try makePipe(at: a[0], flags: 0)
    }

    func sysPipe2(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a.int32(1) & ~(O_CLOEXEC | O_NONBLOCK) == 0 else { throw Errno.EINVAL }
        return try makePipe(at: a[0], flags: a.int32(1))
    }

    private func makePipe(at address: UInt64, flags: Int32) throws(Errno) -> UInt64 {
        let pipe = Pipe(account: sandbox.memoryAccount)
        let name = "pipe:[\(pipe.inode)]"
        let reader = OpenFile(backing: .pipe(pipe), guestPath: name, statusFlags: O_RDONLY | (flags & O_NONBLOCK))
        let writer = OpenFile(backing: .pipe(pipe), guestPath: name, statusFlags: O_WRONLY | (flags & O_NONBLOCK))
        let closeOnExec = flags & O_CLOEXEC != 0
        let readFD = try files.install(reader, closeOnExec: closeOnExec)
        guard let writeFD = try? files.install(writer, closeOnExec: closeOnExec) else {
            try? files.close(readFD)
            throw Errno.EMFILE
        }
        do throws(Errno) {
            try space.storeStruct((readFD, writeFD), at: address)
        } catch {
            try? files.close(readFD)
            try? files.close(writeFD)
            throw error
        }
        return 0
    }
}
