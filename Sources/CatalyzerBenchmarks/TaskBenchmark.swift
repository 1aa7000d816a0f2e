import CatalyzerKernel
import Glibc

/// Task-switching costs measured by one static C program, run in the sandbox and on the host in
/// the same run: thread create + join, a futex ping-pong between two threads (one round trip is
/// two waits and two wakes), and a pipe ping-pong between two processes (a byte each way). The
/// program times each iteration with clock_gettime (the vDSO in the sandbox) and prints
/// `NAME NANOSECONDS` lines.
public enum TaskBenchmark {
    public struct Row: Sendable {
        public let name: String
        public let sandbox: [Double]
        public let host: [Double]
    }

    static let source = """
        #define _GNU_SOURCE
        #include <linux/futex.h>
        #include <pthread.h>
        #include <stdatomic.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <sys/syscall.h>
        #include <sys/wait.h>
        #include <time.h>
        #include <unistd.h>
        static long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000L + t.tv_nsec; }
        static void *nothing(void *arg) { return arg; }
        static _Atomic int turn;
        static void wait_for(int value) {
            while (atomic_load(&turn) != value) syscall(SYS_futex, &turn, FUTEX_WAIT_PRIVATE, !value, 0, 0, 0);
        }
        static void hand_over(int value) { atomic_store(&turn, value); syscall(SYS_futex, &turn, FUTEX_WAKE_PRIVATE, 1, 0, 0, 0); }
        static int rounds;
        static void *partner(void *arg) {
            for (int i = 0; i < rounds; i++) { wait_for(1); hand_over(0); }
            return arg;
        }
        int main(int argc, char **argv) {
            int n = argc > 1 ? atoi(argv[1]) : 200;
            for (int i = 0; i < n; i++) {
                pthread_t thread; long start = now();
                if (pthread_create(&thread, 0, nothing, 0)) return 2;
                pthread_join(thread, 0);
                printf("thread %ld\\n", now() - start);
            }
            rounds = n * 5;
            pthread_t other;
            if (pthread_create(&other, 0, partner, 0)) return 3;
            for (int i = 0; i < rounds; i++) {
                long start = now();
                hand_over(1); wait_for(0);
                printf("futex %ld\\n", now() - start);
            }
            pthread_join(other, 0);
            int there[2], back[2];
            if (pipe(there) || pipe(back)) return 4;
            pid_t child = fork();
            char byte = 0;
            if (child == 0) {
                for (int i = 0; i < n * 5; i++) { if (read(there[0], &byte, 1) != 1 || write(back[1], &byte, 1) != 1) _exit(5); }
                _exit(0);
            }
            for (int i = 0; i < n * 5; i++) {
                long start = now();
                if (write(there[1], &byte, 1) != 1 || read(back[0], &byte, 1) != 1) return 6;
                printf("pipe %ld\\n", now() - start);
            }
            int status; waitpid(child, &status, 0);
            return status == 0 ? 0 : 7;
        }
        """

    /// Compiles the program into `rootfs`/taskbench (gcc -static), runs it in a sandbox and on the
    /// host, and returns one row per measurement.
    public static func run(rootfs: String, iterations: Int = 200) throws -> [Row] {
        let sourcePath = rootfs + "/taskbench.c", binary = rootfs + "/taskbench"
        guard let file = fopen(sourcePath, "w") else { throw BenchmarkError("cannot write \(sourcePath): \(String(cString: strerror(errno)))") }
        fputs(source, file)
        fclose(file)
        guard runHost(["/usr/bin/gcc", "-static", "-O2", "-pthread", "-o", binary, sourcePath]).status == 0 else {
            throw BenchmarkError("gcc could not build the task benchmark (is gcc installed?)")
        }
        var pipes: [Int32] = [0, 0]
        guard pipe(&pipes) == 0 else { throw BenchmarkError("cannot make a pipe: \(String(cString: strerror(errno)))") }
        let devNull = open("/dev/null", O_RDWR)
        defer { close(devNull) }
        var configuration = SandboxConfiguration(rootDirectory: rootfs, memorySize: 256 << 20, programPath: "/taskbench",
                                                 arguments: ["taskbench", String(iterations)])
        configuration.standardStreams = [devNull, pipes[1], devNull]
        let collector = OutputReader(fd: pipes[0])
        let sandbox = try Sandbox(configuration: configuration)
        let exit = try sandbox.run(timeoutSeconds: 120)
        close(pipes[1])
        let sandboxOutput = collector.finish()
        close(pipes[0])
        guard exit == .exited(status: 0) else { throw BenchmarkError("the task benchmark failed in the sandbox: \(exit)") }
        let host = runHost([binary, String(iterations)])
        guard host.status == 0 else { throw BenchmarkError("the task benchmark failed on the host (status \(host.status))") }
        let sandboxSamples = ProgramOutput.samples(sandboxOutput), hostSamples = ProgramOutput.samples(host.output)
        return [("thread", "thread create + join"), ("futex", "futex ping-pong, 2 threads"), ("pipe", "pipe ping-pong, 2 processes")]
            .map { key, name in Row(name: name, sandbox: sandboxSamples[key] ?? [], host: hostSamples[key] ?? []) }
    }

    /// Runs a host command, returning its status and stdout.
    private static func runHost(_ arguments: [String]) -> (status: Int32, output: String) {
        var pipes: [Int32] = [0, 0]
        guard pipe(&pipes) == 0 else { return (-1, "") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipes[1], 1)
        posix_spawn_file_actions_addclose(&actions, pipes[0])
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, arguments[0], &actions, nil, argv, environ) == 0 else {
            close(pipes[0]); close(pipes[1])
            return (-1, "")
        }
        close(pipes[1])
        let collector = OutputReader(fd: pipes[0])
        let output = collector.finish()
        close(pipes[0])
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return (status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F), output)
    }
}

public struct BenchmarkError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

