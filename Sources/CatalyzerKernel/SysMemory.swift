import CatalyzerKVM
import Glibc

/// Memory syscalls: brk, mmap (anonymous and private file mappings), munmap, mprotect, mremap.
extension Task {
    func sysBrk(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let requested = a[0]
        guard requested >= space.breakStart, let newTop = Page.up(requested),
              let oldTop = Page.up(space.breakEnd) else { return space.breakEnd }
        if newTop > oldTop {
            do throws(Errno) {
                try space.map(oldTop, newTop, protection: .readWrite, name: "[heap]")
            } catch {
                return space.breakEnd  // Linux reports failure by returning the unchanged break
            }
        } else if newTop < oldTop {
            space.unmap(newTop, oldTop)
        }
        space.breakEnd = requested
        return requested
    }

    func sysMmap(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let hint = a[0], length = a[1], flags = a.int32(3), fd = a.int32(4), offset = a[5]
        let protection = Protection(rawValue: a[2])
        guard length > 0, let size = Page.up(length), Page.isAligned(offset),
              protection.isSubset(of: [.read, .write, .execute]) else { throw Errno.EINVAL }
        guard size < SystemLayout.userLimit else { throw Errno.ENOMEM }
        let sharing = flags & MAP_TYPE
        guard sharing == MAP_PRIVATE || sharing == MAP_SHARED || sharing == MAP_SHARED_VALIDATE else { throw Errno.EINVAL }
        let anonymous = flags & MAP_ANONYMOUS != 0
        var source: OpenFile?
        if !anonymous {
            let file = try files.file(fd)
            guard file.isReadable else { throw Errno.EACCES }
            // A shared writable mapping writes to the file: it must be open for writing. Only /tmp
            // files (and memfds) can be; rootfs files are read-only.
            if sharing != MAP_PRIVATE && protection.contains(.write) && !file.isWritable { throw Errno.EACCES }
            guard offset <= UInt64(Int64.max) - size else { throw Errno.EOVERFLOW }
            source = file
        }

        let fileRange = try source.flatMap { (file) throws(Errno) in try Self.fileRange(of: file, offset: offset) }
        let start: UInt64
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
            guard Page.isAligned(hint), hint >= SystemLayout.userMinimum,
                  hint <= SystemLayout.userLimit - size else { throw Errno.EINVAL }
            if flags & MAP_FIXED_NOREPLACE != 0 && !space.isFree(hint, hint + size) { throw Errno.EEXIST }
            if sharing == MAP_PRIVATE, let source, let fileRange, space.holdsPristineCopy(of: fileRange, hint, hint + size) {
                try space.remapPristineCopy(of: fileRange, hint, hint + size, protection: protection, name: source.guestPath)
                return hint
            }
            space.unmap(hint, hint + size)
            start = hint
        } else if hint != 0, Page.isAligned(hint), hint <= SystemLayout.userLimit - size, space.isFree(hint, hint + size) {
            start = hint
        } else {
            guard let free = space.findFree(length: size) else { throw Errno.ENOMEM }
            start = free
        }
        var sharedPages: SharedMapping?
        if let source, sharing != MAP_PRIVATE, case .memory(let node) = source.backing {
            sharedPages = try sharedMapping(of: node, offset: offset, size: size)
        }
        try space.map(start, start + size, protection: protection, name: source?.guestPath ?? "anonymous",
                      pristineCopy: sharing == MAP_PRIVATE ? fileRange : nil, shared: sharedPages)
        if let source, sharedPages == nil {
            do throws(Errno) {
                // A private file mapping is a copy of the file's bytes (bytes past EOF stay zero).
                try copyFile(source, at: Int64(offset), intoMapping: start, size: Int(size))
            } catch {
                space.unmap(start, start + size)
                throw error
            }
        }
        return start
    }

    /// Fills a new mapping with the file's bytes from `offset`. Not one `read`: that is capped at
    /// `maximumTransfer` and makes one host buffer per run of contiguous guest pages, and once the
    /// program has freed memory the pages of a mapping are scattered, so a mapping over 4 MiB
    /// could need more than IOV_MAX (1024) buffers, which preadv refuses with EINVAL. Batches of
    /// at most IOV_MAX buffers go to the host until the mapping is full or the file ends.
    private func copyFile(_ file: OpenFile, at offset: Int64, intoMapping start: UInt64, size: Int) throws(Errno) {
        let buffers = try space.hostBuffers(start, length: size, access: .loader)
        var position = offset
        for batchStart in stride(from: 0, to: buffers.count, by: Self.maximumIOVectors) {
            let batch = buffers[batchStart..<min(batchStart + Self.maximumIOVectors, buffers.count)]
                .map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
            let wanted = batch.reduce(0) { $0 + $1.iov_len }
            let got = try read(file, into: batch, at: position)
            if got < wanted { return }  // end of file: the rest stays zero
            position += Int64(got)
        }
    }

    /// The pages of a /tmp file for a `MAP_SHARED` mapping of `[offset, offset+size)`: the file's
    /// bytes move into shared memory (see `SharedFileMemory`), which is attached to this VM.
    /// The memfd is extended to cover the mapping (past the file's end Linux would raise SIGBUS;
    /// here those pages read as zero and are not part of the file).
    private func sharedMapping(of node: MemoryNode, offset: UInt64, size: UInt64) throws(Errno) -> SharedMapping {
        guard !node.isDirectory, !node.isSymlink else { throw Errno.ENODEV }
        let memory = try node.makeShared(reserving: filesystem.tmp.capacity)
        guard offset + size <= UInt64(memory.reserved) else { throw Errno.ENOMEM }
        let extent = Int(offset + size)
        // Pages past the file's end are not the file's bytes, which /tmp charges; they cost the
        // host all the same once written through the mapping, so they are charged here.
        let pastEnd = extent - max(memory.backedLength, Int(Page.up(UInt64(memory.length)) ?? UInt64(extent)))
        if pastEnd > 0 { try memory.chargeBeyondEnd(pastEnd, to: sandbox.memoryAccount) }
        try memory.ensureBacked(extent)
        let slotSize = (extent + (2 << 20) - 1) & ~((2 << 20) - 1)
        let window: UInt64
        do {
            window = try space.memory.attach(host: memory.base, size: min(slotSize, memory.reserved), owner: memory)
        } catch {
            throw Errno.ENOMEM
        }
        return SharedMapping(memory: memory, window: window, offset: offset)
    }

    /// msync(2): shared mappings already are the file's pages, so there is nothing to write back;
    /// the range must be mapped (ENOMEM otherwise) and the flags valid.
    func sysMsync(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let async: Int32 = 1, invalidate: Int32 = 2, sync: Int32 = 4
        let flags = a.int32(2)
        guard flags & ~(async | invalidate | sync) == 0, flags & (async | sync) != (async | sync),
              Page.isAligned(a[0]) else { throw Errno.EINVAL }
        let (start, end) = try AddressSpace.userRange(a[0], length: a[1], error: Errno.ENOMEM)
        guard space.isFullyMapped(start, end) else { throw Errno.ENOMEM }
        return 0
    }

    /// IOV_MAX: the most buffers one preadv/pwritev takes.
    static let maximumIOVectors = 1024

    /// The identity of a rootfs file mapped from `offset`; nil for /tmp files, pipes and devices,
    /// whose contents can change under a mapping.
    private static func fileRange(of file: OpenFile, offset: UInt64) throws(Errno) -> FileRange? {
        guard case .host(let fd, true) = file.backing else { return nil }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw Errno.lastHostError }
        guard status.st_mode & S_IFMT == S_IFREG else { return nil }
        return FileRange(device: UInt64(status.st_dev), inode: UInt64(status.st_ino), offset: offset)
    }

    func sysMunmap(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        guard a[1] > 0 else { throw Errno.EINVAL }
        let (start, end) = try AddressSpace.userRange(a[0], length: a[1])
        space.unmap(start, end)
        return 0
    }

    func sysMprotect(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (start, end) = try AddressSpace.userRange(a[0], length: a[1], error: Errno.ENOMEM)
        let protection = Protection(rawValue: a[2] & ~0x0300_0000)  // ignore PROT_GROWSDOWN/UP
        guard protection.isSubset(of: [.read, .write, .execute]) else { throw Errno.EINVAL }
        if start == end { return 0 }
        try space.protect(start, end, protection: protection)
        return 0
    }

    func sysMremap(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let old = a[0], flags = a.int32(3)
        guard flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED) == 0, a[2] > 0 else { throw Errno.EINVAL }
        let (_, oldEnd) = try AddressSpace.userRange(old, length: a[1], error: Errno.EFAULT)
        let (_, newEnd) = try AddressSpace.userRange(old, length: a[2], error: Errno.ENOMEM)
        let oldSize = oldEnd - old, newSize = newEnd - old
        guard let index = space.regionIndex(containing: old), space.regions[index].end >= old + oldSize else {
            throw Errno.EFAULT
        }
        let region = space.regions[index]
        if flags & MREMAP_FIXED != 0 {
            let target = a[4]
            guard flags & MREMAP_MAYMOVE != 0 else { throw Errno.EINVAL }
            _ = try AddressSpace.userRange(target, length: newSize)
            space.unmap(target, target + newSize)
            return try moveMapping(old, oldSize: oldSize, newSize: newSize, to: target, region: region)
        }
        if newSize <= oldSize {
            space.unmap(old + newSize, old + oldSize)
            return old
        }
        if space.isFree(old + oldSize, old + newSize) {
            try space.map(old + oldSize, old + newSize, protection: region.protection, name: region.name)
            return old
        }
        guard flags & MREMAP_MAYMOVE != 0 else { throw Errno.ENOMEM }
        guard let target = space.findFree(length: newSize) else { throw Errno.ENOMEM }
        return try moveMapping(old, oldSize: oldSize, newSize: newSize, to: target, region: region)
    }

    private func moveMapping(_ old: UInt64, oldSize: UInt64, newSize: UInt64, to target: UInt64,
                             region: MemoryRegion) throws(Errno) -> UInt64 {
        let kept = min(oldSize, newSize)
        if newSize > oldSize {
            guard space.isFree(target + kept, target + newSize) else { throw Errno.ENOMEM }
        }
        try space.move(old, length: kept, to: target)
        space.unmap(old, old + oldSize)
        if newSize > kept {
            try space.map(target + kept, target + newSize, protection: region.protection, name: region.name)
        }
        return target
    }

    /// Advice is ignored except MADV_DONTNEED, whose effect programs rely on: anonymous pages read
    /// as zero afterwards. Their frames are freed and refilled with zero pages on the next touch.
    func sysMadvise(_ a: SyscallArguments) throws(Errno) -> UInt64 {
        let (start, end) = try AddressSpace.userRange(a[0], length: a[1])
        let dontNeed = 4
        if Int(a.int32(2)) == dontNeed {
            guard space.isFullyMapped(start, end) else { throw Errno.ENOMEM }
            space.discardAnonymousPages(start, end)
        }
        return 0
    }
}
