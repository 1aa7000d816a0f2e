import CatalyzerKernel
import Foundation
import Glibc
import Synchronization

/// TCP round trips measured by one static C program, run in the sandbox and on the host in the
/// same run (as `TaskBenchmark` does for tasks). Each round trip is a one-byte write and a
/// one-byte read on a connected socket with TCP_NODELAY, timed with clock_gettime (the vDSO in
/// the sandbox); the program prints `NAME NANOSECONDS` lines.
///
/// - `tcp round trip, loopback`: the program listens on 127.0.0.1:0 and forks an echo partner
///   that accepts and echoes. In the sandbox this is the guest's own loopback, served by the
///   monitor (`SandboxSocket`, `InetPortTable`); on the host, the host kernel's loopback.
/// - `tcp round trip, host echo server`: the program connects to an echo server this benchmark
///   runs on the host's 127.0.0.1 (a thread of this process). The sandbox reaches it through a
///   monitor-held host socket (`HostSocket`), allowed by a `--net-allow 127.0.0.1:PORT` policy;
///   on the host the same program connects to it directly.
public enum NetworkBenchmark {
    public struct Row: Sendable {
        public let name: String
        /// Nanoseconds per round trip, one sample per iteration.
        public let sandbox: [Double]
        public let host: [Double]
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// The rows in the order `run` returns them: the program's key and the row's name.
    static let measurements = [("loopback", "tcp round trip, loopback"), ("echo", "tcp round trip, host echo server")]

    static let source = """
        #define _GNU_SOURCE
        #include <netinet/in.h>
        #include <netinet/tcp.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <sys/socket.h>
        #include <sys/wait.h>
        #include <time.h>
        #include <unistd.h>
        static long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000L + t.tv_nsec; }
        static int no_delay(int fd) { int one = 1; return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); }
        static struct sockaddr_in loopback(int port) {
            struct sockaddr_in address = {0};
            address.sin_family = AF_INET;
            address.sin_port = htons(port);
            address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return address;
        }
        static int connected(int port) {
            struct sockaddr_in address = loopback(port);
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) || no_delay(fd)) return -1;
            return fd;
        }
        static int round_trips(int fd, int n, const char *name) {
            char byte = 'x';
            for (int i = 0; i < n; i++) {
                long start = now();
                if (write(fd, &byte, 1) != 1 || read(fd, &byte, 1) != 1) return -1;
                printf("%s %ld\\n", name, now() - start);
            }
            return 0;
        }
        int main(int argc, char **argv) {
            int n = argc > 1 ? atoi(argv[1]) : 1000, port = argc > 2 ? atoi(argv[2]) : 0;
            struct sockaddr_in address = loopback(0);
            socklen_t length = sizeof address;
            int listener = socket(AF_INET, SOCK_STREAM, 0);
            if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 1)
                || getsockname(listener, (struct sockaddr *)&address, &length)) return 2;
            pid_t child = fork();
            if (child < 0) return 3;
            if (child == 0) {
                int fd = accept(listener, 0, 0);
                char byte;
                if (fd < 0 || no_delay(fd)) _exit(4);
                for (int i = 0; i < n; i++) { if (read(fd, &byte, 1) != 1 || write(fd, &byte, 1) != 1) _exit(5); }
                _exit(0);
            }
            int fd = connected(ntohs(address.sin_port));
            close(listener);
            if (fd < 0 || round_trips(fd, n, "loopback")) return 6;
            close(fd);
            int status;
            if (waitpid(child, &status, 0) != child || status != 0) return 7;
            if (port > 0) {
                fd = connected(port);
                if (fd < 0 || round_trips(fd, n, "echo")) return 8;
                close(fd);
            }
            return 0;
        }
        """

    /// Compiles the program into `rootfs`/netbench (gcc -static), starts the host echo server,
    /// runs the program in a sandbox allowed to reach that server and then on the host, and
    /// returns one row per measurement, `iterations` samples on each side.
    public static func run(rootfs: String, iterations: Int = 1000) throws -> [Row] {
        let sourcePath = rootfs + "/netbench.c", binary = rootfs + "/netbench"
        try Data(source.utf8).write(to: URL(fileURLWithPath: sourcePath))
        let build = try runOnHost("/usr/bin/gcc", ["-static", "-O2", "-o", binary, sourcePath], includeStandardError: true)
        guard build.status == 0 else {
            throw Failure("gcc could not build the network benchmark (is gcc installed?): \(build.output)")
        }
        let server = try EchoServer()
        defer { server.stop() }
        let arguments = [String(iterations), String(server.port)]

        var configuration = SandboxConfiguration(rootDirectory: rootfs, memorySize: 256 << 20, programPath: "/netbench",
                                                 arguments: ["netbench"] + arguments)
        configuration.network = try NetworkPolicy(allowing: ["127.0.0.1:\(server.port)"])
        let (exit, sandboxOutput) = try runInSandbox(configuration)
        guard exit == .exited(status: 0) else { throw Failure("the network benchmark failed in the sandbox: \(exit)") }

        let host = try runOnHost(binary, arguments, includeStandardError: false)
        guard host.status == 0 else { throw Failure("the network benchmark failed on the host (status \(host.status))") }
        let sandboxSamples = ProgramOutput.samples(sandboxOutput), hostSamples = ProgramOutput.samples(host.output)
        return measurements.map { key, name in Row(name: name, sandbox: sandboxSamples[key] ?? [], host: hostSamples[key] ?? []) }
    }

