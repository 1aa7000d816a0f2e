import CatalyzerKVM
import Glibc

/// A program stopped at its ready point, as plain data: the vCPU, the address space's bookkeeping
/// (the page tables themselves are in guest memory), its threads, open files, the in-memory /tmp,
/// process identity and the rootfs it ran against. Guest memory is not part of it: the image holds
/// that. `Sandbox.captureSnapshot()` builds it; `Sandbox(restoring:...)` resumes from it. Each part
/// is saved and restored by the component it belongs to (Sandbox+Checkpoint.swift).
public struct KernelSnapshot: Sendable {
    /// Bumped whenever the encoding changes; a blob with another version is refused, except
    /// versions 2 (version 3 without sockets) and 3 (version 4 without eventfds, timerfds and
    /// epoll instances), which never hold what they lack.
    public static let formatVersion: UInt32 = 5

    public var memorySize: Int
    /// The vCPU, with the registers and XSAVE area of the thread at the ready point (each thread's
    /// own are in `tasks`).
    public var vcpu: VCPUState
    public var pageTableRoot: UInt64
    public var allocator: AllocatorState
    public var regions: [Region]
    public var breakStart: UInt64
    public var breakEnd: UInt64
    /// The vDSO's clock page: its virtual address and the physical page behind it.
    public var clockPage: UInt64
    public var clockFrame: UInt64
    /// The guest's CLOCK_MONOTONIC at the checkpoint, in nanoseconds: a restore's monotonic
    /// clocks never read less (see `GuestTime`).
    public var checkpointMonotonic: UInt64
    public var process: Process
    /// Every thread of the process, the main thread first.
    public var tasks: [TaskState]
    public var files: [File]
    public var descriptors: [Descriptor]
    public var pipes: [PipeState]
    public var tmp: TmpFilesystem
    public var rootfs: RootfsFingerprint
    /// Sockets within the sandbox (`SandboxSocket`) reachable from open files, with their links
    /// to each other as indices into this list.
    public var sockets: [SocketState] = []

    public struct AllocatorState: Sendable {
        public var start: UInt64
        public var nextUnused: UInt64
        public var freed: [UInt64]
    }

    public struct Region: Sendable {
        public var start: UInt64
        public var end: UInt64
        public var protection: UInt64
        public var name: String
    }

    public struct Process: Sendable {
        public var pid: Int32
        public var executablePath: String
        public var workingDirectory: String
        public var uid: UInt32
        public var gid: UInt32
        public var signalActions: [SignalAction]
        public var fileCreationMask: UInt32
        public var nextPID: Int32
        public var zombies: [Zombie]
    }

    /// A thread: its CPU context, signal state, and the syscall it was parked in, if any.
    public struct TaskState: Sendable {
        public var tid: Int32
        public var name: String
        public var registers: [UInt8]
        public var fsBase: UInt64
        public var gsBase: UInt64
        public var xsaveArea: [UInt8]
        public var signalMask: UInt64
        public var savedSignalMask: UInt64?
        public var pendingSignals: UInt64
        public var alternateStack: (base: UInt64, size: UInt64, flags: Int32)
        public var clearChildTID: UInt64
        public var robustList: UInt64
        /// Parked in a syscall that re-runs on restore (the registers still hold it).
        public var pendingSyscall: Bool
        /// The time left on that syscall's timeout, in nanoseconds: it resumes relative to the restore.
        public var remainingNanoseconds: UInt64?
    }

    public struct SignalAction: Sendable {
        public var signal: Int32
        public var action: [UInt8]
    }

    public struct Zombie: Sendable {
        public var pid: Int32
        public var parent: Int32
        public var status: Int32
    }

