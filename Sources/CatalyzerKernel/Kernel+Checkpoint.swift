import CatalyzerKVM
import Glibc

/// A snapshot that cannot be restored here, or a sandbox that cannot be checkpointed now.
public struct RestoreError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Checkpoint and restore of the kernel state: `captureSnapshot()` turns a sandbox stopped at its
/// ready point into a `KernelSnapshot`; the static helpers rebuild files and /tmp from one for
/// `Kernel(restoring:vm:options:)`.
extension Kernel {
    /// The state of a sandbox that `run()` stopped at its ready point. Guest memory is the memfd
    /// `guestMemory` returns; together they are a checkpoint.
    public func captureSnapshot() throws -> KernelSnapshot {
        guard pendingExit == .readyPoint else {
            throw RestoreError("the sandbox is not stopped at its ready point; only a program waiting for its first request can be checkpointed")
        }
        let allocation = space.allocator.state
        let (openFiles, descriptors, pipes) = try captureFiles()
        return KernelSnapshot(
            memorySize: memorySize,
            vcpu: try cpu.captureState(),
            pendingSyscall: true,
            pageTableRoot: space.pageTables.root,
            allocator: .init(start: allocation.start, nextUnused: allocation.nextUnused, freed: allocation.freed),
            regions: space.regions.map { .init(start: $0.start, end: $0.end, protection: $0.protection.rawValue, name: $0.name) },
            breakStart: space.breakStart,
            breakEnd: space.breakEnd,
            clockPage: clock.pageAddress,
            clockFrame: clock.physicalPage,
            checkpointMonotonic: time.monotonicNanoseconds,
            process: .init(pid: pid, executablePath: executablePath, workingDirectory: workingDirectory,
                           uid: credentials.uid, gid: credentials.gid, taskName: taskName,
                           signalActions: signalActions.sorted { $0.key < $1.key }.map { .init(signal: $0.key, action: $0.value) },
                           signalMask: signalMask, fileCreationMask: fileCreationMask, nextPID: processes.nextPID,
                           zombies: processes.zombies.sorted { $0.key < $1.key }.map { .init(pid: $0.key, parent: $0.value.parent, status: $0.value.status) }),
            files: openFiles,
            descriptors: descriptors,
            pipes: pipes,
            tmp: try captureTmp(openFiles: openFiles),
            rootfs: (filesystem.dependencies ?? RootfsDependencies()).fingerprint(rootDirectory: filesystem.rootDirectory))
    }

    /// The guest memory a checkpoint stores: the memfd of a cold-started sandbox.
    public var guestMemory: GuestMemory { space.memory }

    private func captureFiles() throws -> ([KernelSnapshot.File], [KernelSnapshot.Descriptor], [KernelSnapshot.PipeState]) {
        var records: [KernelSnapshot.File] = []
        var indexOfFile: [ObjectIdentifier: Int] = [:]
        var pipes: [KernelSnapshot.PipeState] = []
        var indexOfPipe: [ObjectIdentifier: Int] = [:]
        var descriptors: [KernelSnapshot.Descriptor] = []
        for entry in files.allEntries {
            let file = entry.file
            if let index = indexOfFile[ObjectIdentifier(file)] {
                descriptors.append(.init(fd: entry.fd, file: index, closeOnExec: entry.closeOnExec))
                continue
            }
            let kind: KernelSnapshot.File.Kind
            if let stream = file.standardStream {
                kind = .standardStream(stream)
            } else if let reconnection = file.reconnection {
                switch reconnection.target {
                case .rootfs(let path, let offset): kind = .rootfs(path: path, offset: offset)
                case .hostDevice(let path): kind = .hostDevice(path: path)
                }
            } else {
                switch file.backing {
                case .host(let fd, _):
                    switch filesystem.locate(file.guestPath) {
                    case .rootfs(let path):
                        let offset = lseek(fd, 0, SEEK_CUR)
                        kind = .rootfs(path: path, offset: Int64(max(0, offset)))
                    case .hostDevice(let path):
                        kind = .hostDevice(path: path)
                    case .memory, .executableLink:
                        throw RestoreError("fd \(entry.fd) (\(file.guestPath)) is a host file catalyzer cannot reopen after a restore")
                    }
                case .memory(let node):
                    kind = .tmp(inode: node.inode, position: file.position)
                case .pipe(let pipe):
                    let key = ObjectIdentifier(pipe)
                    if indexOfPipe[key] == nil {
                        indexOfPipe[key] = pipes.count
                        pipes.append(.init(buffered: pipe.unreadBytes, hasReader: pipe.hasReader, hasWriter: pipe.hasWriter))
                    }
                    kind = .pipe(index: indexOfPipe[key]!)
                }
            }
            indexOfFile[ObjectIdentifier(file)] = records.count
            descriptors.append(.init(fd: entry.fd, file: records.count, closeOnExec: entry.closeOnExec))
            records.append(.init(kind: kind, guestPath: file.guestPath, statusFlags: file.statusFlags))
        }
        return (records, descriptors, pipes)
    }

