import CLinux
import CatalyzerKernel
import CatalyzerOCI
import CatalyzerRuntime
import Foundation
import Glibc

/// create, start and the container process itself.
///
/// `create` checks the bundle, records the container, and spawns the container process
/// (`catalyzer-runtime init ID`) with its own stdio, which is the engine's. That process builds
/// the sandbox (loads the program from the root), reports "ok" or its error on fd 3, and blocks
/// opening the start FIFO for writing. `start` opens the FIFO for reading, which lets it through;
/// it writes one byte, and runs the guest. When `create` returns the process is ready, so a bad
/// program is `create`'s error, not a container that dies at start.
enum ContainerLauncher {
    /// Creates the container; returns its process's pid.
    static func create(id: String, bundle: String, consoleSocket: String?, restoringFrom storeRoot: String? = nil) throws -> Int32 {
        let bundle = URL(fileURLWithPath: bundle).standardizedFileURL.path
        let store = RuntimeCommand.store
        guard ContainerStore.isValidID(id) else { throw ContainerError.badID(id) }
        guard (try? store.load(id)) == nil else { throw ContainerError.exists(id) }
        let plan = try SandboxPlan.load(bundle: bundle)  // refuses what the sandbox cannot do, before anything is made
        var record = ContainerRecord(id: id, bundle: bundle, pid: 0, pidStartTime: 0,
                                     created: ISO8601DateFormatter().string(from: Date()), annotations: plan.annotations)
        try store.create(record)
        do {
            if let storeRoot {
                // A restored container runs at once: no start, so no FIFO to wait on. Its image is
                // copied into the container's state first: the engine may delete the checkpoint
                // (podman does, after a restore) while catalyzerfs still serves pages from it.
                unlink(store.startFIFO(id))
                let copy = store.directory(id) + "/image"
                do {
                    try FileManager.default.copyItem(atPath: storeRoot, toPath: copy)
                } catch {
                    throw ContainerError.system("cannot copy the checkpoint's image \(storeRoot) to \(copy): \(error.localizedDescription)")
                }
                record.restoredFrom = copy
                try store.save(record)
            }
            let terminal = plan.process.terminal == true ? try ConsoleSocket.terminal(sendingTo: consoleSocket) : nil
            defer { if let terminal { close(terminal) } }
            let pid = try spawnContainerProcess(id: id, stdio: terminal)
            record.pid = pid
            record.pidStartTime = ContainerStore.processStat(pid)?.startTime ?? 0
            try store.save(record)
            return pid
        } catch {
            if let copy = record.restoredFrom { ContainerCheckpoint.unmount(storeRoot: copy) }
            store.remove(id)
            throw error
        }
    }

    /// Spawns `init ID` and waits for its report on the sync pipe.
    private static func spawnContainerProcess(id: String, stdio: Int32?) throws -> Int32 {
        let (pid, report) = try spawnReporting(["init", id], stdio: stdio)
        guard report == "ok" else {
            reap(pid)
            throw ContainerError.system(report.isEmpty ? "the container process ended before it was ready" : report)
        }
        return pid
    }

