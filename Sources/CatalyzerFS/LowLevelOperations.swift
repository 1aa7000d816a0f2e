import CFuse3
import Glibc

// The libfuse low-level callbacks. They are global functions because libfuse calls them as C
// function pointers; each finds the `Filesystem` through the session's userdata, asks it, and
// turns the answer into a FUSE reply. Every request gets exactly one reply.

/// The operations table handed to `fuse_session_new` (libfuse copies it).
func lowLevelOperations() -> fuse_lowlevel_ops {
    var operations = fuse_lowlevel_ops()
    operations.`init` = catalyzerfsInit
    operations.lookup = catalyzerfsLookup
    operations.forget = catalyzerfsForget
    operations.forget_multi = catalyzerfsForgetMulti
    operations.getattr = catalyzerfsGetattr
    operations.open = catalyzerfsOpen
    operations.read = catalyzerfsRead
    operations.release = catalyzerfsRelease
    operations.opendir = catalyzerfsOpendir
    operations.readdir = catalyzerfsReaddir
    operations.releasedir = catalyzerfsReleasedir
    operations.statfs = catalyzerfsStatfs
    return operations
}

private func filesystem(_ request: fuse_req_t?) -> Filesystem {
    Unmanaged<Filesystem>.fromOpaque(fuse_req_userdata(request)!).takeUnretainedValue()
}

/// Stores a retained object in a file handle; `takeHandle` gives it back at release.
private func storeHandle(_ object: AnyObject, in info: UnsafeMutablePointer<fuse_file_info>) {
    info.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(object).toOpaque()))
}

private func handle<T: AnyObject>(_ info: UnsafeMutablePointer<fuse_file_info>?, as type: T.Type) -> Unmanaged<T>? {
    guard let info, let pointer = UnsafeRawPointer(bitPattern: UInt(info.pointee.fh)) else { return nil }
    return Unmanaged<T>.fromOpaque(pointer)
}

/// Answers with an errno (0: success with no data).
private func fail(_ request: fuse_req_t?, _ code: Int32) {
    _ = fuse_reply_err(request, code)
}

private func reply<T>(_ request: fuse_req_t?, _ result: Result<T, Errno>, _ body: (T) -> Void) {
    switch result {
    case let .success(value): body(value)
    case let .failure(error): fail(request, error.code)
    }
}

private func catalyzerfsInit(_ userdata: UnsafeMutableRawPointer?, _ connection: UnsafeMutablePointer<fuse_conn_info>?) {
    let filesystem = Unmanaged<Filesystem>.fromOpaque(userdata!).takeUnretainedValue()
    guard let connection else { return }
    // The kernel also caps readahead at the bdi's read_ahead_kb, which FilesystemDaemon raises.
    connection.pointee.max_readahead = UInt32(clamping: filesystem.readahead)
}

private func catalyzerfsLookup(_ request: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
    let filesystem = filesystem(request)
    reply(request, filesystem.lookup(parent: parent, name: String(cString: name!))) { found in
        var entry = fuse_entry_param()
        entry.ino = found.inode
        entry.attr = filesystem.attributes(found.node, inode: found.inode)
        entry.attr_timeout = filesystem.attributeTimeout(found.node)
        entry.entry_timeout = found.timeout
        fuse_reply_entry(request, &entry)
    }
}

private func catalyzerfsForget(_ request: fuse_req_t?, _ inode: fuse_ino_t, _ lookups: UInt64) {
    filesystem(request).forget(inode, count: lookups)
    fuse_reply_none(request)
}

private func catalyzerfsForgetMulti(_ request: fuse_req_t?, _ count: Int, _ forgets: UnsafeMutablePointer<fuse_forget_data>?) {
    let filesystem = filesystem(request)
    for forgotten in UnsafeBufferPointer(start: forgets, count: forgets == nil ? 0 : count) {
        filesystem.forget(forgotten.ino, count: forgotten.nlookup)
    }
    fuse_reply_none(request)
}

private func catalyzerfsGetattr(_ request: fuse_req_t?, _ inode: fuse_ino_t, _ info: UnsafeMutablePointer<fuse_file_info>?) {
    let filesystem = filesystem(request)
    reply(request, filesystem.attributes(inode)) { found in
        var attributes = found.attributes
        fuse_reply_attr(request, &attributes, found.timeout)
    }
}

