import ArgumentParser
import CatalyzerImage
import CatalyzerKernel
import CatalyzerRuntime
import Glibc

/// `catalyzer run`: a cold run of a Linux x86-64 program (static, or dynamically linked against the
/// rootfs's ld.so and libraries) in a KVM sandbox, the monitor as its kernel. stdio passes through;
/// the program's exit status becomes catalyzer's.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a Linux x86-64 program (static or dynamically linked) in a KVM sandbox.",
        discussion: """
            The program runs in guest user mode; every syscall is served by the monitor from the \
            read-only --rootfs (plus an in-memory writable /tmp; --writable-root makes / writable the same way). A dynamically linked program's \
            interpreter (ld.so) and libraries come from the rootfs. Exit status: the program's, \
            128+N when killed by signal N (139 for a segfault), 124 on timeout.
            """)

    @Option(help: "Host directory that becomes the sandbox's read-only /.")
    var rootfs: String

    @Option(help: "Guest memory: the hard cap on what the program can use (e.g. 256M, 1G); /tmp gets as much again.")
    var memory = "256M"

    @Option(help: "Stop the program after this long (e.g. 500ms, 10s, 2m).")
    var timeout = DurationArgument(argument: "10s")!

    @Option(name: .customLong("env"), help: "Set an environment variable (KEY=VALUE); repeatable.")
    var environment: [String] = []

    @Option(help: "Threads plus processes the program may have at once; clone and fork beyond it fail with EAGAIN.")
    var maxTasks = 256

    @Flag(help: "Make / writable: changes go to an in-memory layer over the rootfs (counted in --memory) and vanish with the sandbox; the rootfs is never written.")
    var writableRoot = false

    @Flag(help: "Print every syscall with its arguments and result to stderr.")
    var strace = false

    @OptionGroup var network: NetworkOptions

    @Argument(parsing: .postTerminator, help: "The program (a path inside the rootfs, or a name on its PATH) and its arguments.")
    var command: [String]

    func validate() throws {
        try Self.validate(command: command, environment: environment, memory: memory)
        guard maxTasks >= 1 else { throw ValidationError("--max-tasks must be at least 1") }
        _ = try network.policy()
    }

    /// Checks the arguments every command that starts a sandbox takes.
    static func validate(command: [String], environment: [String], memory: String) throws {
        guard !command.isEmpty else { throw ValidationError("missing PROGRAM after --") }
        guard environment.allSatisfy({ $0.contains("=") }) else { throw ValidationError("--env takes KEY=VALUE") }
        guard let bytes = ByteCount.parse(memory), bytes >= 1 << 20, bytes % 4096 == 0 else {
            throw ValidationError("--memory must be a size of at least 1M and a multiple of 4K")
        }
    }

    /// The environment a program gets: `--env` entries plus a default PATH.
    static func environment(_ entries: [String]) -> [String] {
        var environment = entries
        if !environment.contains(where: { $0.hasPrefix("PATH=") }) {
            environment.insert("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", at: 0)
        }
        return environment
    }

    func run() throws {
        let environment = Self.environment(environment)
        let program = SandboxConfiguration.resolveProgram(command[0], rootfs: rootfs, environment: environment)
        var configuration = SandboxConfiguration(
            rootDirectory: rootfs, memorySize: Int(ByteCount.parse(memory) ?? 0), programPath: program, arguments: command,
            environment: environment, traceSyscalls: strace)
        configuration.limits.maximumTasks = maxTasks
        configuration.network = try network.policy()
        configuration.writableRoot = writableRoot
        let kernel: Sandbox
        do {
            kernel = try Sandbox(configuration: configuration)
        } catch {
            Self.report("cannot start \(command[0]): \(error)")
            throw ExitCode(127)
        }
        let exit: SandboxExit
        // SIGTERM, SIGINT (Ctrl-C) and the like go to the program, which may handle them.
        let forwarder = HostSignalForwarder(to: kernel.hostInbox())
        defer { forwarder.stop() }
        do {
            exit = try kernel.run(timeoutSeconds: Double(timeout.nanoseconds) / 1e9)
        } catch {
            Self.report("sandbox failed: \(error)")
            throw ExitCode(125)
        }
        if strace && !kernel.unimplementedSyscalls.isEmpty {
            let list = kernel.unimplementedSyscalls.sorted { $0.key < $1.key }.map { "\($0.key)×\($0.value)" }
            Self.report("unimplemented syscalls (ENOSYS): " + list.joined(separator: ", "))
        }
        switch exit {
        case .exited, .readyPoint: break
        case .killed(let signal, let reason):
            Self.report("program killed by \(Self.signalName(signal)): \(reason)")
        case .timedOut:
            Self.report("timed out after \(timeout.description); sandbox stopped")
        }
        throw ExitCode(exit.status)
    }

    static func signalName(_ signal: Int32) -> String {
        let names: [Int32: String] = [SIGSEGV: "SIGSEGV", SIGILL: "SIGILL", SIGFPE: "SIGFPE", SIGBUS: "SIGBUS",
                                      SIGABRT: "SIGABRT", SIGTRAP: "SIGTRAP", SIGKILL: "SIGKILL"]
        return names[signal] ?? "signal \(signal)"
    }

    private static func report(_ message: String) {
        let bytes = Array("catalyzer: \(message)\n".utf8)
        _ = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}

/// A duration argument such as `500ms`, `10s`, `2m` or a plain number of seconds.
struct DurationArgument: ExpressibleByArgument, Sendable, CustomStringConvertible {
    let nanoseconds: UInt64
    let description: String

    init?(argument: String) {
        let units: [(String, Double)] = [("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
        let unit = units.first { argument.hasSuffix($0.0) } ?? ("", 1e9)
        guard let value = Double(argument.dropLast(unit.0.count)), value > 0, value < 1e6 else { return nil }
        nanoseconds = UInt64(value * unit.1)
        description = argument
    }
}
