import CatalyzerKernel
import CatalyzerKVM
import Dispatch
import Glibc
import Synchronization

/// Cold start to first response of a Python function: `python3 /opt/catalyzer/runner.py
/// /functions/NAME.py` is started with one request on stdin, and the clock stops when the first
/// response line arrives on stdout. In the sandbox that covers VM creation, loading python and
/// ld.so, the interpreter's start, the function's imports and the handler; on the host the same
/// command runs under chroot(8) in the same rootfs (or with the rootfs's paths if not root).
public enum PythonBenchmark {
    /// One cold start.
    public struct Start: Sendable {
        /// Nanoseconds from the start to the first response line.
        public let nanoseconds: Double
        /// Syscalls the program made (sandbox only: the host cannot count them without tracing).
        public let syscalls: Int?
        /// Page faults: user faults that reached the monitor in the sandbox, minor+major faults of
        /// the python process on the host.
        public let pageFaults: Int
        /// Guest RAM in use at exit (sandbox), or the peak RSS (host), in bytes.
        public let memory: Int
    }

    public struct FunctionStarts: Sendable {
        public let function: String
        public let sandbox: [Start]
        public let host: [Start]
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// `runs` cold starts of each function in the sandbox and on the host.
    public static func run(rootfs: String, functions: [String], runs: Int, memorySize: Int = 512 << 20,
                           log: (String) -> Void = { _ in }) throws -> [FunctionStarts] {
        let kvm = try KVM()
        return try functions.map { function in
            log("bench: \(function) in the sandbox")
            let sandbox = try (0..<runs).map { _ in try sandboxStart(rootfs: rootfs, function: function, kvm: kvm, memorySize: memorySize) }
            log("bench: \(function) on the host")
            let host = try (0..<runs).map { _ in try hostStart(rootfs: rootfs, function: function) }
            return FunctionStarts(function: function, sandbox: sandbox, host: host)
        }
    }

    static let runner = "/opt/catalyzer/runner.py"
    /// A request every sample function answers (hello greets, heavy queries customer-7).
    static let request = #"{"name": "bench", "customer": "customer-7"}"# + "\n"

    /// The command line of a function's runner inside the rootfs.
    public static func arguments(function: String) -> [String] {
        ["/usr/bin/python3", runner, "/functions/\(function).py"]
    }

    /// One sandbox cold start; stdout is watched by a reader thread that timestamps the first line.
    public static func sandboxStart(rootfs: String, function: String, kvm: KVM, memorySize: Int) throws -> Start {
        let input = try HostPipe(), output = try HostPipe()
        let devNull = open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer { close(devNull) }
        try input.writeAll(Array(request.utf8))
        input.closeWriteEnd()  // EOF after the request: the runner exits once it has answered
        let firstLine = FirstLineWatch(fd: output.readEnd)
        var configuration = SandboxConfiguration(rootDirectory: rootfs, memorySize: memorySize,
                                                 programPath: "/usr/bin/python3", arguments: arguments(function: function),
                                                 environment: ["PATH=/usr/bin:/bin"])
        configuration.standardStreams = [input.readEnd, output.writeEnd, devNull]
        let start = monotonicNanoseconds()
        let kernel = try Sandbox(configuration: configuration, kvm: kvm)
        let exit = try kernel.run()
        output.closeWriteEnd()
        guard let answered = firstLine.wait() else {
            throw Failure(description: "\(function) gave no response in the sandbox (\(exit))")
        }
        return Start(nanoseconds: answered - start, syscalls: kernel.syscallCount, pageFaults: kernel.pageFaultCount,
                     memory: kernel.memoryInUse)
    }

    /// One host cold start of the same command, spawned directly.
    public static func hostStart(rootfs: String, function: String) throws -> Start {
        let input = try HostPipe(), output = try HostPipe()
        let devNull = open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer { close(devNull) }
        try input.writeAll(Array(request.utf8))
        input.closeWriteEnd()
        let command = geteuid() == 0
            ? ["/usr/sbin/chroot", rootfs] + arguments(function: function)
            : ["/usr/bin/python3.11", rootfs + runner, rootfs + "/functions/\(function).py"]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input.readEnd, 0)
        posix_spawn_file_actions_adddup2(&actions, output.writeEnd, 1)
        posix_spawn_file_actions_adddup2(&actions, devNull, 2)
        let argv = command.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let environment = [strdup("PATH=/usr/bin:/bin"), nil]
        defer { environment.forEach { free($0) } }
        let start = monotonicNanoseconds()
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, command[0], &actions, nil, argv, environment)
        guard spawned == 0 else { throw Failure(description: "posix_spawn \(command[0]): \(String(cString: strerror(spawned)))") }
        output.closeWriteEnd()
        let answered = FirstLineWatch.readFirstLine(fd: output.readEnd)
        var status: Int32 = 0
        var usage = rusage()
        wait4(pid, &status, 0, &usage)
        guard let answered else { throw Failure(description: "\(function) gave no response on the host (status \(status))") }
        return Start(nanoseconds: answered - start, syscalls: nil, pageFaults: usage.ru_minflt + usage.ru_majflt,
                     memory: usage.ru_maxrss * 1024)
    }

    static func monotonicNanoseconds() -> Double { Double(Sandbox.monotonicNanoseconds()) }
}

/// A host pipe whose ends close once (on request or when it goes away).
private final class HostPipe {
    private(set) var readEnd: Int32
    private(set) var writeEnd: Int32

    init() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw PythonBenchmark.Failure(description: "pipe: \(String(cString: strerror(errno)))") }
        readEnd = fds[0]
        writeEnd = fds[1]
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    }

    func writeAll(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { write(writeEnd, $0.baseAddress, $0.count) }
            guard written > 0 else { throw PythonBenchmark.Failure(description: "write to pipe failed") }
            offset += written
        }
    }

    func closeWriteEnd() {
        if writeEnd >= 0 { close(writeEnd) }
        writeEnd = -1
    }

    deinit {
        close(readEnd)
        closeWriteEnd()
    }
}

/// Timestamps the first complete line read from a pipe, on a thread of its own (the sandbox runs
/// on the calling thread), then drains the pipe to EOF so the writer never blocks.
private final class FirstLineWatch: Sendable {
    private let stamp = Atomic<UInt64>(0)
    private let done = DispatchSemaphore(value: 0)

    init(fd: Int32) {
        DispatchQueue(label: "catalyzer-bench-first-line").async { [self] in
            if let time = Self.readFirstLine(fd: fd) { stamp.store(time.bitPattern, ordering: .releasing) }
            done.signal()
        }
    }

    /// The time of the first line, once the pipe reached EOF; nil if no line arrived.
    func wait() -> Double? {
        done.wait()
        let bits = stamp.load(ordering: .acquiring)
        return bits == 0 ? nil : Double(bitPattern: bits)
    }

    /// Reads to EOF; returns the monotonic time at which the first newline arrived.
    static func readFirstLine(fd: Int32) -> Double? {
        var firstLine: Double?
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return firstLine }
            if firstLine == nil && buffer.prefix(count).contains(0x0A) { firstLine = PythonBenchmark.monotonicNanoseconds() }
        }
    }
}