private func catalyzerfsOpen(_ request: fuse_req_t?, _ inode: fuse_ino_t, _ info: UnsafeMutablePointer<fuse_file_info>?) {
    guard let info else { return fail(request, EINVAL) }
    if info.pointee.flags & O_ACCMODE != O_RDONLY { return fail(request, EROFS) }
    reply(request, filesystem(request).open(inode)) { file in
        catalyzerfs_set_open_flags(info, file.keepCache ? 1 : 0, file.keepCache ? 0 : 1)
        storeHandle(file, in: info)
        if fuse_reply_open(request, info) != 0 {
            // The opener was interrupted: no release will come for this handle.
            handle(info, as: OpenFile.self)?.release()
        }
    }
}

private func catalyzerfsRead(_ request: fuse_req_t?, _ inode: fuse_ino_t, _ size: Int, _ offset: off_t, _ info: UnsafeMutablePointer<fuse_file_info>?) {
    guard let file = handle(info, as: OpenFile.self)?.takeUnretainedValue() else { return fail(request, EBADF) }
    switch file.content {
    case let .bytes(bytes):
        let start = min(Int(max(offset, 0)), bytes.count)
        let end = min(start + size, bytes.count)
        bytes.withUnsafeBytes { raw in _ = fuse_reply_buf(request, raw.baseAddress.map { $0 + start }?.assumingMemoryBound(to: CChar.self), end - start) }
    case let .memory(image):
        reply(request, filesystem(request).readMemory(image, offset: Int64(offset), size: size)) { answer in
            if answer.pieces.isEmpty {
                _ = fuse_reply_buf(request, nil, 0)
                return
            }
            answer.pieces.withUnsafeBufferPointer { pieces in
                _ = fuse_reply_iov(request, pieces.baseAddress, Int32(pieces.count))
            }
            withExtendedLifetime(answer.chunks) {}
        }
    }
}

private func catalyzerfsRelease(_ request: fuse_req_t?, _ inode: fuse_ino_t, _ info: UnsafeMutablePointer<fuse_file_info>?) {
    handle(info, as: OpenFile.self)?.release()
    fuse_reply_err(request, 0)
}

private func catalyzerfsOpendir(_ request: fuse_req_t?, _ inode: fuse_ino_t, _ info: UnsafeMutablePointer<fuse_file_info>?) {
    guard let info else { return fail(request, EINVAL) }
    reply(request, filesystem(request).openDirectory(inode)) { directory in
        storeHandle(directory, in: info)
        if fuse_reply_open(request, info) != 0 {
            handle(info, as: OpenDirectory.self)?.release()
        }
    }
}

private func catalyzerfsReaddir(_ request: fuse_req_t?, _ inode: fuse_ino_t, _ size: Int, _ offset: off_t, _ info: UnsafeMutablePointer<fuse_file_info>?) {
    guard let directory = handle(info, as: OpenDirectory.self)?.takeUnretainedValue() else { return fail(request, EBADF) }
    var buffer = [CChar](repeating: 0, count: size)
    var used = 0
    var index = Int(max(offset, 0))
    while index < directory.entries.count {
        let entry = directory.entries[index]
        var attributes = stat()
        attributes.st_ino = UInt(entry.inode)
        attributes.st_mode = entry.isDirectory ? S_IFDIR : S_IFREG
        // The offset stored with an entry is where the next readdir continues.
        let needed = buffer.withUnsafeMutableBufferPointer { raw in
            fuse_add_direntry(request, raw.baseAddress! + used, size - used, entry.name, &attributes, off_t(index + 1))
        }
        if needed > size - used { break }
        used += needed
        index += 1
    }
    fuse_reply_buf(request, buffer, used)
}

private func catalyzerfsReleasedir(_ request: fuse_req_t?, _ inode: fuse_ino_t, _ info: UnsafeMutablePointer<fuse_file_info>?) {
    handle(info, as: OpenDirectory.self)?.release()
    fuse_reply_err(request, 0)
}

private func catalyzerfsStatfs(_ request: fuse_req_t?, _ inode: fuse_ino_t) {
    var info = statvfs()
    info.f_bsize = 4096
    info.f_frsize = 4096
    info.f_namemax = 255
    fuse_reply_statfs(request, &info)
}