    /// Every /tmp node reachable from its root, plus unlinked files that are still open.
    private func captureTmp(openFiles: [KernelSnapshot.File]) throws -> KernelSnapshot.TmpFilesystem {
        // A shared mapping's pages are outside guest RAM (an extra memory slot), which an image
        // does not hold.
        if let region = space.regions.first(where: { $0.shared != nil }) {
            throw RestoreError("\(region.name) is mapped MAP_SHARED at 0x\(hex(region.start)); a sandbox with shared file mappings cannot be checkpointed")
        }
        var nodes: [KernelSnapshot.TmpNode] = []
        var seen: Set<UInt64> = []
        func visit(_ node: MemoryNode) {
            guard seen.insert(node.inode).inserted else { return }
            var record = KernelSnapshot.TmpNode(inode: node.inode, mode: node.mode, modifiedSeconds: Int64(node.modified.tv_sec),
                                                modifiedNanoseconds: Int64(node.modified.tv_nsec), data: nil, children: [])
            record.accessedSeconds = Int64(node.accessed.tv_sec)
            record.accessedNanoseconds = Int64(node.accessed.tv_nsec)
            record.changedSeconds = Int64(node.changed.tv_sec)
            record.changedNanoseconds = Int64(node.changed.tv_nsec)
            record.owner = node.owner
            record.group = node.group
            var sorted: [(key: String, value: MemoryNode)] = []
            switch node.content {
            case .file:
                record.data = node.fileBytes ?? []
            case .symlink(let target):
                record.symlinkTarget = target
            case .directory(let children):
                sorted = children.sorted { $0.key < $1.key }
                record.children = sorted.map { ($0.key, $0.value.inode) }
            }
            nodes.append(record)
            for (_, child) in sorted { visit(child) }
        }
        visit(filesystem.tmp.root)
        visit(filesystem.tmp.sharedMemoryRoot)
        for entry in files.allEntries {
            if case .memory(let node) = entry.file.backing { visit(node) }
        }
        return .init(capacity: filesystem.tmp.capacity, nextInode: filesystem.tmp.nextInode, nodes: nodes)
    }

    /// The rootfs (checked against the checkpoint's fingerprint) and the checkpoint's /tmp.
    static func restoreFilesystem(_ snapshot: KernelSnapshot) throws -> (Filesystem, tmpNodes: [UInt64: MemoryNode]) {
        let rootfs = snapshot.rootfs
        var status = stat()
        guard stat(rootfs.path, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
            throw RestoreError("the checkpoint's rootfs \(rootfs.path) is not a directory any more; restore needs the rootfs the function was checkpointed with")
        }
        let filesystem: Filesystem
        let (tmp, tmpNodes) = restoreTmp(snapshot.tmp)
        do throws(Errno) {
            filesystem = try Filesystem(rootDirectory: rootfs.path, tmp: tmp)
        } catch {
            throw RestoreError("cannot open the checkpoint's rootfs \(rootfs.path): \(error)")
        }
        if let change = rootfs.firstChange(in: filesystem) {
            throw RestoreError("the rootfs \(rootfs.path) changed since the checkpoint (fingerprint \(rootfs.digest)): \(change); re-create the image with `catalyzer checkpoint`")
        }
        return (filesystem, tmpNodes)
    }