    /// An open file description. Rootfs files and host devices are reopened by path on first use.
    public struct File: Sendable {
        public enum Kind: Sendable {
            /// stdin, stdout or stderr: bound to the restoring invocation's streams.
            case standardStream(Int32)
            case rootfs(path: String, offset: Int64)
            case hostDevice(path: String)
            case tmp(inode: UInt64, position: Int)
            case pipe(index: Int)
            /// A socket connected outside the sandbox (`HostSocket`): its connection does not
            /// survive, so it is restored reset (ECONNRESET on first use). The peer is what
            /// getpeername reported (16 bytes of IPv6 or IPv4-mapped address, and the port).
            case resetSocket(family: Int32, type: Int32, transport: Int32, peerIP: [UInt8], peerPort: UInt16)
            /// A socket within the sandbox: `sockets[index]`.
            case socket(index: Int)
            /// An eventfd: its counter (version 4).
            case eventCounter(count: UInt64, semaphore: Bool)
            /// A timerfd: the time to its next expiry when armed (it resumes relative to the
            /// restore, as a pending syscall's timeout does), its period, and expirations not yet
            /// read (version 4).
            case timer(clock: Int32, remainingNanoseconds: UInt64?, interval: UInt64, expirations: UInt64)
            /// An epoll instance and its interest list (version 4).
            case eventPoll([EpollInterest])
        }
        public var kind: Kind
        public var guestPath: String
        public var statusFlags: Int32
    }

    /// One entry of an epoll interest list: the fd it was added with, the open file (an index
    /// into `files`) and the events and data asked for. Edge-triggered entries restore as if
    /// nothing was reported yet: a spurious edge is harmless (readers drain to EAGAIN), a lost one
    /// would hang them.
    public struct EpollInterest: Sendable {
        public var fd: Int32
        public var file: Int
        public var events: UInt32
        public var data: UInt64
    }

    /// An fd number and the description (index into `files`) it refers to.
    public struct Descriptor: Sendable {
        public var fd: Int32
        public var file: Int
        public var closeOnExec: Bool
    }

    /// A socket within the sandbox: a unix socket or one on the sandbox's loopback.
    public struct SocketState: Sendable {
        public var family: Int32
        public var type: Int32
        public var transport: Int32
        /// 0 unconnected, 1 listening, 2 connected.
        public var state: UInt8
        public var backlog: Int32
        /// Its name as `sockaddr` bytes (empty: unnamed), and whether the name is registered
        /// (an inet port, an abstract unix name) rather than only reported.
        public var localAddress: [UInt8]
        public var nameRegistered: Bool
        public var peerAddress: [UInt8]
        public var reuseAddress: Bool
        public var reusePort: Bool
        public var ipv6Only: Bool
        public var optionKeys: [Int64]
        public var optionValues: [[UInt8]]
        public var credentials: [UInt32]  // pid, uid, gid
        /// Indices into `sockets`; -1 for none.
        public var peer: Int
        public var datagramDestination: Int
        public var pending: [Int]
        public var messages: [Message]
        public var receiveShutdown: Bool
        public var sendShutdown: Bool
        public var peerClosed: Bool
        public var connectReportedInProgress: Bool
        /// An errno to report once, 0 for none.
        public var pendingError: Int32

        public struct Message: Sendable {
            public var bytes: [UInt8]
            public var sender: [UInt8]
            public var hopLimit: Int32
            public var trafficClass: Int32
        }
    }

    public struct PipeState: Sendable {
        public var buffered: [UInt8]
        public var hasReader: Bool
        public var hasWriter: Bool
    }

    public struct TmpFilesystem: Sendable {
        public var capacity: Int
        public var nextInode: UInt64
        /// Every node reachable from the root (inode 1), the upper layer, a mount, or an open file.
        public var nodes: [TmpNode]
        /// A writable root's upper layer (version 5): its root node, and the lower paths removed
        /// and the directories made opaque (absolute guest paths).
        public var overlay: Overlay? = nil
        /// In-memory mounts a container engine asked for (version 5): their paths and root nodes.
        /// Bound files are not here: the engine gives them again at restore.
        public var mounts: [MountRoot] = []
    }

    public struct Overlay: Sendable {
        public var upperInode: UInt64
        public var whiteouts: [String]
        public var opaque: [String]
    }

    public struct MountRoot: Sendable {
        public var path: String
        public var inode: UInt64
    }

