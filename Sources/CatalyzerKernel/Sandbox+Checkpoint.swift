import CKVM
import CatalyzerKVM
import Glibc

/// A snapshot that cannot be restored here, or a sandbox that cannot be checkpointed now.
public struct RestoreError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Checkpoint and restore. Each stateful component saves and restores itself here — the address
/// space, the process, each task, the fd table, /tmp — and `captureSnapshot` / `init(restoring:)`
/// only put the parts together. Fork and clone use the components' own copy paths
/// (`ProcessImage.fork`, `FileTable(copying:)`, `SignalHandlers.copy`, `FilesystemContext.copy`).
extension Sandbox {
    /// The state of a sandbox that `run()` stopped at its ready point. Guest memory is the memfd
    /// `guestMemory` returns; together they are a checkpoint. A checkpoint holds one process (with
    /// any number of threads), whose threads are all parked.
    public func captureSnapshot() throws -> KernelSnapshot {
        guard exitStatus == .readyPoint, let main = readyPointTask else {
            throw RestoreError("the sandbox is not stopped at its ready point; only a program waiting for its first request can be checkpointed")
        }
        return try snapshot(main: main, anyPoint: false)
    }

    /// The state of a running sandbox paused between two slices of its tasks (called from work
    /// posted with `HostInbox.post(pausedWork:)`), as a container engine's checkpoint takes it:
    /// wherever its threads are, a syscall they wait in re-runs after the restore. The same
    /// limits hold as at a ready point (one process, no armed timers).
    public func captureRunningSnapshot() throws -> KernelSnapshot {
        guard exitStatus == nil, let main = initialGroup?.tasks.first else {
            throw RestoreError("the sandbox's first process has ended; there is nothing to checkpoint")
        }
        return try snapshot(main: main, anyPoint: true)
    }

    private func snapshot(main: Task, anyPoint: Bool) throws -> KernelSnapshot {
        let group = main.group
        if let other = groups.values.first(where: { $0 !== group && !$0.isZombie }) {
            throw RestoreError("process \(other.pid) (\(other.leader?.name ?? "?")) is still running \(anyPoint ? "beside the first" : "at the ready point"); a checkpoint holds one process: let child processes exit (and wait for them) \(anyPoint ? "before checkpointing" : "before reading the first request")")
        }
        if let task = group.tasks.first(where: { $0.image !== main.image || $0.files !== main.files }) {
            throw RestoreError("task \(task.tid) does not share the main thread's memory and files; only threads can be checkpointed")
        }
        if let changed = groups.values.first(where: { !$0.credentials.isPlain }) {
            throw RestoreError("process \(changed.pid) changed its effective or saved user or group IDs or its supplementary groups before its ready point; a checkpoint keeps only the real uid and gid, so set them with setuid/setgid (or not at all) before reading the first request")
        }
        if groups.values.contains(where: { $0.virtualTimer.isArmed || $0.profilingTimer.isArmed }) {
            throw RestoreError("the program has an armed CPU-time timer (setitimer ITIMER_VIRTUAL or ITIMER_PROF) at its ready point; disarm it before reading the first request")
        }
        if timers.nextDeadline != nil {
            throw RestoreError("the program has an armed timer (alarm, setitimer or timer_create) at its ready point; disarm it before reading the first request")
        }
        let image = try main.image.save(registers: main.registers)
        let (openFiles, descriptors, pipes, sockets) = try captureFiles(main.files)
        let tasks = try ([main] + group.tasks.filter { $0 !== main }).map { try $0.save(anyPoint: anyPoint) }
        return KernelSnapshot(
            memorySize: memorySize,
            vcpu: image.vcpu,
            pageTableRoot: image.pageTableRoot,
            allocator: image.allocator,
            regions: image.regions,
            breakStart: image.breakStart,
            breakEnd: image.breakEnd,
            clockPage: image.clockPage,
            clockFrame: image.clockFrame,
            checkpointMonotonic: time.monotonicNanoseconds,
            process: .init(pid: group.pid, executablePath: main.image.executablePath,
                           workingDirectory: main.workingDirectory,
                           uid: group.credentials.uid, gid: group.credentials.gid,
                           signalActions: main.signalHandlers.actions.sorted { $0.key < $1.key }
                               .map { .init(signal: $0.key, action: $0.value.bytes) },
                           fileCreationMask: main.fileCreationMask, nextPID: nextID,
                           zombies: groups.values.filter { $0.isZombie }.sorted { $0.pid < $1.pid }
                               .map { .init(pid: $0.pid, parent: $0.parentPID, status: $0.zombieStatus ?? 0) }),
            tasks: tasks,
            files: openFiles,
            descriptors: descriptors,
            pipes: pipes,
            tmp: try captureTmp(openFiles: main.files, space: main.space),
            rootfs: (filesystem.dependencies ?? RootfsDependencies()).fingerprint(rootDirectory: filesystem.rootDirectory),
            sockets: sockets)
    }

