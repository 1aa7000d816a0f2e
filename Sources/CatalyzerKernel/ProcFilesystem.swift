import Glibc

/// The guest's `/proc`: what programs read about themselves and the sandbox, generated from the
/// monitor's own state when a path under /proc is looked up, never the host's /proc.
///
/// The tree is built as in-memory nodes (the same `MemoryNode`s /tmp uses, so open, read, stat,
/// readlink and getdents work unchanged) for the task that makes the call, and rebuilt for each
/// syscall (`Sandbox.procfsGeneration`). It is read-only: `Filesystem` refuses every change under
/// /proc. What it holds:
/// - `self` and `thread-self` (links to the caller's process and thread);
/// - one directory per process: `status`, `stat`, `cmdline`, `comm`, `exe`, `cwd`, `root`,
///   `fd/` (a link per open fd), `maps`, `mounts`, and `task/TID/` with `status`, `stat`, `comm`;
/// - `meminfo` (the sandbox's memory, not the host's), `cpuinfo`, `stat`, `uptime`, `loadavg`,
///   `mounts`, `filesystems`, `version`.
/// A process directory opened with O_DIRECTORY is also a pidfd for pidfd_send_signal, as on Linux.
enum ProcFilesystem {
    /// st_dev of everything under /proc, apart from /tmp's and the rootfs's.
    static let device: UInt64 = 0xCA7B
    /// Inode numbers: process directories carry their pid, so a directory fd names its process.
    static let processDirectoryTag: UInt64 = 0x7072_6F63 << 32
    /// Every /proc node's inode is at least this (the root's too); /tmp's count up from 1.
    static let firstInode = processDirectoryTag
    private static let otherInodeBase: UInt64 = 0x7072_6F64 << 32

    /// The pid a /proc directory node stands for, if it is a process directory.
    static func pid(ofDirectory node: MemoryNode) -> Int32? {
        guard node.isDirectory, node.inode & ~0xFFFF_FFFF == processDirectoryTag else { return nil }
        return Int32(truncatingIfNeeded: node.inode & 0xFFFF_FFFF)
    }

    /// The /proc tree as `task` sees it.
    static func root(for task: Task) -> MemoryNode {
        var builder = Builder()
        let sandbox = task.sandbox
        var entries: [String: MemoryNode] = [
            "self": builder.link(String(task.group.pid)),
            "thread-self": builder.link("\(task.group.pid)/task/\(task.tid)"),
            "meminfo": builder.file(memoryInformation(sandbox)),
            "cpuinfo": builder.file(cpuInformation()),
            "stat": builder.file(systemStatistics(sandbox)),
            "uptime": builder.file(uptime(sandbox)),
            "loadavg": builder.file("0.00 0.00 0.00 \(sandbox.tasks.count)/\(sandbox.tasks.count) \(sandbox.nextID - 1)\n"),
            "mounts": builder.file(mounts),
            "filesystems": builder.file("nodev\ttmpfs\nnodev\tproc\n"),
            "version": builder.file("Linux version 6.1.0-catalyzer (catalyzer) #1 SMP\n"),
        ]
        for process in sandbox.groups.values {
            entries[String(process.pid)] = processDirectory(process, builder: &builder)
        }
        return builder.directory(entries, inode: firstInode)
    }

    private static func processDirectory(_ process: ThreadGroup, builder: inout Builder) -> MemoryNode {
        guard let leader = process.leader else {
            // A zombie: Linux keeps a directory with little in it.
            return builder.directory(["status": builder.file(status(process, task: nil))],
                                     inode: processDirectoryTag | UInt64(UInt32(bitPattern: process.pid)))
        }
        var threads: [String: MemoryNode] = [:]
        for task in process.tasks {
            threads[String(task.tid)] = builder.directory([
                "status": builder.file(status(process, task: task)),
                "stat": builder.file(statistics(process, task: task)),
                "comm": builder.file(task.name + "\n"),
            ])
        }
        var fds: [String: MemoryNode] = [:]
        for entry in leader.files.allEntries {
            fds[String(entry.fd)] = builder.link(linkTarget(entry.file))
        }
        let image = leader.image
        let arguments = image.commandLine.isEmpty ? [image.executablePath] : image.commandLine
        return builder.directory([
            "status": builder.file(status(process, task: leader)),
            "stat": builder.file(statistics(process, task: leader)),
            "cmdline": builder.file(Array(arguments.map { Array($0.utf8) + [0] }.joined())),
            "comm": builder.file(leader.name + "\n"),
            "exe": builder.link(leader.sandbox.filesystem.resolvedRootfsPath(image.executablePath) ?? image.executablePath),
            "cwd": builder.link(leader.workingDirectory),
            "root": builder.link("/"),
            "fd": builder.directory(fds, mode: 0o500),
            "task": builder.directory(threads, mode: 0o555),
            "maps": builder.file(maps(image)),
            "mounts": builder.file(mounts),
        ], inode: processDirectoryTag | UInt64(UInt32(bitPattern: process.pid)))
    }