    public struct TmpNode: Sendable {
        public var inode: UInt64
        public var mode: UInt32
        public var modifiedSeconds: Int64
        public var modifiedNanoseconds: Int64
        /// File bytes, or nil for a directory or symlink.
        public var data: [UInt8]?
        /// Directory entries: name and inode.
        public var children: [(name: String, inode: UInt64)]
        /// A symlink's target (version 2).
        public var symlinkTarget: String? = nil
        /// st_atime, st_ctime, st_uid and st_gid (version 2). Link counts are recomputed from the tree.
        public var accessedSeconds: Int64 = 0
        public var accessedNanoseconds: Int64 = 0
        public var changedSeconds: Int64 = 0
        public var changedNanoseconds: Int64 = 0
        public var owner: UInt32 = 0
        public var group: UInt32 = 0
    }
}

// MARK: encoding

extension KernelSnapshot {
    public func encode(into writer: inout SnapshotWriter) {
        writer.write(Self.formatVersion)
        writer.write(UInt64(memorySize))
        writer.write(vcpu.registers)
        writer.write(vcpu.specialRegisters)
        writer.write(vcpu.xsaveArea)
        writer.write(vcpu.xcr0)
        writer.write(vcpu.modelSpecificRegisters) { $0.write($1.index); $0.write($1.value) }
        writer.write(pageTableRoot)
        writer.write(allocator.start)
        writer.write(allocator.nextUnused)
        writer.write(allocator.freed) { $0.write($1) }
        writer.write(regions) { w, region in
            w.write(region.start); w.write(region.end); w.write(region.protection); w.write(region.name)
        }
        writer.write(breakStart)
        writer.write(breakEnd)
        writer.write(clockPage)
        writer.write(clockFrame)
        writer.write(checkpointMonotonic)
        process.encode(into: &writer)
        writer.write(tasks) { w, task in
            w.write(task.tid); w.write(task.name); w.write(task.registers); w.write(task.fsBase); w.write(task.gsBase)
            w.write(task.xsaveArea); w.write(task.signalMask); w.write(task.savedSignalMask != nil)
            w.write(task.savedSignalMask ?? 0); w.write(task.pendingSignals)
            w.write(task.alternateStack.base); w.write(task.alternateStack.size); w.write(task.alternateStack.flags)
            w.write(task.clearChildTID); w.write(task.robustList); w.write(task.pendingSyscall)
            w.write(task.remainingNanoseconds != nil); w.write(task.remainingNanoseconds ?? 0)
        }
        writer.write(files) { w, file in
            switch file.kind {
            case .standardStream(let number): w.write(UInt8(0)); w.write(number)
            case .rootfs(let path, let offset): w.write(UInt8(1)); w.write(path); w.write(offset)
            case .hostDevice(let path): w.write(UInt8(2)); w.write(path)
            case .tmp(let inode, let position): w.write(UInt8(3)); w.write(inode); w.write(Int64(position))
            case .pipe(let index): w.write(UInt8(4)); w.write(UInt64(index))
            case .resetSocket(let family, let type, let transport, let ip, let port):
                w.write(UInt8(5)); w.write(family); w.write(type); w.write(transport); w.write(ip); w.write(port)
            case .socket(let index): w.write(UInt8(6)); w.write(UInt64(index))
            case .eventCounter(let count, let semaphore): w.write(UInt8(7)); w.write(count); w.write(semaphore)
            case .timer(let clock, let remaining, let interval, let expirations):
                w.write(UInt8(8)); w.write(clock); w.write(remaining != nil); w.write(remaining ?? 0)
                w.write(interval); w.write(expirations)
            case .eventPoll(let interests):
                w.write(UInt8(9))
                w.write(interests) { w, interest in
                    w.write(interest.fd); w.write(UInt64(interest.file)); w.write(interest.events); w.write(interest.data)
                }
            }
            w.write(file.guestPath)
            w.write(file.statusFlags)
        }
        writer.write(descriptors) { w, descriptor in
            w.write(descriptor.fd); w.write(UInt64(descriptor.file)); w.write(descriptor.closeOnExec)
        }
        writer.write(pipes) { w, pipe in
            w.write(pipe.buffered); w.write(pipe.hasReader); w.write(pipe.hasWriter)
        }
        writer.write(UInt64(tmp.capacity))
        writer.write(tmp.nextInode)
        writer.write(tmp.nodes) { w, node in
            w.write(node.inode); w.write(node.mode); w.write(node.modifiedSeconds); w.write(node.modifiedNanoseconds)
            w.write(node.accessedSeconds); w.write(node.accessedNanoseconds)
            w.write(node.changedSeconds); w.write(node.changedNanoseconds)
            w.write(node.owner); w.write(node.group)
            if let data = node.data {
                w.write(UInt8(0)); w.write(data)
            } else if let target = node.symlinkTarget {
                w.write(UInt8(2)); w.write(target)
            } else {
                w.write(UInt8(1))
                w.write(node.children) { w, child in w.write(child.name); w.write(child.inode) }
            }
        }
        rootfs.encode(into: &writer)
        writeSockets(into: &writer)
        writer.write(tmp.overlay != nil)
        if let overlay = tmp.overlay {
            writer.write(overlay.upperInode)
            writer.write(overlay.whiteouts) { $0.write($1) }
            writer.write(overlay.opaque) { $0.write($1) }
        }
        writer.write(tmp.mounts) { w, mount in w.write(mount.path); w.write(mount.inode) }
    }