    /// Resumes a checkpointed program in the VM `pendingVM` is creating, whose memory is the
    /// checkpoint's guest memory (typically its image's `memory` file mapped privately). The
    /// rootfs is checked while the VM is still being created. Files reopen on first use; stdio is
    /// the invocation's. Throws `RestoreError` when the snapshot does not fit this host.
    public convenience init(restoring snapshot: KernelSnapshot, vm pendingVM: PendingVM, options: RestoreOptions) throws {
        let memory = pendingVM.memory
        guard memory.size == snapshot.memorySize else {
            throw RestoreError("guest memory is \(memory.size) bytes but the checkpoint's is \(snapshot.memorySize)")
        }
        let (filesystem, tmpNodes) = try Self.restoreFilesystem(snapshot, verify: !options.rootfsVerified, rootDirectory: options.rootDirectory)
        filesystem.addMounts(options.mounts.filter { if case .file = $0 { true } else { false } })
        let vm = try pendingVM.wait()
        self.init(kvm: vm.kvm, memorySize: snapshot.memorySize, filesystem: filesystem,
                  time: GuestTime(continuingFrom: snapshot.checkpointMonotonic), exitRequester: vm.vcpu.exitRequester,
                  limits: options.limits, traceSyscalls: options.traceSyscalls,
                  traceFD: options.standardStreams.count > 2 ? options.standardStreams[2] : 2, network: options.network ?? .none)
        nextID = snapshot.process.nextPID
        let process = snapshot.process
        let credentials = Credentials(uid: process.uid, gid: process.gid)
        for zombie in snapshot.process.zombies {
            let group = ThreadGroup(pid: zombie.pid, parentPID: zombie.parent, credentials: credentials)
            group.zombieStatus = zombie.status
            groups[zombie.pid] = group
        }
        let image = try ProcessImage(restoring: snapshot, vm: vm, account: memoryAccount)
        filesystem.executablePath = process.executablePath
        let sockets = try SandboxSocket.restore(snapshot.sockets, ports: inetPorts, abstractNames: abstractSockets, account: memoryAccount)
        let files = try Self.restoreFiles(snapshot, filesystem: filesystem, tmpNodes: tmpNodes, sockets: sockets,
                                          standardStreams: options.standardStreams, account: memoryAccount)
        let group = ThreadGroup(pid: process.pid, parentPID: 0, credentials: credentials)
        initialGroup = group
        let handlers = SignalHandlers(actions: Dictionary(process.signalActions.map { ($0.signal, SignalAction(bytes: $0.action)) },
                                                          uniquingKeysWith: { $1 }))
        let fsContext = FilesystemContext(workingDirectory: process.workingDirectory, fileCreationMask: process.fileCreationMask)
        let now = Self.monotonicNanoseconds()
        for state in snapshot.tasks {
            let task = Task(sandbox: self, tid: state.tid, group: group, image: image, files: files, fsContext: fsContext,
                            signalHandlers: handlers, context: TaskContext(), name: state.name)
            task.restore(state, now: now)
            register(task, in: group)
        }
    }

