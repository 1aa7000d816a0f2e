import Foundation
import Glibc

/// Starting the catalyzerfs daemon for the managed mount: `catalyzerfs STORE MOUNTPOINT -o
/// log=LOG`, which mounts, detaches and exits 0 in the process started here.
enum CatalyzerFSLauncher {
    /// How long the daemon may take to mount and answer `/.stats` before the attempt is undone.
    static let startTimeout: Double = 5

    /// The daemon binary: `$CATALYZERFS_BIN`; else `catalyzerfs` beside the running executable
    /// (builds and tests put the two side by side); else /usr/local/bin; else PATH.
    static func locate() throws(MountError) -> String {
        let environment = ProcessInfo.processInfo.environment
        if let configured = environment["CATALYZERFS_BIN"], !configured.isEmpty {
            guard isExecutableFile(configured) else { throw .daemonNotExecutable(path: configured) }
            return configured
        }
        var candidates: [String] = []
        if let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append(URL(fileURLWithPath: executable).deletingLastPathComponent().path + "/catalyzerfs")
        }
        candidates.append("/usr/local/bin/catalyzerfs")
        for directory in (environment["PATH"] ?? "").split(separator: ":") where directory.hasPrefix("/") {
            candidates.append(directory + "/catalyzerfs")
        }
        guard let found = candidates.first(where: isExecutableFile) else { throw .daemonNotFound(searched: candidates) }
        return found
    }

    private static func isExecutableFile(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFREG && access(path, X_OK) == 0
    }

    /// Starts the daemon and waits, within `startTimeout`, until the mount answers `/.stats`.
    /// On failure nothing is left mounted and the error quotes the daemon's last log line.
    static func mount(_ location: ManagedMountLocation) throws(MountError) {
        let binary = try locate()
        let deadline = Date().addingTimeInterval(startTimeout)
        // The daemon's own messages before it detaches go to standard error: append them to its
        // log too, so a failure is explained in one place. Remember where this attempt starts.
        let log = open(location.logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard log >= 0 else { throw .runDirectoryUnusable(operation: "open the log file", path: location.logPath, errno: errno) }
        let logStart = lseek(log, 0, SEEK_END)
        let pid: pid_t
        do {
            defer { close(log) }
            pid = try spawn(binary, [location.storeRoot, location.mountpoint, "-o", "log=\(location.logPath)"], output: log)
        }
        switch waitForExit(pid, until: deadline) {
        case .exited(0), .unknown:
            break
        case let .exited(status):
            detach(location.mountpoint)
            throw .daemonFailed(binary: binary, status: "exited with status \(status)",
                                detail: lastLine(of: location.logPath, from: logStart), log: location.logPath)
        case let .signalled(signal):
            detach(location.mountpoint)
            throw .daemonFailed(binary: binary, status: "was killed by signal \(signal)",
                                detail: lastLine(of: location.logPath, from: logStart), log: location.logPath)
        case .running:
            kill(pid, SIGKILL)
            _ = waitForExit(pid, until: .distantFuture)
            detach(location.mountpoint)
            throw .daemonTimedOut(mountpoint: location.mountpoint, seconds: Int(startTimeout), log: location.logPath)
        }
        while CatalyzerMount.failureToAnswer(location.mountpoint) != nil {
            guard Date() < deadline else {
                detach(location.mountpoint)
                throw .daemonTimedOut(mountpoint: location.mountpoint, seconds: Int(startTimeout), log: location.logPath)
            }
            usleep(10_000)
        }
    }

    /// posix_spawn with stdin from /dev/null, stdout and stderr to `output`, and no signal
    /// blocked (a mask inherited from a worker thread would otherwise make SIGTERM useless).
    private static func spawn(_ binary: String, _ arguments: [String], output: Int32) throws(MountError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, output, STDOUT_FILENO)
        posix_spawn_file_actions_adddup2(&actions, output, STDERR_FILENO)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))

        let argv = ([binary] + arguments).map { strdup($0) }
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let status = (argv + [nil]).withUnsafeBufferPointer { argv in
            posix_spawn(&pid, binary, &actions, &attributes, argv.baseAddress!, environ)
        }
        guard status == 0 else { throw .daemonSpawnFailed(binary: binary, errno: status) }
        return pid
    }

    private enum ProcessState: Equatable {
        case running
        case exited(Int32)
        case signalled(Int32)
        /// Reaped by someone else (SIGCHLD ignored): the mount itself tells how it went.
        case unknown
    }

    /// Polls for `pid` to end until `deadline`; reaps it if it did.
    private static func waitForExit(_ pid: pid_t, until deadline: Date) -> ProcessState {
        while true {
            var status: Int32 = 0
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid {
                // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift does not import as macros.
                let signal = status & 0x7f
                return signal == 0 ? .exited((status >> 8) & 0xff) : .signalled(signal)
            }
            if reaped < 0 && errno != EINTR { return .unknown }
            if Date() >= deadline { return .running }
            usleep(5_000)
        }
    }

    /// Lazily unmounts whatever a failed attempt may have left at `mountpoint`.
    private static func detach(_ mountpoint: String) {
        while !MountInfoTable.entries(at: mountpoint).isEmpty && umount2(mountpoint, Int32(MNT_DETACH)) == 0 {}
    }

    /// The last non-empty line written to `path` since `offset`, for error messages.
    private static func lastLine(of path: String, from offset: off_t) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: UInt64(max(offset, 0)))) != nil,
              let data = try? handle.readToEnd() else { return "" }
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        return lines.last(where: { !$0.isEmpty }) ?? ""
    }
}