    private func writeSockets(into writer: inout SnapshotWriter) {
        writer.write(sockets) { w, socket in
            w.write(socket.family); w.write(socket.type); w.write(socket.transport); w.write(socket.state); w.write(socket.backlog)
            w.write(socket.localAddress); w.write(socket.nameRegistered); w.write(socket.peerAddress)
            w.write(socket.reuseAddress); w.write(socket.reusePort); w.write(socket.ipv6Only)
            w.write(socket.optionKeys) { $0.write($1) }
            w.write(socket.optionValues) { $0.write($1) }
            w.write(socket.credentials) { $0.write($1) }
            w.write(Int64(socket.peer)); w.write(Int64(socket.datagramDestination))
            w.write(socket.pending) { $0.write(UInt64($1)) }
            w.write(socket.messages) { w, message in
                w.write(message.bytes); w.write(message.sender); w.write(message.hopLimit); w.write(message.trafficClass)
            }
            w.write(socket.receiveShutdown); w.write(socket.sendShutdown); w.write(socket.peerClosed)
            w.write(socket.connectReportedInProgress); w.write(socket.pendingError)
        }
    }

    public init(from reader: inout SnapshotReader) throws(SnapshotDecodingError) {
        let version = try reader.read(UInt32.self, "kernel state version")
        guard (2...Self.formatVersion).contains(version) else {
            throw reader.failure("kernel state version \(version) is not supported (this catalyzer reads version \(Self.formatVersion)); re-checkpoint the function with this catalyzer")
        }
        memorySize = try reader.readInt("memory size")
        let registers = try reader.readBytes("vCPU registers")
        let specialRegisters = try reader.readBytes("vCPU special registers")
        let xsaveArea = try reader.readBytes("vCPU XSAVE area")
        let xcr0 = try reader.read(UInt64.self, "XCR0")
        let msrs = try reader.readArray("MSRs", minimumSize: 12) { (r) throws(SnapshotDecodingError) in
            VCPUState.ModelSpecificRegister(index: try r.read(UInt32.self, "MSR index"), value: try r.read(UInt64.self, "MSR value"))
        }
        vcpu = VCPUState(registers: registers, specialRegisters: specialRegisters, xsaveArea: xsaveArea, xcr0: xcr0,
                         modelSpecificRegisters: msrs)
        pageTableRoot = try reader.read(UInt64.self, "page table root")
        allocator = AllocatorState(
            start: try reader.read(UInt64.self, "allocator start"),
            nextUnused: try reader.read(UInt64.self, "allocator high-water mark"),
            freed: try reader.readArray("free pages", minimumSize: 8) { (r) throws(SnapshotDecodingError) in try r.read(UInt64.self, "free page") })
        regions = try reader.readArray("memory regions", minimumSize: 32) { (r) throws(SnapshotDecodingError) in
            Region(start: try r.read(UInt64.self, "region start"), end: try r.read(UInt64.self, "region end"),
                   protection: try r.read(UInt64.self, "region protection"), name: try r.readString("region name"))
        }
        breakStart = try reader.read(UInt64.self, "break start")
        breakEnd = try reader.read(UInt64.self, "break end")
        clockPage = try reader.read(UInt64.self, "clock page")
        clockFrame = try reader.read(UInt64.self, "clock frame")
        checkpointMonotonic = try reader.read(UInt64.self, "checkpoint monotonic time")
        process = try Process(from: &reader)
        tasks = try reader.readArray("threads", minimumSize: 100) { (r) throws(SnapshotDecodingError) in
            let tid = try r.read(Int32.self, "thread id")
            let name = try r.readString("thread name")
            let registers = try r.readBytes("thread registers")
            let fsBase = try r.read(UInt64.self, "thread FS base")
            let gsBase = try r.read(UInt64.self, "thread GS base")
            let xsave = try r.readBytes("thread XSAVE area")
            let mask = try r.read(UInt64.self, "thread signal mask")
            let hasSaved = try r.readBool("thread saved mask flag")
            let saved = try r.read(UInt64.self, "thread saved mask")
            let pending = try r.read(UInt64.self, "thread pending signals")
            let stack = (try r.read(UInt64.self, "alternate stack base"), try r.read(UInt64.self, "alternate stack size"),
                         try r.read(Int32.self, "alternate stack flags"))
            let clear = try r.read(UInt64.self, "clear-child-tid address")
            let robust = try r.read(UInt64.self, "robust list")
            let pendingSyscall = try r.readBool("thread pending syscall")
            let hasRemaining = try r.readBool("thread timeout flag")
            let remaining = try r.read(UInt64.self, "thread timeout")
            return TaskState(tid: tid, name: name, registers: registers, fsBase: fsBase, gsBase: gsBase, xsaveArea: xsave,
                             signalMask: mask, savedSignalMask: hasSaved ? saved : nil, pendingSignals: pending,
                             alternateStack: stack, clearChildTID: clear, robustList: robust,
                             pendingSyscall: pendingSyscall, remainingNanoseconds: hasRemaining ? remaining : nil)
        }
        files = try reader.readArray("open files", minimumSize: 9) { (r) throws(SnapshotDecodingError) in
            let kind: File.Kind
            switch try r.read(UInt8.self, "open file kind") {
            case 0: kind = .standardStream(try r.read(Int32.self, "stream number"))
            case 1: kind = .rootfs(path: try r.readString("file path"), offset: try r.read(Int64.self, "file offset"))
            case 2: kind = .hostDevice(path: try r.readString("device path"))
            case 3: kind = .tmp(inode: try r.read(UInt64.self, "tmp inode"), position: Int(try r.read(Int64.self, "tmp position")))
            case 4: kind = .pipe(index: try r.readInt("pipe index"))
            case 6: kind = .socket(index: try r.readInt("socket index"))
            case 7 where version >= 4:
                kind = .eventCounter(count: try r.read(UInt64.self, "eventfd count"), semaphore: try r.readBool("eventfd semaphore"))
                if case .eventCounter(let count, _) = kind, count > EventCounter.maximum {
                    throw r.failure("an eventfd holds \(count), over its maximum of \(EventCounter.maximum)")
                }
            case 8 where version >= 4:
                let clock = try r.read(Int32.self, "timerfd clock"), armed = try r.readBool("timerfd armed")
                let remaining = try r.read(UInt64.self, "timerfd remaining time")
                kind = .timer(clock: clock, remainingNanoseconds: armed ? remaining : nil,
                              interval: try r.read(UInt64.self, "timerfd interval"), expirations: try r.read(UInt64.self, "timerfd expirations"))
                guard [CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM].contains(clock) else {
                    throw r.failure("a timerfd uses clock \(clock), which timerfd_create never accepts")
                }
            case 9 where version >= 4:
                kind = .eventPoll(try r.readArray("epoll interests", minimumSize: 24) { (r) throws(SnapshotDecodingError) in
                    EpollInterest(fd: try r.read(Int32.self, "epoll interest fd"), file: try r.readInt("epoll interest file"),
                                  events: try r.read(UInt32.self, "epoll interest events"), data: try r.read(UInt64.self, "epoll interest data"))
                })
            case 5:
                let family = try r.read(Int32.self, "socket family"), type = try r.read(Int32.self, "socket type")
                let transport = try r.read(Int32.self, "socket transport")
                let ip = try r.readBytes("socket peer address"), port = try r.read(UInt16.self, "socket peer port")
                guard [SocketAddress.familyInet, SocketAddress.familyInet6].contains(family),
                      [SandboxSocket.streamType, SandboxSocket.datagramType].contains(type), ip.count == 16 || ip.isEmpty else {
                    throw r.failure("a reset socket has family \(family), type \(type) and a \(ip.count)-byte peer address")
                }
                kind = .resetSocket(family: family, type: type, transport: transport, peerIP: ip, peerPort: port)
            case let other: throw r.failure("open file kind \(other) is unknown")
            }
            return File(kind: kind, guestPath: try r.readString("file guest path"), statusFlags: try r.read(Int32.self, "file flags"))
        }
        descriptors = try reader.readArray("descriptors", minimumSize: 13) { (r) throws(SnapshotDecodingError) in
            Descriptor(fd: try r.read(Int32.self, "fd"), file: try r.readInt("fd's file"),
                       closeOnExec: try r.readBool("close-on-exec"))
        }
        pipes = try reader.readArray("pipes", minimumSize: 10) { (r) throws(SnapshotDecodingError) in
            PipeState(buffered: try r.readBytes("pipe contents"), hasReader: try r.readBool("pipe reader"),
                      hasWriter: try r.readBool("pipe writer"))
        }
        let capacity = try reader.readInt("tmp capacity")
        let nextInode = try reader.read(UInt64.self, "tmp next inode")
        let nodes = try reader.readArray("tmp nodes", minimumSize: 69) { (r) throws(SnapshotDecodingError) in
            let inode = try r.read(UInt64.self, "node inode")
            let mode = try r.read(UInt32.self, "node mode")
            let seconds = try r.read(Int64.self, "node time")
            let nanoseconds = try r.read(Int64.self, "node time")
            var node = TmpNode(inode: inode, mode: mode, modifiedSeconds: seconds, modifiedNanoseconds: nanoseconds,
                               data: nil, children: [])
            node.accessedSeconds = try r.read(Int64.self, "node access time")
            node.accessedNanoseconds = try r.read(Int64.self, "node access time")
            node.changedSeconds = try r.read(Int64.self, "node change time")
            node.changedNanoseconds = try r.read(Int64.self, "node change time")
            node.owner = try r.read(UInt32.self, "node owner")
            node.group = try r.read(UInt32.self, "node group")
            switch try r.read(UInt8.self, "node kind") {
            case 0:
                node.data = try r.readBytes("file contents")
                return node
            case 1:
                node.children = try r.readArray("directory entries", minimumSize: 16) { (r) throws(SnapshotDecodingError) in
                    (name: try r.readString("entry name"), inode: try r.read(UInt64.self, "entry inode"))
                }
                return node
            case 2:
                node.symlinkTarget = try r.readString("symlink target")
                return node
            case let other:
                throw r.failure("tmp node kind \(other) is unknown")
            }
        }
        tmp = TmpFilesystem(capacity: capacity, nextInode: nextInode, nodes: nodes)
        rootfs = try RootfsFingerprint(from: &reader)
        if version >= 3 {
            sockets = try reader.readArray("sockets", minimumSize: 60) { (r) throws(SnapshotDecodingError) in
                let family = try r.read(Int32.self, "socket family"), type = try r.read(Int32.self, "socket type")
                let transport = try r.read(Int32.self, "socket transport"), state = try r.read(UInt8.self, "socket state")
                let backlog = try r.read(Int32.self, "socket backlog")
                let local = try r.readBytes("socket name"), registered = try r.readBool("socket name registered")
                let peerAddress = try r.readBytes("socket peer name")
                let reuseAddress = try r.readBool("SO_REUSEADDR"), reusePort = try r.readBool("SO_REUSEPORT")
                let ipv6Only = try r.readBool("IPV6_V6ONLY")
                let keys = try r.readArray("socket option keys", minimumSize: 8) { (r) throws(SnapshotDecodingError) in try r.read(Int64.self, "option key") }
                let values = try r.readArray("socket option values") { (r) throws(SnapshotDecodingError) in try r.readBytes("option value") }
                let credentials = try r.readArray("socket credentials", minimumSize: 4) { (r) throws(SnapshotDecodingError) in
                    try r.read(UInt32.self, "credential")
                }
                let peer = Int(try r.read(Int64.self, "socket peer")), destination = Int(try r.read(Int64.self, "socket destination"))
                let pending = try r.readArray("pending connections", minimumSize: 8) { (r) throws(SnapshotDecodingError) in try r.readInt("pending connection") }
                let messages = try r.readArray("socket messages", minimumSize: 24) { (r) throws(SnapshotDecodingError) in
                    SocketState.Message(bytes: try r.readBytes("message"), sender: try r.readBytes("message sender"),
                                        hopLimit: try r.read(Int32.self, "hop limit"), trafficClass: try r.read(Int32.self, "traffic class"))
                }
                return SocketState(family: family, type: type, transport: transport, state: state, backlog: backlog, localAddress: local,
                                   nameRegistered: registered, peerAddress: peerAddress, reuseAddress: reuseAddress, reusePort: reusePort,
                                   ipv6Only: ipv6Only, optionKeys: keys, optionValues: values, credentials: credentials, peer: peer,
                                   datagramDestination: destination, pending: pending, messages: messages,
                                   receiveShutdown: try r.readBool("receive shutdown"), sendShutdown: try r.readBool("send shutdown"),
                                   peerClosed: try r.readBool("peer closed"),
                                   connectReportedInProgress: try r.readBool("connect in progress"),
                                   pendingError: try r.read(Int32.self, "pending error"))
            }
        }
        if version >= 5 {
            if try reader.readBool("writable root") {
                tmp.overlay = Overlay(
                    upperInode: try reader.read(UInt64.self, "upper layer inode"),
                    whiteouts: try reader.readArray("whiteouts", minimumSize: 8) { (r) throws(SnapshotDecodingError) in try r.readString("whiteout") },
                    opaque: try reader.readArray("opaque directories", minimumSize: 8) { (r) throws(SnapshotDecodingError) in
                        try r.readString("opaque directory")
                    })
            }
            tmp.mounts = try reader.readArray("mounts", minimumSize: 16) { (r) throws(SnapshotDecodingError) in
                MountRoot(path: try r.readString("mount path"), inode: try r.read(UInt64.self, "mount inode"))
            }
        }
        try validate(reader)
    }

