import CLinux
import CatalyzerKernel
import CatalyzerOCI
import Foundation
import Glibc

/// `exec`: a second process in a running container, through a unix socket the container's
/// monitor listens on (`--root/ID/exec.sock`).
///
/// The engine runs `catalyzer-runtime exec ... ID`, which spawns `exec-process ID PLAN`, a host
/// process standing for the guest process as the container process stands for the first: its
/// stdio is the engine's, its exit status the guest process's, and it is what `--pid-file`
/// names (an engine such as conmon, a subreaper, waits for it). It connects, sends the plan with
/// its fds 0-2 attached (SCM_RIGHTS; the guest process reads and writes them directly), and reads
/// the monitor's answers, one line each:
///
///     started PID        the process runs in the sandbox as PID
///     error MESSAGE      it could not start
///     exited STATUS      its wait status
///
/// When the connection ends without `exited`, the sandbox has ended, and the process with it: the
/// helper ends as if by SIGKILL, as runc's exec'd processes do when the container's init dies.
enum ExecChannel {
    /// Requests larger than this are refused (a plan is args, env and cwd: a few KiB).
    static let requestLimit = 1 << 20

    // MARK: the monitor's side

    /// Listens on the container's exec socket and starts every process asked for in `inbox`'s
    /// sandbox, on a thread of its own; returns once the socket listens.
    static func serve(directory: String, inbox: HostInbox) throws {
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listener >= 0 else { throw ContainerError.system("cannot make the exec socket: \(String(cString: strerror(errno)))") }
        unlink(directory + "/exec.sock")
        let bound = try UnixSocketAddress.with(directory: directory, name: "exec.sock") { bind(listener, $0, $1) }
        guard bound == 0, listen(listener, 16) == 0 else {
            let reason = String(cString: strerror(errno))
            close(listener)
            throw ContainerError.system("cannot listen on \(directory)/exec.sock: \(reason)")
        }
        chmod(directory + "/exec.sock", 0o600)
        inbox.expectLaunches()
        let thread = Thread {
            while true {
                let connection = accept(listener, nil, nil)
                if connection < 0 {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    RuntimeLog.write("warning", "exec socket: accept failed: \(String(cString: strerror(errno))); exec is off")
                    return
                }
                _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
                handle(connection, inbox: inbox)
            }
        }
        thread.name = "catalyzer-exec"
        thread.start()
    }

    /// Reads one request and posts its process; the connection then belongs to the launch's
    /// callbacks, which answer on it and close it when the process ends.
    private static func handle(_ connection: Int32, inbox: HostInbox) {
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request = [UInt8]()
        var streams: [Int32] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while !request.contains(UInt8(ascii: "\n")) && request.count <= requestLimit {
            var fds = [Int32](repeating: -1, count: 3)
            var count: Int32 = 0
            let received = clinux_receive_with_fds(connection, &buffer, UInt(buffer.count), &fds, 3, &count)
            if count > 0 {
                if streams.isEmpty { streams = Array(fds.prefix(Int(count))) } else { fds.prefix(Int(count)).forEach { close($0) } }
            }
            guard received > 0 else { break }
            request += buffer.prefix(received)
        }
        func refuse(_ message: String) {
            answer(connection, "error " + message)
            streams.forEach { close($0) }
            close(connection)
        }
        guard let end = request.firstIndex(of: UInt8(ascii: "\n")) else {
            return refuse(request.count > requestLimit ? "the request is over \(requestLimit) bytes" : "the request ended early")
        }
        let message: ChannelRequest
        do {
            message = try JSONDecoder().decode(ChannelRequest.self, from: Data(request[..<end]))
        } catch {
            return refuse("the request is not one this monitor understands: \(error)")
        }
        if let order = message.checkpoint {
            streams.forEach { close($0) }
            return checkpoint(order, connection: connection, inbox: inbox)
        }
        guard let plan = message.exec else { return refuse("the request asks for nothing") }
        guard streams.count == 3 else { return refuse("the request did not bring its stdin, stdout and stderr") }
        var launch = ProcessLaunch(
            programPath: plan.programPath, arguments: plan.arguments, environment: plan.environment,
            workingDirectory: plan.workingDirectory, standardStreams: streams,
            started: { result in
                switch result {
                case .success(let pid): answer(connection, "started \(pid)")
                case .failure(let error):
                    answer(connection, "error cannot start \(plan.arguments.first ?? plan.programPath): \(error)")
                    close(connection)
                }
            },
            exited: { status in
                answer(connection, "exited \(status)")
                close(connection)
            })
        launch.user = SandboxUser(uid: plan.uid, gid: plan.gid, groups: plan.groups)
        inbox.post(launch)
    }

    /// Takes the checkpoint on the sandbox's thread, paused; answers `checkpointed` or `error`.
    private static func checkpoint(_ order: CheckpointOrder, connection: Int32, inbox: HostInbox) {
        inbox.post(pausedWork: { sandbox in
            do {
                _ = try ContainerCheckpoint.write(sandbox, imagePath: order.imagePath, containerID: order.containerID)
                if !order.leaveRunning { sandbox.end(.killed(signal: SIGKILL, reason: "checkpointed")) }
                answer(connection, "checkpointed")
            } catch {
                answer(connection, "error checkpoint of container \(order.containerID) failed: \(error)")
            }
            close(connection)
        })
    }

    /// What the monitor is asked on the channel: one of these.
    struct ChannelRequest: Codable {
        var exec: ExecPlan?
        var checkpoint: CheckpointOrder?
    }

    struct CheckpointOrder: Codable {
        var containerID: String
        var imagePath: String
        var leaveRunning: Bool
    }

