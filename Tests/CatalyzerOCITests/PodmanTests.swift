import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// Debian's podman with `--runtime` pointing at catalyzer-runtime, as root with its own storage
/// under a temporary directory, on an image imported from the Python function rootfs.
@Suite("OCI runtime under podman", .serialized)
struct PodmanTests {
    final class Podman {
        let directory: TemporaryDirectory
        let image = "localhost/catalyzer-test-python:latest"

        init() throws {
            try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("root and /dev/kvm")))
            try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/podman"),
                         Comment(rawValue: TestEnvironment.requirementMessage("Debian's podman (Scripts/bootstrap.sh installs it)")))
            directory = try TemporaryDirectory("podman")
            let rootfs = try PythonRootfs.path()
            let tarball = directory.file("rootfs.tar")
            let packed = try Command.spawned(120, "/bin/tar", ["-C", rootfs, "-cf", tarball, "."])
            try #require(packed.status == 0, "\(packed)")
            let imported = try podman(["import", tarball, image], timeout: 300)
            try #require(imported.status == 0, "\(imported)")
        }

        /// podman with this test's storage, cgroupfs, file events and the given runtime.
        func podman(_ arguments: [String], runtime: String? = nil, timeout: Int = 120) throws -> CommandResult {
            try Command.spawned(Double(timeout), "/usr/bin/podman", globalArguments(runtime: runtime) + arguments)
        }

        /// `podman run -d ARGUMENTS` under `runtime`; returns the container id once its log shows
        /// `marker` (nil if it never does within 10 s).
        func runDetached(_ arguments: [String], runtime: String, until marker: String) throws -> (id: String, ready: Bool) {
            let started = try podman(["run", "-d"] + arguments, runtime: runtime)
            try #require(started.status == 0, "\(started)")
            let id = started.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            for _ in 0..<100 {
                if try podman(["logs", id]).stdout.contains(marker) { return (id, true) }
                usleep(100_000)
            }
            return (id, false)
        }

        /// The flags before podman's command: this test's storage, cgroupfs, file events, the runtime.
        func globalArguments(runtime: String?) -> [String] {
            var global = ["--root", directory.file("storage"), "--runroot", directory.file("run"), "--cgroup-manager", "cgroupfs",
                          "--events-backend", "file", "--tmpdir", directory.file("tmp")]
            if let runtime { global += ["--runtime", runtime] }
            return global
        }

        func close() {
            _ = try? podman(["rm", "--all", "--force"], timeout: 60)
            _ = try? Command.spawned(60, "/bin/sh", ["-c", "umount -R '\(directory.file("storage"))'/overlay 2>/dev/null; umount -R '\(directory.file("storage"))' 2>/dev/null; true"])
            directory.remove()
        }
    }

    static let limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "none"]

    @Test("podman run, with --read-only and without (a writable root), and --user: python3's output and exit status as under runc")
    func runMatchesRunc() throws {
        let podman = try Podman()
        defer { podman.close() }
        let script = "import sys, os; print('hello', os.environ['container'], sys.argv[1:]); sys.stdout.flush(); sys.exit(3)"
        let arguments = ["run", "--rm", "--read-only"] + Self.limits + [podman.image, "/usr/bin/python3", "-c", script, "a b", "c"]
        let ours = try podman.podman(arguments, runtime: Command.binary("catalyzer-runtime"))
        let runc = try podman.podman(arguments, runtime: "/usr/sbin/runc")
        #expect(ours.status == 3 && ours.stdout == "hello podman ['a b', 'c']\n", "\(ours)")
        #expect(ours.status == runc.status && ours.stdout == runc.stdout, "catalyzer \(ours) runc \(runc)")

        // Without --read-only the root is writable (in memory, in our sandbox): the same answers as runc's.
        let writer = """
            import os
            open('/opt/written', 'w').write('w')
            os.unlink('/usr/lib/python3.11/this.py')
            os.makedirs('/srv/new/dir')
            print(sorted(os.listdir('/opt')), os.path.exists('/usr/lib/python3.11/this.py'), os.listdir('/srv/new'))
            """
        let writableArguments = ["run", "--rm"] + Self.limits + [podman.image, "/usr/bin/python3", "-c", writer]
        let writable = try podman.podman(writableArguments, runtime: Command.binary("catalyzer-runtime"))
        let writableRunc = try podman.podman(writableArguments, runtime: "/usr/sbin/runc")
        #expect(writable.status == 0 && writable.stdout.contains("'written'") && writable.stdout == writableRunc.stdout,
                "catalyzer \(writable) runc \(writableRunc)")

        // --user: the same ids as under runc.
        let userArguments = ["run", "--rm", "--read-only", "--user", "1000:1001"] + Self.limits
            + [podman.image, "/usr/bin/python3", "-c", "import os; print(os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups()))"]
        let user = try podman.podman(userArguments, runtime: Command.binary("catalyzer-runtime"))
        let userRunc = try podman.podman(userArguments, runtime: "/usr/sbin/runc")
        #expect(user.status == 0 && user.stdout.hasPrefix("1000 1000 1001 ") && user.stdout == userRunc.stdout, "catalyzer \(user) runc \(userRunc)")
    }

    @Test("podman exec into a running container: its output and exit status, and it sees what the container's process wrote in its writable root")
    func execIntoRunning() throws {
        let podman = try Podman()
        defer { podman.close() }
        let runtime = Command.binary("catalyzer-runtime")
        let script = "import time\nopen('/etc/state', 'w').write('kept')\nprint('serving', flush=True)\nwhile True: time.sleep(1)"
        let (id, serving) = try podman.runDetached(Self.limits + [podman.image, "/usr/bin/python3", "-c", script], runtime: runtime, until: "serving")
        #expect(serving)
        let exec = try podman.podman(["exec", "--env", "WHO=exec", id, "/usr/bin/python3", "-c",
                                      "import os, sys; print(open('/etc/state').read(), os.environ['WHO'], os.getpid() > 1); sys.exit(3)"],
                                     runtime: runtime)
        #expect(exec.status == 3 && exec.stdout == "kept exec True\n", "\(exec)")
        let second = try podman.podman(["exec", id, "/usr/bin/python3", "-c", "print('again')"], runtime: runtime)
        #expect(second.status == 0 && second.stdout == "again\n", "\(second)")
        let removed = try podman.podman(["rm", "--force", "-t", "0", id], runtime: runtime)
        #expect(removed.status == 0, "\(removed)")
    }

    /// Runs a command on a new host pty, as a user at a terminal would: writes `line` once the
    /// output shows `ready`, and prints everything the terminal showed (Python's repr of it).
    static let terminalDriver = """
        import os, pty, sys
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(sys.argv[2], sys.argv[2:])
        shown, sent = b"", False
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
            if not sent and b"ready" in shown:
                os.write(fd, sys.argv[1].encode() + b"\\n")
                sent = True
        _, status = os.waitpid(pid, 0)
        print(repr(shown))
        sys.exit(os.waitstatus_to_exitcode(status))
        """

    @Test("podman run -t and -it: the guest's stdio is a terminal (isatty, its size), and a line typed at it is echoed and read, as under runc")
    func terminal() throws {
        let podman = try Podman()
        defer { podman.close() }
        let query = ["run", "--rm", "-t"] + Self.limits + [podman.image, "/usr/bin/python3", "-c",
                                                           "import os, sys; print(os.isatty(0), os.isatty(1), os.get_terminal_size(), sys.stdin.isatty())"]
        let ours = try podman.podman(query, runtime: Command.binary("catalyzer-runtime"))
        let runc = try podman.podman(query, runtime: "/usr/sbin/runc")
        #expect(ours.status == 0 && ours.stdout.hasPrefix("True True os.terminal_size(") && ours.stdout.hasSuffix("True\r\n"), "\(ours)")
        #expect(ours.stdout == runc.stdout, "catalyzer \(ours) runc \(runc)")

        func typed(_ runtime: String) throws -> CommandResult {
            let arguments = podman.globalArguments(runtime: runtime) + ["run", "--rm", "-i", "-t"] + Self.limits
                + [podman.image, "/usr/bin/python3", "-c", "print('ready', flush=True); print('got', input().upper())"]
            return try Command.spawned(120, "/usr/bin/python3", ["-c", Self.terminalDriver, "typed line", "/usr/bin/podman"] + arguments)
        }
        let interactive = try typed(Command.binary("catalyzer-runtime"))
        let interactiveRunc = try typed("/usr/sbin/runc")
        #expect(interactive.status == 0 && interactive.stdout.contains("typed line\\r\\ngot TYPED LINE\\r\\n"), "\(interactive)")
        #expect(interactive.stdout == interactiveRunc.stdout, "catalyzer \(interactive) runc \(interactiveRunc)")
    }

    @Test("podman container checkpoint, then podman container restore: the restored process continues where it was, with what it wrote in its writable root and /tmp")
    func checkpointAndRestore() throws {
        let podman = try Podman()
        defer { podman.close() }
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/sbin/criu"),
                     Comment(rawValue: TestEnvironment.requirementMessage("Debian's criu (podman checks for it before any checkpoint; Scripts/bootstrap.sh installs it)")))
        let runtime = Command.binary("catalyzer-runtime")
        let script = """
            import time
            open('/etc/mark', 'w').write('root')
            open('/tmp/mark', 'w').write('tmp')
            n = 0
            while True:
                n += 1
                print(n, open('/etc/mark').read(), open('/tmp/mark').read(), flush=True)
                time.sleep(0.05)
            """
        let started = try podman.podman(["run", "-d"] + Self.limits + [podman.image, "/usr/bin/python3", "-c", script], runtime: runtime)
        try #require(started.status == 0, "\(started)")
        let id = started.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        func counts() throws -> [Int] {
            try podman.podman(["logs", id]).stdout.split(separator: "\n").compactMap { line in
                line.hasSuffix(" root tmp") ? Int(line.split(separator: " ")[0]) : nil
            }
        }
        var before: [Int] = []
        for _ in 0..<100 where before.count < 5 {
            before = try counts()
            if before.count < 5 { usleep(100_000) }
        }
        try #require(before.count >= 5, "the container did not count: \(before)")

        let checkpointed = try podman.podman(["container", "checkpoint", id], runtime: runtime)
        try #require(checkpointed.status == 0, "\(checkpointed)")
        let stopped = try podman.podman(["inspect", id, "--format", "{{.State.Status}}"])
        #expect(stopped.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "exited", "\(stopped)")
        let last = try counts().last ?? 0

        let restored = try podman.podman(["container", "restore", id], runtime: runtime)
        try #require(restored.status == 0, "\(restored)")
        var after: [Int] = []
        for _ in 0..<100 where (after.last ?? 0) < last + 5 {
            after = try counts()
            if (after.last ?? 0) < last + 5 { usleep(100_000) }
        }
        // One count, never started again: the numbers go on from the last one before the checkpoint.
        #expect(after.count > before.count && after == Array(1...(after.last ?? 0)), "before \(before), at the checkpoint \(last), after \(after)")
        let running = try podman.podman(["inspect", id, "--format", "{{.State.Status}}"])
        #expect(running.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "running", "\(running)")
        let removed = try podman.podman(["rm", "--force", "-t", "0", id], runtime: runtime)
        #expect(removed.status == 0, "\(removed)")
        let mounts = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        // Temporary paths here have a doubled slash that mountinfo does not: match the unique last component.
        #expect(!mounts.contains(URL(fileURLWithPath: podman.directory.path).lastPathComponent), "a catalyzerfs mount of the restored image is left: \(mounts)")
    }

    @Test("podman run -d, then podman stop: SIGTERM reaches the guest's handler, the exit status is the handler's; podman rm removes it")
    func detachedStopAndRemove() throws {
        let podman = try Podman()
        defer { podman.close() }
        let runtime = Command.binary("catalyzer-runtime")
        let script = """
            import signal, sys, time
            def on_term(number, frame):
                print("stopping on", number, flush=True); sys.exit(4)
            signal.signal(signal.SIGTERM, on_term)
            print("serving", flush=True)
            while True: time.sleep(1)
            """
        let (id, serving) = try podman.runDetached(["--read-only"] + Self.limits + [podman.image, "/usr/bin/python3", "-c", script],
                                                   runtime: runtime, until: "serving")
        #expect(serving)
        let running = try podman.podman(["inspect", id, "--format", "{{.State.Status}}"])
        #expect(running.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "running", "\(running)")
        let stopped = try podman.podman(["stop", "-t", "10", id], runtime: runtime)
        #expect(stopped.status == 0, "\(stopped)")
        let logs = try podman.podman(["logs", id])
        #expect(logs.stdout == "serving\nstopping on 15\n", "\(logs)")
        let status = try podman.podman(["inspect", id, "--format", "{{.State.ExitCode}} {{.State.Status}}"])
        #expect(status.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "4 exited", "\(status)")

        // A guest that ignores SIGTERM: podman stop escalates to SIGKILL, which ends the monitor.
        let stubborn = try podman.podman(["run", "-d", "--read-only"] + Self.limits
                                         + [podman.image, "/usr/bin/python3", "-c", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(300)"],
                                         runtime: runtime)
        try #require(stubborn.status == 0, "\(stubborn)")
        let stubbornID = stubborn.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let killed = try podman.podman(["stop", "-t", "1", stubbornID], runtime: runtime)
        #expect(killed.status == 0, "\(killed)")
        let killedStatus = try podman.podman(["inspect", stubbornID, "--format", "{{.State.ExitCode}}"])
        #expect(killedStatus.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "137", "\(killedStatus)")

        let removed = try podman.podman(["rm", id, stubbornID], runtime: runtime)
        #expect(removed.status == 0, "\(removed)")
        let listed = try podman.podman(["ps", "--all", "--quiet"])
        #expect(listed.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(listed)")
    }
}