    /// Cross-field checks, so that restore code can index without trusting the blob.
    private func validate(_ reader: SnapshotReader) throws(SnapshotDecodingError) {
        guard memorySize > 0, memorySize % GuestMemory.pageSize == 0 else {
            throw reader.failure("memory size \(memorySize) is not a positive number of pages")
        }
        let limit = UInt64(memorySize)
        guard allocator.start <= allocator.nextUnused, allocator.nextUnused <= limit, pageTableRoot < limit,
              clockFrame < limit, pageTableRoot % 4096 == 0, clockFrame % 4096 == 0,
              allocator.freed.allSatisfy({ $0 < limit && $0 % 4096 == 0 }) else {
            throw reader.failure("physical memory bookkeeping points outside the \(memorySize)-byte guest memory")
        }
        guard zip(regions, regions.dropFirst()).allSatisfy({ $0.end <= $1.start }),
              regions.allSatisfy({ $0.start < $0.end && $0.end <= SystemLayout.userLimit }) else {
            throw reader.failure("memory regions overlap or leave user space")
        }
        guard !tasks.isEmpty, Set(tasks.map(\.tid)).count == tasks.count, tasks.allSatisfy({ $0.tid > 0 }),
              tasks.allSatisfy({ $0.registers.count == VCPUState.registersSize && $0.xsaveArea.count == VCPUState.xsaveAreaSize }) else {
            throw reader.failure("the thread list is empty, has duplicate ids or malformed CPU state")
        }
        for descriptor in descriptors where descriptor.file >= files.count || descriptor.fd < 0 {
            throw reader.failure("fd \(descriptor.fd) refers to open file \(descriptor.file) of \(files.count)")
        }
        let inodes = Set(tmp.nodes.map(\.inode))
        for file in files {
            // Restoring reopens a device by this path on the host: only the monitor's own.
            if case .hostDevice(let path) = file.kind, !Filesystem.passedThroughDevices.contains(path) {
                throw reader.failure("an open file is the host device \(path), which a sandbox never has")
            }
            if case .tmp(_, let position) = file.kind, position < 0 { throw reader.failure("an open /tmp file is at position \(position)") }
            if case .pipe(let index) = file.kind, index >= pipes.count { throw reader.failure("an open file refers to pipe \(index) of \(pipes.count)") }
            if case .tmp(let inode, _) = file.kind, !inodes.contains(inode) { throw reader.failure("an open file refers to missing /tmp inode \(inode)") }
            if case .socket(let index) = file.kind, index >= sockets.count { throw reader.failure("an open file refers to socket \(index) of \(sockets.count)") }
            if case .eventPoll(let interests) = file.kind {
                guard interests.count <= EventPoll.maximumInterests, interests.allSatisfy({ $0.file < files.count && $0.fd >= 0 }) else {
                    throw reader.failure("an epoll instance watches \(interests.count) files, some of them not among the \(files.count) open files")
                }
            }
        }
        let socketIndices = -1..<sockets.count
        for (index, socket) in sockets.enumerated() {
            guard socketIndices.contains(socket.peer), socketIndices.contains(socket.datagramDestination),
                  socket.pending.allSatisfy({ $0 >= 0 && $0 < sockets.count }), socket.optionKeys.count == socket.optionValues.count,
                  socket.credentials.count == 3, socket.state <= 2, socket.optionValues.allSatisfy({ $0.count <= 256 }) else {
                throw reader.failure("socket \(index) refers to sockets that are not there, or has malformed options or credentials")
            }
        }
        guard inodes.contains(1), tmp.nodes.allSatisfy({ $0.children.allSatisfy { inodes.contains($0.inode) } }) else {
            throw reader.failure("the /tmp tree refers to missing nodes")
        }
        let directories = Set(tmp.nodes.filter { $0.data == nil && $0.symlinkTarget == nil }.map(\.inode))
        func isGuestPath(_ path: String) -> Bool { path.hasPrefix("/") && GuestPath.normalize(path) == path && path.utf8.count < 4096 }
        if let overlay = tmp.overlay {
            guard directories.contains(overlay.upperInode), (overlay.whiteouts + overlay.opaque).allSatisfy({ isGuestPath($0) && $0 != "/" }) else {
                throw reader.failure("the writable root's upper layer is not a directory of the state, or names a malformed path")
            }
        }
        guard tmp.mounts.allSatisfy({ directories.contains($0.inode) && isGuestPath($0.path) && $0.path != "/" }) else {
            throw reader.failure("an in-memory mount is not a directory of the state, or is at a malformed path")
        }
    }
}