    /// Runs `configuration` in a sandbox whose stdout is a pipe read on another thread (stdin and
    /// stderr are /dev/null): how the program ended and what it wrote.
    private static func runInSandbox(_ configuration: SandboxConfiguration) throws -> (SandboxExit, String) {
        var pipes: [Int32] = [0, 0]
        guard pipeClosedOnExec(&pipes) else { throw Failure("pipe: \(String(cString: strerror(errno)))") }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        var configuration = configuration
        configuration.standardStreams = [devNull, pipes[1], devNull]
        let reader = OutputReader(fd: pipes[0])
        let exit = Result { try Sandbox(configuration: configuration).run(timeoutSeconds: 120) }
        close(pipes[1])
        close(devNull)
        let output = reader.finish()
        close(pipes[0])
        return (try exit.get(), output)
    }

    /// Runs a host program to its end: its exit status (128+signal if killed) and its stdout.
    private static func runOnHost(_ path: String, _ arguments: [String],
                                  includeStandardError: Bool) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let output = Pipe()
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = output
        process.standardError = includeStandardError ? output : FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let status = process.terminationReason == .exit ? process.terminationStatus : 128 + process.terminationStatus
        return (status, String(decoding: data, as: UTF8.self))
    }
}

/// pipe(2) with both ends close-on-exec (Glibc's module does not export pipe2), so host programs
/// started meanwhile do not inherit them.
private func pipeClosedOnExec(_ fds: inout [Int32]) -> Bool {
    guard pipe(&fds) == 0 else { return false }
    _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
    _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
    return true
}


/// A TCP echo server on the host's 127.0.0.1 (an ephemeral port), on a thread of its own: it
/// takes one connection at a time and writes every byte it reads back, until the peer closes.
/// `stop()` ends it, whatever it is doing, and waits for its thread.
final class EchoServer: Sendable {
    let port: UInt16
    private let listener: Int32
    /// Written by `stop()` to wake the thread from its wait for a connection.
    private let wakeRead: Int32, wakeWrite: Int32
    /// The connection being served (-1 for none): `stop()` shuts it down to end a blocked read.
    private let connection = Mutex<Int32>(-1)
    private let stopped = Atomic<Bool>(false)
    private let ended = DispatchSemaphore(value: 0)

    init() throws {
        func failure(_ call: String) -> NetworkBenchmark.Failure {
            NetworkBenchmark.Failure("echo server: \(call): \(String(cString: strerror(errno)))")
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw failure("socket") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = in_addr_t(INADDR_LOOPBACK).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let listening = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 4) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        var wake: [Int32] = [0, 0]
        guard listening, pipeClosedOnExec(&wake) else {
            let error = failure(listening ? "pipe" : "listen on 127.0.0.1")
            close(fd)
            throw error
        }
        listener = fd
        port = UInt16(bigEndian: address.sin_port)
        wakeRead = wake[0]
        wakeWrite = wake[1]
        Thread.detachNewThread { [self] in
            serve()
            ended.signal()
        }
    }

    /// Ends the server: no new connection is taken and the current one is shut down. Waits for
    /// the thread, then closes the sockets. Call once.
    func stop() {
        stopped.store(true, ordering: .sequentiallyConsistent)
        var byte: UInt8 = 0
        _ = write(wakeWrite, &byte, 1)
        connection.withLock { if $0 >= 0 { _ = shutdown($0, Int32(SHUT_RDWR)) } }
        ended.wait()
        close(listener)
        close(wakeRead)
        close(wakeWrite)
    }

    private func serve() {
        while let fd = accepted() {
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            // Published under the lock, and checked against `stopped` there, so `stop()` either
            // sees it (and shuts it down) or this thread sees the stop.
            let serving = connection.withLock { current in
                guard !stopped.load(ordering: .sequentiallyConsistent) else { return false }
                current = fd
                return true
            }
            if serving { echo(fd) }
            connection.withLock { current in
                close(fd)
                current = -1
            }
        }
    }

    /// The next connection, or nil once the server is stopped.
    private func accepted() -> Int32? {
        var entries = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        while !stopped.load(ordering: .sequentiallyConsistent) {
            entries[0].revents = 0
            entries[1].revents = 0
            let ready = poll(&entries, 2, -1)
            if ready < 0 && errno != EINTR { return nil }
            if entries[1].revents != 0 { return nil }
            guard entries[0].revents != 0 else { continue }
            let fd = accept(listener, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                return fd
            }
            guard [EINTR, EAGAIN, ECONNABORTED].contains(errno) else { return nil }
        }
        return nil
    }

    /// Echoes until the peer closes (or `stop()` shuts the connection down).
    private func echo(_ fd: Int32) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            var sent = 0
            while sent < count {
                let written = buffer.withUnsafeBytes { write(fd, $0.baseAddress! + sent, count - sent) }
                if written < 0 && errno == EINTR { continue }
                guard written > 0 else { return }
                sent += written
            }
        }
    }
}