    /// The /tmp tree, and every node by inode (open files may refer to unlinked ones).
    private static func restoreTmp(_ tmp: KernelSnapshot.TmpFilesystem) -> (MemoryFilesystem, [UInt64: MemoryNode]) {
        var byInode: [UInt64: MemoryNode] = [:]
        for record in tmp.nodes {
            let modified = timespec(tv_sec: Int(record.modifiedSeconds), tv_nsec: Int(record.modifiedNanoseconds))
            let content: MemoryNode.Content = record.data.map { .file($0) } ?? record.symlinkTarget.map { .symlink($0) } ?? .directory([:])
            let node = MemoryNode(content: content, mode: record.mode, inode: record.inode, modified: modified)
            node.accessed = timespec(tv_sec: Int(record.accessedSeconds), tv_nsec: Int(record.accessedNanoseconds))
            node.changed = timespec(tv_sec: Int(record.changedSeconds), tv_nsec: Int(record.changedNanoseconds))
            node.owner = record.owner
            node.group = record.group
            node.links = 0
            byInode[record.inode] = node
        }
        for record in tmp.nodes where record.data == nil && record.symlinkTarget == nil {
            let children = Dictionary(record.children.compactMap { child in byInode[child.inode].map { (child.name, $0) } },
                                      uniquingKeysWith: { first, _ in first })
            for child in children.values { child.links += 1 }
            byInode[record.inode]?.content = .directory(children)
        }
        // Every file's bytes count until the file is gone, as in `MemoryFilesystem`.
        let bytesUsed = byInode.values.reduce(0) { total, node in
            if case .file(let bytes) = node.content { return total + bytes.count }
            return total
        }
        let filesystem = MemoryFilesystem(capacity: tmp.capacity, root: byInode[1]!,
                                          sharedMemoryRoot: byInode[MemoryFilesystem.sharedMemoryInode],
                                          nextInode: tmp.nextInode, bytesUsed: bytesUsed)
        for node in byInode.values { node.account = filesystem }
        return (filesystem, byInode)
    }

    /// The fd table: stdio bound to `standardStreams`, host files waiting to be reopened on first
    /// use, /tmp files and pipes as they were.
    static func restoreFiles(_ snapshot: KernelSnapshot, filesystem: Filesystem, tmpNodes: [UInt64: MemoryNode],
                             standardStreams: [Int32]) throws -> FileTable {
        let pipes = snapshot.pipes.map { Pipe(buffered: $0.buffered, hasReader: $0.hasReader, hasWriter: $0.hasWriter) }
        var opened: [OpenFile?] = []
        for record in snapshot.files {
            let file: OpenFile?
            switch record.kind {
            case .standardStream(let number):
                if number >= 0 && Int(number) < standardStreams.count && fcntl(standardStreams[Int(number)], F_GETFL) >= 0 {
                    file = OpenFile(backing: .host(fd: standardStreams[Int(number)], owned: false), guestPath: record.guestPath,
                                    statusFlags: record.statusFlags, standardStream: number)
                } else {
                    file = nil  // the invocation closed that stream: the fd is closed in the guest too
                }
            case .rootfs(let path, let offset):
                file = OpenFile(reconnecting: .init(target: .rootfs(path: path, offset: offset), filesystem: filesystem),
                                guestPath: record.guestPath, statusFlags: record.statusFlags)
            case .hostDevice(let path):
                file = OpenFile(reconnecting: .init(target: .hostDevice(path: path), filesystem: filesystem),
                                guestPath: record.guestPath, statusFlags: record.statusFlags)
            case .tmp(let inode, let position):
                guard let node = tmpNodes[inode] else {
                    throw RestoreError("an open /tmp file (inode \(inode)) is missing from the checkpoint's /tmp")
                }
                let restored = OpenFile(backing: .memory(node), guestPath: record.guestPath, statusFlags: record.statusFlags)
                restored.position = position
                file = restored
            case .pipe(let index):
                file = OpenFile(backing: .pipe(pipes[index]), guestPath: record.guestPath, statusFlags: record.statusFlags)
            }
            opened.append(file)
        }
        let table = FileTable()
        for descriptor in snapshot.descriptors {
            guard let file = opened[descriptor.file] else { continue }
            do throws(Errno) {
                try table.install(file, at: descriptor.fd, closeOnExec: descriptor.closeOnExec)
            } catch {
                throw RestoreError("fd \(descriptor.fd) cannot be restored: \(error)")
            }
        }
        return table
    }
}