extension KernelSnapshot.Process {
    func encode(into writer: inout SnapshotWriter) {
        writer.write(pid)
        writer.write(executablePath)
        writer.write(workingDirectory)
        writer.write(uid)
        writer.write(gid)
        writer.write(signalActions) { $0.write($1.signal); $0.write($1.action) }
        writer.write(fileCreationMask)
        writer.write(nextPID)
        writer.write(zombies) { $0.write($1.pid); $0.write($1.parent); $0.write($1.status) }
    }

    init(from reader: inout SnapshotReader) throws(SnapshotDecodingError) {
        pid = try reader.read(Int32.self, "pid")
        executablePath = try reader.readString("executable path")
        workingDirectory = try reader.readString("working directory")
        uid = try reader.read(UInt32.self, "uid")
        gid = try reader.read(UInt32.self, "gid")
        signalActions = try reader.readArray("signal actions", minimumSize: 12) { (r) throws(SnapshotDecodingError) in
            KernelSnapshot.SignalAction(signal: try r.read(Int32.self, "signal"), action: try r.readBytes("signal action"))
        }
        fileCreationMask = try reader.read(UInt32.self, "umask")
        nextPID = try reader.read(Int32.self, "next pid")
        zombies = try reader.readArray("exited children", minimumSize: 12) { (r) throws(SnapshotDecodingError) in
            KernelSnapshot.Zombie(pid: try r.read(Int32.self, "child pid"), parent: try r.read(Int32.self, "child parent"),
                                  status: try r.read(Int32.self, "child status"))
        }
    }
}
