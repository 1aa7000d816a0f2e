import CLinux
import Foundation

/// Running the project's binaries and system tools from tests, with their output captured.
public struct CommandResult: Sendable, CustomStringConvertible {
    public var status: Int32
    public var stdout: String
    public var stderr: String

    public init(status: Int32, stdout: String, stderr: String) {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
    }

    public var description: String {
        "exit \(status)\n--- stdout\n\(stdout)\n--- stderr\n\(stderr)"
    }
}

public enum Command {
    /// Directory of the built products (`catalyzer`, `catalyzerfs`): `$CATALYZER_BIN_DIR`, else
    /// the directory holding the running test bundle, which SwiftPM shares with the executables.
    public static var binDirectory: String {
        if let dir = ProcessInfo.processInfo.environment["CATALYZER_BIN_DIR"], !dir.isEmpty { return dir }
        var url = Bundle.main.bundleURL
        while url.path != "/" {
            if FileManager.default.isExecutableFile(atPath: url.appendingPathComponent("catalyzer").path) { return url.path }
            url.deleteLastPathComponent()
        }
        return Bundle.main.bundleURL.deletingLastPathComponent().path
    }

    /// Path of a built product, e.g. `binary("catalyzer")`.
    public static func binary(_ name: String) -> String { binDirectory + "/" + name }

    /// Runs `executable` (a path, or a name looked up in PATH) to completion; `started` is
    /// told its pid as soon as it runs.
    @discardableResult
    public static func run(_ executable: String, _ arguments: [String], stdin: Data? = nil,
                           environment: [String: String] = [:], started: ((Int32) -> Void)? = nil) throws -> CommandResult {
        let process = Process()
        if executable.contains("/") {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
        } else {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [executable] + arguments
        }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        let err = Pipe()
        let input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        try process.run()
        started?(process.processIdentifier)
        if let stdin { input.fileHandleForWriting.write(stdin) }
        try input.fileHandleForWriting.close()
        // Read both pipes concurrently so neither fills up and blocks the child.
        let errData = ErrorDrain(err.fileHandleForReading)
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return CommandResult(status: process.terminationStatus,
                             stdout: String(decoding: outData, as: UTF8.self),
                             stderr: String(decoding: errData.wait(), as: UTF8.self))
    }

    /// Runs `executable` with posix_spawn rather than Foundation's Process, output to temporary
    /// files, for commands whose children daemonize or outlive them (podman's conmon, an OCI
    /// runtime's container process): Foundation's Process can lose track of such a child's exit,
    /// and a pipe stays open as long as any descendant holds it. Only fds 0-2 go to the child.
    /// Killed with SIGKILL after `seconds` (status 137).
    public static func spawned(_ seconds: Double, _ executable: String, _ arguments: [String]) throws -> CommandResult {
        let directory = NSTemporaryDirectory() + "/catalyzer-spawn-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, directory + "/stdout", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, directory + "/stderr", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        clinux_spawn_close_from(&actions, 3)
        var pid: pid_t = 0
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let spawnedStatus = posix_spawn(&pid, executable, &actions, nil, argv, Glibc.environ)
        guard spawnedStatus == 0 else { throw CocoaError(.executableNotLoadable, userInfo: [NSFilePathErrorKey: executable]) }
        let deadline = Date().addingTimeInterval(seconds)
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() > deadline {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                break
            }
            usleep(5_000)
        }
        let code = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        func read(_ name: String) -> String { (try? String(contentsOfFile: directory + "/" + name, encoding: .utf8)) ?? "" }
        return CommandResult(status: code, stdout: read("stdout"), stderr: read("stderr"))
    }

    /// Starts a long-lived `executable` (a daemon the test stops itself) with stdin from /dev/null
    /// and stdout and stderr appended to `log`; only fds 0-2 go to it. Returns its pid.
    public static func background(_ executable: String, _ arguments: [String], log: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        clinux_spawn_close_from(&actions, 3)
        var pid: pid_t = 0
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let status = posix_spawn(&pid, executable, &actions, nil, argv, Glibc.environ)
        guard status == 0 else { throw CocoaError(.executableNotLoadable, userInfo: [NSFilePathErrorKey: executable]) }
        return pid
    }

    /// Runs `executable` under `timeout -s KILL seconds`, so that a regression that makes it hang
    /// fails the test (status 137) instead of hanging the run.
    @discardableResult
    public static func bounded(_ seconds: Int, _ executable: String, _ arguments: [String], stdin: Data? = nil,
                               environment: [String: String] = [:]) throws -> CommandResult {
        try run("timeout", ["-s", "KILL", String(seconds), executable] + arguments, stdin: stdin, environment: environment)
    }

    /// Runs the built `catalyzer` CLI.
    @discardableResult
    public static func catalyzer(_ arguments: [String], stdin: Data? = nil) throws -> CommandResult {
        try run(binary("catalyzer"), arguments, stdin: stdin)
    }
}

/// Reads a pipe to its end on a background thread.
private final class ErrorDrain: @unchecked Sendable {
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)

    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            data = handle.readDataToEndOfFile()
            done.signal()
        }
    }

    func wait() -> Data {
        done.wait()
        return data
    }
}