    /// Spawns this binary with the global flags and `command`, stdio this process's (or `stdio`
    /// as all three: a terminal), a pipe on fd 3 for its report; returns its pid and the report
    /// (the text it wrote before closing fd 3 or exiting), trimmed.
    static func spawnReporting(_ command: [String], stdio: Int32? = nil) throws -> (pid: Int32, report: String) {
        var sync: [Int32] = [-1, -1]
        guard pipe(&sync) == 0 else { throw ContainerError.system("cannot make a pipe: \(String(cString: strerror(errno)))") }
        _ = fcntl(sync[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(sync[1], F_SETFD, FD_CLOEXEC)
        defer { close(sync[0]) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, sync[1], 3)  // dup2 clears close-on-exec on 3
        if let stdio { for fd in Int32(0)...2 { posix_spawn_file_actions_adddup2(&actions, stdio, fd) } }
        // Nothing else of ours or the engine's goes along: a stray copy of a pipe's write end in
        // a long-lived container process keeps whoever reads that pipe from ever seeing its end.
        clinux_spawn_close_from(&actions, 4)
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let globals = RuntimeGlobals.current
        var arguments = [executable, "--root", globals.root]
        if let log = globals.logFile { arguments += ["--log", log, "--log-format", globals.logFormat] }
        arguments += command
        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, Glibc.environ)
        close(sync[1])
        guard spawned == 0 else { throw ContainerError.system("cannot start \(command[0]): \(String(cString: strerror(spawned)))") }
        var report = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(sync[0], &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            report += buffer.prefix(count)
        }
        return (pid, String(decoding: report, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Kills and waits for a child that failed to get ready.
    static func reap(_ pid: Int32) {
        _ = kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }

    static func writePIDFile(_ path: String, pid: Int32) throws {
        let temporary = path + ".tmp-\(getpid())"
        guard (try? "\(pid)".write(toFile: temporary, atomically: false, encoding: .utf8)) != nil, rename(temporary, path) == 0 else {
            throw ContainerError.system("cannot write the pid file \(path)")
        }
    }

    /// Lets a created container's process run the guest.
    static func start(id: String) throws {
        let store = RuntimeCommand.store
        let record = try store.load(id)
        let status = store.status(of: record)
        guard status == "created" else { throw ContainerError.wrongState(id: id, status: status, wanted: "created") }
        let fifo = store.startFIFO(id)
        let fd = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw ContainerError.system("cannot open \(fifo): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        // The container process, blocked opening the FIFO for writing, now gets through and writes.
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let deadline = Date().addingTimeInterval(10)
        var byte: UInt8 = 0
        while read(fd, &byte, 1) != 1 {
            guard Date() < deadline, ContainerStore.isAlive(pid: record.pid, startTime: record.pidStartTime) else {
                throw ContainerError.system("the container process \(record.pid) did not take the start (it ended, or is stuck)")
            }
            _ = poll(&entry, 1, 50)
        }
        unlink(fifo)
    }

    /// Exits as a process with wait status `status` did: its code, or the same signal.
    static func exit(withStatusOf status: Int32) -> Never {
        let signalled = status & 0x7F
        if signalled != 0 && signalled != 0x7F { exit(bySignal: signalled) }
        Foundation.exit((status >> 8) & 0xFF)
    }

    /// Ends this process by `signal`, as the engine expects of a container killed by it (128+N
    /// if the signal does not end it).
    static func exit(bySignal signal: Int32) -> Never {
        Glibc.signal(signal, SIG_DFL)
        _ = Glibc.kill(getpid(), signal)
        Foundation.exit(128 + signal)
    }

    /// The container process: build, report, wait for start, run, exit as the guest did.
    static func runContainerProcess(id: String) -> Never {
        let store = RuntimeCommand.store
        func report(_ text: String) {
            _ = text.withCString { Glibc.write(3, $0, strlen($0)) }
            close(3)
        }
        let sandbox: Sandbox
        var restored: RestoredSandbox?
        let record = try? store.load(id)
        do {
            guard let record else { throw ContainerError.notFound(id) }
            let plan = try SandboxPlan.load(bundle: record.bundle)
            if let storeRoot = record.restoredFrom {
                restored = try ContainerCheckpoint.restoredSandbox(storeRoot: storeRoot, plan: plan, standardStreams: [0, 1, 2])
                sandbox = restored!.kernel
            } else {
                sandbox = try Sandbox(configuration: plan.configuration)
            }
        } catch {
            report("cannot \(record?.restoredFrom == nil ? "create" : "restore") container \(id): \(error)\n")
            Foundation.exit(1)
        }
        report("ok\n")
        if restored == nil {
            let fifo = open(store.startFIFO(id), O_WRONLY | O_CLOEXEC)  // blocks until start
            guard fifo >= 0 else {
                RuntimeLog.fail("container \(id): cannot open its start FIFO: \(String(cString: strerror(errno)))")
            }
            var byte: UInt8 = 1
            _ = Glibc.write(fifo, &byte, 1)
            close(fifo)
        }
        do {
            try ExecChannel.serve(directory: store.directory(id), inbox: sandbox.hostInbox())
        } catch {
            RuntimeLog.write("warning", "container \(id): exec is unavailable: \(error)")
        }
        let forwarder = HostSignalForwarder(to: sandbox.hostInbox())
        let exit: SandboxExit
        do {
            exit = try restored?.run() ?? sandbox.run()
        } catch {
            RuntimeLog.fail("container \(id): the sandbox failed: \(error)")
        }
        forwarder.stop()
        switch exit {
        case .exited(let status):
            Foundation.exit(status)
        case .killed(let signal, let reason):
            if signal != SIGKILL && signal != SIGTERM && signal != SIGINT { RuntimeLog.write("warning", "container \(id): \(reason)") }
            ContainerLauncher.exit(bySignal: signal)
        case .timedOut, .readyPoint:
            Foundation.exit(exit.status)
        }
    }
}