    private func captureFiles(_ files: FileTable) throws
        -> ([KernelSnapshot.File], [KernelSnapshot.Descriptor], [KernelSnapshot.PipeState], [KernelSnapshot.SocketState]) {
        // Sockets within the sandbox: those open files name, and every socket they link to.
        var sockets: [SandboxSocket] = []
        var indexOfSocket: [ObjectIdentifier: Int] = [:]
        func socketIndex(_ socket: SandboxSocket) -> Int {
            if let index = indexOfSocket[ObjectIdentifier(socket)] { return index }
            var next = sockets.count
            indexOfSocket[ObjectIdentifier(socket)] = next
            sockets.append(socket)
            while next < sockets.count {
                for linked in sockets[next].linkedSockets where indexOfSocket[ObjectIdentifier(linked)] == nil {
                    indexOfSocket[ObjectIdentifier(linked)] = sockets.count
                    sockets.append(linked)
                }
                next += 1
            }
            return indexOfSocket[ObjectIdentifier(socket)]!
        }
        var records: [KernelSnapshot.File] = []
        var indexOfFile: [ObjectIdentifier: Int] = [:]
        var pipes: [KernelSnapshot.PipeState] = []
        var indexOfPipe: [ObjectIdentifier: Int] = [:]
        var descriptors: [KernelSnapshot.Descriptor] = []
        var epolls: [(record: Int, poll: EventPoll)] = []
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
                    case .memory, .executableLink, .generated:
                        throw RestoreError("fd \(entry.fd) (\(file.guestPath)) is a host file catalyzer cannot reopen after a restore")
                    }
                case .memory(let node):
                    kind = .tmp(inode: node.inode, position: file.position)
                case .special(let object as SandboxSocket):
                    if let obstacle = object.checkpointObstacle {
                        throw RestoreError("fd \(entry.fd) (\(file.guestPath)) is a socket that cannot be checkpointed: \(obstacle); close it before reading the first request")
                    }
                    kind = .socket(index: socketIndex(object))
                case .special(let object as HostSocket):
                    let peer = try? object.peerName()
                    let address: InetAddress? = if case .inet(let inet) = peer { inet } else { nil }
                    kind = .resetSocket(family: object.family, type: object.type, transport: object.transport,
                                        peerIP: address?.ip ?? [], peerPort: address?.port ?? 0)
                case .special(let counter as EventCounter):
                    kind = .eventCounter(count: counter.count, semaphore: counter.semaphore)
                case .special(let timer as TimerFile):
                    let state = timer.saved(now: Self.monotonicNanoseconds())
                    kind = .timer(clock: timer.clock, remainingNanoseconds: state.remaining, interval: state.interval,
                                  expirations: state.expirations)
                case .special(let poll as EventPoll):
                    kind = .eventPoll([])  // its interests, once every open file has an index
                    epolls.append((records.count, poll))
                case .special(let other):
                    throw RestoreError("fd \(entry.fd) (\(other.name)) is open at the ready point and cannot be checkpointed; open it after the first request")
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
        for (record, poll) in epolls {
            var interests: [KernelSnapshot.EpollInterest] = []
            for interest in poll.liveInterests {
                guard let index = indexOfFile[ObjectIdentifier(interest.file)] else {
                    throw RestoreError("an epoll instance watches fd \(interest.fd), whose open file no fd refers to any more (it was closed after a dup that is also gone, or is in flight in a unix socket message); remove it from the interest list before reading the first request")
                }
                interests.append(.init(fd: interest.fd, file: index, events: interest.events, data: interest.data))
            }
            records[record].kind = .eventPoll(interests)
        }
        for socket in sockets {
            if let obstacle = socket.checkpointObstacle {
                throw RestoreError("a socket connected to one the program holds cannot be checkpointed: \(obstacle)")
            }
        }
        let states = sockets.map { $0.capture(index: { indexOfSocket[ObjectIdentifier($0)]! }) }
        return (records, descriptors, pipes, states)
    }

    /// Every /tmp node reachable from its root, plus unlinked files that are still open.
    private func captureTmp(openFiles files: FileTable, space: AddressSpace) throws -> KernelSnapshot.TmpFilesystem {
        // A shared mapping's pages are outside guest RAM (an extra memory slot), which an image
        // does not hold.
        if let region = space.regions.first(where: { $0.shared != nil }) {
            throw RestoreError("\(region.name) is mapped MAP_SHARED at 0x\(hex(region.start)); a sandbox with shared file mappings cannot be checkpointed")
        }
        var nodes: [KernelSnapshot.TmpNode] = []
        var seen: Set<UInt64> = []
        var socketName: String?
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
                if let socket = children.first(where: { $0.value.isSocket }) { socketName = socket.key }
            case .socket:
                break
            }
            nodes.append(record)
            for (_, child) in sorted { visit(child) }
        }
        visit(filesystem.tmp.root)
        visit(filesystem.tmp.sharedMemoryRoot)
        var overlay: KernelSnapshot.Overlay?
        if let layer = filesystem.overlay {
            visit(layer.upper)
            overlay = .init(upperInode: layer.upper.inode, whiteouts: layer.whiteouts.map(Filesystem.guestPath).sorted(),
                            opaque: layer.opaque.map(Filesystem.guestPath).sorted())
        }
        for mount in filesystem.memoryMounts { visit(mount.root) }
        if let socketName {
            throw RestoreError("a unix socket file (\(socketName)) exists in /tmp or the root; unlink it before the checkpoint")
        }
        for entry in files.allEntries {
            if case .memory(let node) = entry.file.backing { visit(node) }
        }
        var state = KernelSnapshot.TmpFilesystem(capacity: filesystem.tmp.capacity, nextInode: filesystem.tmp.nextInode, nodes: nodes)
        state.overlay = overlay
        state.mounts = filesystem.memoryMounts.map { .init(path: Filesystem.guestPath($0.components), inode: $0.root.inode) }
        return state
    }

    /// Checks that `snapshot`'s rootfs is where it was and unchanged since the checkpoint, as a
    /// restore does; throws `RestoreError` naming the first change.
    public static func verifyRootfs(of snapshot: KernelSnapshot) throws {
        _ = try restoreFilesystem(snapshot, verify: true, rootDirectory: nil)
    }

    /// The rootfs (checked against the checkpoint's fingerprint unless `verify` is false) and the
    /// checkpoint's /tmp.
    private static func restoreFilesystem(_ snapshot: KernelSnapshot, verify: Bool, rootDirectory: String?)
        throws -> (Filesystem, tmpNodes: [UInt64: MemoryNode]) {
        var rootfs = snapshot.rootfs
        if let rootDirectory { rootfs.path = rootDirectory }
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
        if verify, let change = rootfs.firstChange(in: filesystem) {
            throw RestoreError("the rootfs \(rootfs.path) changed since the checkpoint (fingerprint \(rootfs.digest)): \(change); re-create the image with `catalyzer checkpoint`")
        }
        if let overlay = snapshot.tmp.overlay, let upper = tmpNodes[overlay.upperInode] {
            filesystem.overlay = RootOverlay(upper: upper, whiteouts: Set(overlay.whiteouts.map(GuestPath.components)),
                                             opaque: Set(overlay.opaque.map(GuestPath.components)))
        }
        filesystem.restoreMemoryMounts(snapshot.tmp.mounts.compactMap { mount in
            tmpNodes[mount.inode].map { (GuestPath.components(mount.path), $0) }
        })
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
        filesystem.noteRestoredMetadata(nodes: Array(byInode.values))
        return (filesystem, byInode)
    }

    /// The fd table: stdio bound to `standardStreams`, host files waiting to be reopened on first
    /// use, /tmp files and pipes as they were.
    private static func restoreFiles(_ snapshot: KernelSnapshot, filesystem: Filesystem, tmpNodes: [UInt64: MemoryNode], sockets: [SandboxSocket],
                             standardStreams: [Int32], account: MemoryAccount) throws -> FileTable {
        let pipes = snapshot.pipes.map { Pipe(buffered: $0.buffered, hasReader: $0.hasReader, hasWriter: $0.hasWriter, account: account) }
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
            case .resetSocket(let family, let type, let transport, let ip, let port):
                let socket = HostSocket(resetFamily: family, type: type, transport: transport,
                                        peer: ip.count == 16 ? InetAddress(ip: ip, port: port) : nil)
                file = OpenFile(backing: .special(socket), guestPath: socket.name, statusFlags: record.statusFlags)
            case .socket(let index):
                file = OpenFile(backing: .special(sockets[index]), guestPath: sockets[index].name, statusFlags: record.statusFlags)
            case .eventCounter(let count, let semaphore):
                let counter = EventCounter(count: count, semaphore: semaphore)
                file = OpenFile(backing: .special(counter), guestPath: counter.name, statusFlags: record.statusFlags)
            case .timer(let clock, let remaining, let interval, let expirations):
                let timer = TimerFile(clock: clock)
                timer.restore(remainingNanoseconds: remaining, interval: interval, expirations: expirations, now: Self.monotonicNanoseconds())
                file = OpenFile(backing: .special(timer), guestPath: timer.name, statusFlags: record.statusFlags)
            case .eventPoll:
                let poll = EventPoll()
                file = OpenFile(backing: .special(poll), guestPath: poll.name, statusFlags: record.statusFlags)
            }
            opened.append(file)
        }
        // Interest lists refer to other open files, so they are filled once all exist. A watched
        // standard stream the invocation closed is gone, as its interest would be on Linux.
        for (index, record) in snapshot.files.enumerated() {
            guard case .eventPoll(let interests) = record.kind, let file = opened[index],
                  case .special(let poll as EventPoll) = file.backing else { continue }
            for interest in interests {
                guard let watched = opened[interest.file] else { continue }
                do throws(Errno) {
                    try poll.add(fd: interest.fd, file: watched, events: interest.events, data: interest.data)
                } catch {
                    throw RestoreError("an epoll instance cannot watch fd \(interest.fd) again: \(error)")
                }
            }
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

extension Task {
    /// This thread's part of a checkpoint.
    /// At a ready point every other thread must be parked (blocked, or runnable with no syscall
    /// under way); at `anyPoint` a woken thread's syscall simply re-runs after the restore.
    func save(anyPoint: Bool = false) throws -> KernelSnapshot.TaskState {
        let now = Sandbox.monotonicNanoseconds()
        guard anyPoint || state == .blocked || state == .runnable && !hasPendingSyscall else {
            throw RestoreError("task \(tid) (\(name)) is not parked")
        }
        return KernelSnapshot.TaskState(
            tid: tid, name: name, registers: VCPUState.bytes(of: registers), fsBase: fsBase, gsBase: gsBase,
            xsaveArea: try extendedState() ?? image.cpu.vm.vcpu.xsaveArea(),
            signalMask: signalMask, savedSignalMask: savedSignalMask,
            pendingSignals: pendingSignals.bits,
            alternateStack: (alternateStack.base, alternateStack.size, alternateStack.flags),
            clearChildTID: clearChildTID, robustList: robustList, pendingSyscall: hasPendingSyscall,
            remainingNanoseconds: syscallDeadline.map { $0 > now ? $0 - now : 0 })
    }

    /// Takes a checkpointed thread's state; a parked syscall re-runs when the task first runs,
    /// with its timeout counted from now.
    func restore(_ state: KernelSnapshot.TaskState, now: UInt64) {
        context = TaskContext(registers: VCPUState.value(state.registers, zero: kvm_regs()), fsBase: state.fsBase,
                              gsBase: state.gsBase, extendedState: state.xsaveArea)
        signalMask = state.signalMask
        savedSignalMask = state.savedSignalMask
        for signal in 1...64 where state.pendingSignals & signalBit(Int32(signal)) != 0 {
            pendingSignals.add(SignalInformation(signal: Int32(signal)))
        }
        alternateStack = AlternateStack(base: state.alternateStack.base, size: state.alternateStack.size,
                                        flags: state.alternateStack.flags)
        clearChildTID = state.clearChildTID
        robustList = state.robustList
        hasPendingSyscall = state.pendingSyscall
        syscallDeadline = state.remainingNanoseconds.map { now &+ $0 }
    }
}