    /// Asks container `id`'s monitor for a checkpoint into `imagePath` and waits for it; unless
    /// `leaveRunning`, also for the container process to end.
    static func requestCheckpoint(id: String, imagePath: String, leaveRunning: Bool) throws {
        let store = RuntimeCommand.store
        let record = try store.load(id)
        let status = store.status(of: record)
        guard status == "running" else { throw ContainerError.wrongState(id: id, status: status, wanted: "running") }
        let connection = try connectToMonitor(id)
        defer { close(connection) }
        let order = ChannelRequest(checkpoint: CheckpointOrder(containerID: id, imagePath: imagePath, leaveRunning: leaveRunning))
        let line = Array(try JSONEncoder().encode(order)) + [UInt8(ascii: "\n")]
        guard line.withUnsafeBytes({ send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == line.count else {
            throw ContainerError.system("cannot send the checkpoint request to container \(id): \(String(cString: strerror(errno)))")
        }
        var reply = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !reply.contains(UInt8(ascii: "\n")) {
            let count = read(connection, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            reply += buffer.prefix(count)
        }
        let answer = String(decoding: reply, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard answer == "checkpointed" else {
            throw ContainerError.system(answer.hasPrefix("error ") ? String(answer.dropFirst(6))
                                        : "container \(id)'s monitor ended before the checkpoint was written")
        }
        guard !leaveRunning else { return }
        let deadline = Date().addingTimeInterval(10)
        while !ContainerStore.hasFinished(pid: record.pid, startTime: record.pidStartTime) && Date() < deadline { usleep(5_000) }
    }

    /// A connection to container `id`'s monitor, on its exec socket.
    static func connectToMonitor(_ id: String) throws -> Int32 {
        let directory = RuntimeCommand.store.directory(id)
        let connection = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard connection >= 0 else { throw ContainerError.system("cannot make a socket: \(String(cString: strerror(errno)))") }
        let connected = (try? UnixSocketAddress.with(directory: directory, name: "exec.sock") { connect(connection, $0, $1) }) ?? -1
        guard connected == 0 else {
            let reason = String(cString: strerror(errno))
            close(connection)
            throw ContainerError.system("cannot reach container \(id)'s monitor at \(directory)/exec.sock: \(reason)")
        }
        return connection
    }

    private static func answer(_ connection: Int32, _ line: String) {
        let bytes = Array((line.replacingOccurrences(of: "\n", with: " ") + "\n").utf8)
        _ = bytes.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    // MARK: the engine's side

    /// `exec`: spawns the helper with this process's stdio, waits for it to report the guest
    /// process started, writes `pidFile`; then returns (`detach`) or waits and exits as the
    /// guest process did.
    static func exec(id: String, plan: ExecPlan, pidFile: String?, detach: Bool, consoleSocket: String?) throws {
        let store = RuntimeCommand.store
        let record = try store.load(id)
        let status = store.status(of: record)
        guard status == "running" else { throw ContainerError.wrongState(id: id, status: status, wanted: "running") }
        let request = String(decoding: try JSONEncoder().encode(ChannelRequest(exec: plan)), as: UTF8.self)
        let terminal = plan.terminal ? try ConsoleSocket.terminal(sendingTo: consoleSocket) : nil
        defer { if let terminal { close(terminal) } }
        let (helper, report) = try ContainerLauncher.spawnReporting(["exec-process", id, request], stdio: terminal)
        guard report == "ok" else {
            ContainerLauncher.reap(helper)
            throw ContainerError.system(report.isEmpty ? "the exec process ended before the process started" : report)
        }
        if let pidFile { try ContainerLauncher.writePIDFile(pidFile, pid: helper) }
        if detach { return }
        var waitStatus: Int32 = 0
        while waitpid(helper, &waitStatus, 0) < 0 && errno == EINTR {}
        ContainerLauncher.exit(withStatusOf: waitStatus)
    }

    /// The helper: connects, sends `request` with fds 0-2, reports on fd 3, and ends as the
    /// guest process did.
    static func runHelper(id: String, request: String) -> Never {
        func report(_ text: String) {
            _ = text.withCString { Glibc.write(3, $0, strlen($0)) }
            close(3)
        }
        let connection: Int32
        do {
            connection = try connectToMonitor(id)
        } catch {
            report("\(error)\n")
            Foundation.exit(1)
        }
        let line = Array((request + "\n").utf8)
        let streams: [Int32] = [0, 1, 2]
        let sent = line.withUnsafeBytes { bytes in
            streams.withUnsafeBufferPointer { clinux_send_with_fds(connection, bytes.baseAddress, UInt(bytes.count), $0.baseAddress, 3) }
        }
        guard sent == line.count else {
            report("cannot send the exec request to container \(id): \(sent < 0 ? String(cString: strerror(errno)) : "short write")\n")
            Foundation.exit(1)
        }
        var pending = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        var started = false
        while true {
            while let end = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let answer = String(decoding: pending[..<end], as: UTF8.self)
                pending.removeSubrange(...end)
                if answer.hasPrefix("started ") {
                    started = true
                    report("ok\n")
                } else if answer.hasPrefix("error ") {
                    report(String(answer.dropFirst(6)) + "\n")
                    Foundation.exit(1)
                } else if answer.hasPrefix("exited "), let status = Int32(answer.dropFirst(7)) {
                    ContainerLauncher.exit(withStatusOf: status)
                }
            }
            let count = read(connection, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            pending += buffer.prefix(count)
        }
        // The monitor went away: the container (and the process in it) ended.
        if !started { report("container \(id) ended before the process started\n") }
        ContainerLauncher.exit(bySignal: SIGKILL)
    }
}