    /// What readlink of /proc/PID/fd/N says, as Linux writes it.
    private static func linkTarget(_ file: OpenFile) -> String {
        switch file.backing {
        case .pipe(let pipe): "pipe:[\(pipe.inode & 0xFFFF_FFFF)]"
        case .special(let object): object.name
        case .host, .memory: file.guestPath
        }
    }

    /// `value` in `radix`, zero-padded to `width` digits.
    private static func padded(_ value: UInt64, radix: Int, width: Int) -> String {
        let digits = String(value, radix: radix)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    private static func signalBits(_ bits: UInt64) -> String { padded(bits, radix: 16, width: 16) }

    private static func status(_ process: ThreadGroup, task: Task?) -> String {
        let credentials = process.credentials
        var ignored: UInt64 = 0, caught: UInt64 = 0
        if let task {
            for signal in Int32(1)...64 {
                let handler = task.signalHandlers.action(for: signal).handler
                if handler == SignalAction.ignore { ignored |= 1 << UInt64(signal - 1) }
                if handler > SignalAction.ignore { caught |= 1 << UInt64(signal - 1) }
            }
        }
        let state = process.isZombie ? "Z (zombie)" : task?.state == .blocked ? "S (sleeping)" : "R (running)"
        let memoryKiB = (task?.image.space.allocator.usedBytes ?? 0) / 1024
        let umask = padded(UInt64(task?.fileCreationMask ?? 0o022), radix: 8, width: 4)
        return """
            Name:\t\(task?.name ?? "")
            Umask:\t\(umask)
            State:\t\(state)
            Tgid:\t\(process.pid)
            Ngid:\t0
            Pid:\t\(task?.tid ?? process.pid)
            PPid:\t\(process.parentPID)
            TracerPid:\t0
            Uid:\t\(credentials.uid)\t\(credentials.effectiveUID)\t\(credentials.savedUID)\t\(credentials.effectiveUID)
            Gid:\t\(credentials.gid)\t\(credentials.effectiveGID)\t\(credentials.savedGID)\t\(credentials.effectiveGID)
            FDSize:\t\(max(64, (task?.files.allEntries.map(\.fd).max() ?? 0) + 1))
            Groups:\t\(credentials.groups.map(String.init).joined(separator: " "))
            VmRSS:\t\(memoryKiB) kB
            Threads:\t\(process.tasks.count)
            SigQ:\t0/\(task?.sandbox.limits.maximumTasks ?? 256)
            SigPnd:\t\(signalBits(task?.pendingSignals.bits ?? 0))
            ShdPnd:\t\(signalBits(process.pendingSignals.bits))
            SigBlk:\t\(signalBits(task?.signalMask ?? 0))
            SigIgn:\t\(signalBits(ignored))
            SigCgt:\t\(signalBits(caught))
            CapInh:\t0000000000000000
            CapPrm:\t\(credentials.effectiveUID == 0 ? "000001ffffffffff" : "0000000000000000")
            CapEff:\t\(credentials.effectiveUID == 0 ? "000001ffffffffff" : "0000000000000000")
            Cpus_allowed_list:\t0
            voluntary_ctxt_switches:\t0
            nonvoluntary_ctxt_switches:\t0

            """
    }

    /// /proc/PID/stat: the 52 fields of Linux's line, times in clock ticks (100 a second).
    private static func statistics(_ process: ThreadGroup, task: Task) -> String {
        let ticks: (UInt64) -> UInt64 = { $0 / 10_000_000 }
        let time = task.tid == process.pid ? process.cpuTime : task.cpuTime
        let children = process.reapedChildrenCPUTime
        let state = process.isZombie ? "Z" : task.state == .blocked ? "S" : "R"
        let memory = task.image.space.allocator.usedBytes
        var fields: [String] = [String(task.tid), "(\(task.name))", state, String(process.parentPID), String(process.pid),
                                String(process.pid), "0", "-1", "4194304", "0", "0", "0", "0",
                                String(ticks(time.userNanoseconds)), String(ticks(time.systemNanoseconds)),
                                String(ticks(children.userNanoseconds)), String(ticks(children.systemNanoseconds)),
                                String(20 + process.niceValue), String(process.niceValue), String(process.tasks.count), "0", "0",
                                String(memory), String(memory / 4096)]
        fields += Array(repeating: "0", count: 52 - fields.count)
        return fields.joined(separator: " ") + "\n"
    }

    private static func maps(_ image: ProcessImage) -> String {
        var lines: [String] = []
        for region in image.space.regions {
            let protection = region.protection
            var permissions = protection.contains(.read) ? "r" : "-"
            permissions += protection.contains(.write) ? "w" : "-"
            permissions += protection.contains(.execute) ? "x" : "-"
            permissions += region.shared == nil ? "p" : "s"
            var line = padded(region.start, radix: 16, width: 12) + "-" + padded(region.end, radix: 16, width: 12)
            line += " " + permissions + " 00000000 00:00 0"
            if !region.name.isEmpty { line += String(repeating: " ", count: 19) + region.name }
            lines.append(line)
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private static let mounts = """
        catalyzer / catalyzer ro,relatime 0 0
        tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
        tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0
        proc /proc proc ro,nosuid,nodev,noexec 0 0

        """

    private static func memoryInformation(_ sandbox: Sandbox) -> String {
        let totalKiB = sandbox.memorySize / 1024
        let usedKiB = min(sandbox.memoryInUse / 1024, totalKiB)
        let sharedKiB = sandbox.filesystem.tmp.bytesUsed / 1024
        let lines: [(String, Int)] = [
            ("MemTotal", totalKiB), ("MemFree", totalKiB - usedKiB), ("MemAvailable", totalKiB - usedKiB),
            ("Buffers", 0), ("Cached", sharedKiB), ("SwapCached", 0), ("Active", usedKiB), ("Inactive", 0),
            ("SwapTotal", 0), ("SwapFree", 0), ("Shmem", sharedKiB), ("CommitLimit", totalKiB), ("Committed_AS", usedKiB),
        ]
        return lines.map { name, value in
            let label = name + ":"
            let number = String(value)
            return label + String(repeating: " ", count: max(1, 24 - label.count - number.count)) + number + " kB"
        }.joined(separator: "\n") + "\n"
    }

    /// The host's first processor entry, as the one vCPU the sandbox reports.
    private static func cpuInformation() -> String {
        guard let file = fopen("/proc/cpuinfo", "r") else { return "processor\t: 0\n\n" }
        defer { fclose(file) }
        var text = ""
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        while getline(&line, &capacity, file) > 0, let line {
            let string = String(cString: line)
            if string == "\n" { break }
            text += string
        }
        free(line)
        return text + "\n"
    }

    private static func systemStatistics(_ sandbox: Sandbox) -> String {
        let ticks = sandbox.tasks.values.reduce(CPUTime()) { total, task in
            var total = total
            total += task.cpuTime
            return total
        }
        let user = ticks.userNanoseconds / 10_000_000, system = ticks.systemNanoseconds / 10_000_000
        var boot = timespec()
        clock_gettime(CLOCK_REALTIME, &boot)
        let uptime = sandbox.time.now(CLOCK_BOOTTIME)
        let running = sandbox.tasks.values.filter { $0.state != .blocked }.count
        return """
            cpu  \(user) 0 \(system) 0 0 0 0 0 0 0
            cpu0 \(user) 0 \(system) 0 0 0 0 0 0 0
            ctxt 0
            btime \(boot.tv_sec - uptime.tv_sec)
            processes \(sandbox.nextID - 1)
            procs_running \(max(1, running))
            procs_blocked 0

            """
    }

    private static func uptime(_ sandbox: Sandbox) -> String {
        let now = sandbox.time.now(CLOCK_BOOTTIME)
        return "\(now.tv_sec)." + padded(UInt64(now.tv_nsec / 10_000_000), radix: 10, width: 2) + " 0.00\n"
    }

    /// Makes the nodes, numbering inodes as it goes.
    private struct Builder {
        private var nextInode = ProcFilesystem.otherInodeBase

        private mutating func inode() -> UInt64 {
            nextInode += 1
            return nextInode
        }

        mutating func file(_ text: String) -> MemoryNode { file(Array(text.utf8)) }

        mutating func file(_ bytes: [UInt8]) -> MemoryNode {
            MemoryNode(content: .file(bytes), mode: 0o444, inode: inode())
        }

        mutating func link(_ target: String) -> MemoryNode {
            MemoryNode(content: .symlink(target), mode: 0o777, inode: inode())
        }

        mutating func directory(_ children: [String: MemoryNode], mode: UInt32 = 0o555, inode: UInt64? = nil) -> MemoryNode {
            MemoryNode(content: .directory(children), mode: mode, inode: inode ?? self.inode())
        }
    }
}
