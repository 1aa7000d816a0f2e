import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// `catalyzer-runtime` driven as an engine drives an OCI runtime: bundles written here (the
/// Python function rootfs as the root), create / state / start / kill / delete through the CLI,
/// and config.json fields the sandbox cannot honour refused at create, naming the field.
@Suite("OCI runtime: the runc command line", .serialized)
struct RuntimeTests {
    /// A bundle directory whose config.json is `spec` with the root at `rootfs`.
    static func bundle(_ directory: TemporaryDirectory, _ name: String, rootfs: String, args: [String], writableRoot: Bool = false,
                       edit: (inout [String: Any]) -> Void = { _ in }) throws -> String {
        let bundle = directory.file(name)
        try FileManager.default.createDirectory(atPath: bundle, withIntermediateDirectories: true)
        var spec: [String: Any] = [
            "ociVersion": "1.0.2",
            "process": ["terminal": false, "user": ["uid": 0, "gid": 0], "args": args, "cwd": "/",
                        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"]] as [String: Any],
            "root": ["path": rootfs, "readonly": !writableRoot],
            "hostname": "box-1",
            "mounts": [
                ["destination": "/proc", "type": "proc", "source": "proc"],
                ["destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["rw", "nosuid"]],
                ["destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]],
            ],
            "annotations": ["org.example.owner": "tests"],
            "linux": ["namespaces": [["type": "pid"], ["type": "network"], ["type": "ipc"], ["type": "uts"], ["type": "mount"]],
                      "resources": ["memory": ["limit": 192 << 20]]] as [String: Any],
        ]
        edit(&spec)
        let data = try JSONSerialization.data(withJSONObject: spec, options: [.prettyPrinted])
        try data.write(to: URL(fileURLWithPath: bundle + "/config.json"))
        return bundle
    }

    /// The runtime with `--root` under `state`, stdout and stderr to files (a container process
    /// keeps create's stdio, so a pipe would not end until it does).
    static func runtime(_ state: String, _ arguments: [String], output: String) throws -> (status: Int32, output: String) {
        let quoted = ([Command.binary("catalyzer-runtime"), "--root", state] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        let result = try Command.spawned(60, "/bin/sh", ["-c", quoted.joined(separator: " ") + " >>'\(output)' 2>&1"])
        return (result.status, (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
    }

    static func state(_ stateRoot: String, _ id: String) throws -> [String: Any] {
        let result = try Command.spawned(30, Command.binary("catalyzer-runtime"), ["--root", stateRoot, "state", id])
        return (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]) ?? ["error": result.stderr]
    }

    static func waitFor(_ condition: () throws -> Bool, seconds: Double = 20) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return true }
            usleep(20_000)
        }
        return false
    }

    @Test("create, state, start, kill and delete: the container runs in a sandbox with the bundle's env, hostname, memory and tmpfs, its handler gets SIGTERM, and its state follows")
    func lifecycle() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("root and /dev/kvm")))
        let directory = try TemporaryDirectory("oci-lifecycle")
        defer { directory.remove() }
        let script = """
            import os, signal, sys, time
            def on_term(number, frame):
                print("got", number, flush=True); sys.exit(5)
            signal.signal(signal.SIGTERM, on_term)
            open("/run/marker", "w").write("written")
            memory = [l for l in open("/proc/meminfo") if l.startswith("MemTotal")][0].split()[1]
            print(os.environ["GREETING"], os.uname().nodename, open("/run/marker").read(), int(memory) // 1024, flush=True)
            try:
                open("/etc/passwd", "a")
            except OSError as error:
                print("root", error.strerror, flush=True)
            while True: time.sleep(1)
            """
        let bundle = try Self.bundle(directory, "bundle", rootfs: try PythonRootfs.path(), args: ["python3", "-c", script])
        let stateRoot = directory.file("state"), output = directory.file("output")
        defer { _ = try? Self.runtime(stateRoot, ["delete", "--force", "box"], output: directory.file("cleanup")) }
        let created = try Self.runtime(stateRoot, ["create", "--bundle", bundle, "--pid-file", directory.file("pid"), "box"], output: output)
        try #require(created.status == 0, "\(created.output)")
        let pid = Int32((try String(contentsOfFile: directory.file("pid"), encoding: .utf8)).trimmingCharacters(in: .whitespaces)) ?? 0
        var state = try Self.state(stateRoot, "box")
        #expect(state["status"] as? String == "created" && state["pid"] as? Int == Int(pid) && pid > 0, "\(state)")
        #expect((state["annotations"] as? [String: String])?["org.example.owner"] == "tests" && state["bundle"] as? String == URL(fileURLWithPath: bundle).standardizedFileURL.path, "\(state)")

        let started = try Self.runtime(stateRoot, ["start", "box"], output: output)
        try #require(started.status == 0, "\(started.output)")
        let sawRoot = try Self.waitFor { (try String(contentsOfFile: output, encoding: .utf8)).contains("root Read-only file system") }
        #expect(sawRoot, "\((try? String(contentsOfFile: output, encoding: .utf8)) ?? "")")
        state = try Self.state(stateRoot, "box")
        #expect(state["status"] as? String == "running", "\(state)")
        #expect(try String(contentsOfFile: output, encoding: .utf8).contains("hello box-1 written 192\n"))

        let killed = try Self.runtime(stateRoot, ["kill", "box", "TERM"], output: output)
        #expect(killed.status == 0, "\(killed.output)")
        let stopped = try Self.waitFor { try Self.state(stateRoot, "box")["status"] as? String == "stopped" }
        #expect(stopped, "\((try? Self.state(stateRoot, "box")) ?? [:])")
        #expect(try String(contentsOfFile: output, encoding: .utf8).contains("got 15\n"))
        let again = try Self.runtime(stateRoot, ["kill", "box", "KILL"], output: directory.file("kill-again"))
        #expect(again.status != 0 && again.output.contains("is stopped"), "\(again.output)")
        let deleted = try Self.runtime(stateRoot, ["delete", "box"], output: output)
        #expect(deleted.status == 0 && !FileManager.default.fileExists(atPath: stateRoot + "/box"), "\(deleted.output)")
        let gone = try Self.runtime(stateRoot, ["state", "box"], output: directory.file("gone"))
        #expect(gone.status != 0 && gone.output.contains("does not exist"), "\(gone.output)")
    }

    @Test("run waits for the container and exits with its status; delete without --force refuses a running container")
    func runAndDelete() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("root and /dev/kvm")))
        let directory = try TemporaryDirectory("oci-run")
        defer { directory.remove() }
        let rootfs = try PythonRootfs.path()
        let exiting = try Self.bundle(directory, "exiting", rootfs: rootfs, args: ["/usr/bin/python3", "-c", "print('bye'); raise SystemExit(9)"])
        let ran = try Self.runtime(directory.file("state"), ["run", "--bundle", exiting, "once"], output: directory.file("run"))
        #expect(ran.status == 9 && ran.output.contains("bye"), "\(ran.output)")
        #expect(!FileManager.default.fileExists(atPath: directory.file("state") + "/once"))

        let sleeping = try Self.bundle(directory, "sleeping", rootfs: rootfs, args: ["/usr/bin/python3", "-c", "import time; time.sleep(60)"])
        defer { _ = try? Self.runtime(directory.file("state"), ["delete", "--force", "sleeper"], output: directory.file("cleanup")) }
        let detached = try Self.runtime(directory.file("state"), ["run", "--detach", "--bundle", sleeping, "sleeper"], output: directory.file("detached"))
        try #require(detached.status == 0, "\(detached.output)")
        let refused = try Self.runtime(directory.file("state"), ["delete", "sleeper"], output: directory.file("refused"))
        #expect(refused.status != 0 && refused.output.contains("is running"), "\(refused.output)")
        let forced = try Self.runtime(directory.file("state"), ["delete", "--force", "sleeper"], output: directory.file("forced"))
        #expect(forced.status == 0, "\(forced.output)")
        let listed = try Self.runtime(directory.file("state"), ["list", "--quiet"], output: directory.file("list"))
        #expect(listed.status == 0 && listed.output.isEmpty, "\(listed.output)")
    }

    @Test("exec runs more processes in the running sandbox: they see what its first process wrote, read and write their own stdio, end with their own status; a first process waiting for nothing in the sandbox is not a deadlock; --detach writes the pid file; a missing program, a terminal without a console socket and a stopped container are refused")
    func exec() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("root and /dev/kvm")))
        let directory = try TemporaryDirectory("oci-exec")
        defer { directory.remove() }
        // The first process then waits on an event nobody in it sets: with exec possible, that is
        // not a deadlock (a process from outside may come), so it waits for one, as under runc.
        let script = "import threading\nopen('/tmp/from-init', 'w').write('written by init')\nprint('up', flush=True)\nthreading.Event().wait()"
        let bundle = try Self.bundle(directory, "bundle", rootfs: try PythonRootfs.path(), args: ["/usr/bin/python3", "-c", script], writableRoot: true)
        let stateRoot = directory.file("state")
        defer { _ = try? Self.runtime(stateRoot, ["delete", "--force", "box"], output: directory.file("cleanup")) }
        let started = try Self.runtime(stateRoot, ["run", "--detach", "--bundle", bundle, "box"], output: directory.file("init"))
        try #require(started.status == 0, "\(started.output)")
        #expect(try Self.waitFor { (try String(contentsOfFile: directory.file("init"), encoding: .utf8)).contains("up") })

        // The container's env (GREETING) with --env added; its own pid; ppid 0 (started from outside).
        let probe = "import os, sys; print(open('/tmp/from-init').read(), os.environ['GREETING'], os.environ['EXTRA'], os.getpid() > 1, os.getppid(), sys.stdin.read().strip()); sys.exit(7)"
        let runtime = Command.binary("catalyzer-runtime")
        let piped = try Command.spawned(60, "/bin/sh", ["-c", "echo from-stdin | '\(runtime)' --root '\(stateRoot)' exec --env EXTRA=x box /usr/bin/python3 -c \"$0\"", probe])
        #expect(piped.status == 7 && piped.stdout == "written by init hello x True 0 from-stdin\n", "\(piped)")

        // --process FILE and --detach: the pid file names the host process standing for it, which
        // ends with the guest process's status.
        let process: [String: Any] = ["args": ["/usr/bin/python3", "-c", "import time; open('/detached', 'w').write('d'); time.sleep(0.5)"],
                                      "cwd": "/", "env": ["PATH=/usr/bin"], "terminal": false]
        try JSONSerialization.data(withJSONObject: process).write(to: URL(fileURLWithPath: directory.file("process.json")))
        let detached = try Self.runtime(stateRoot, ["exec", "--detach", "--pid-file", directory.file("exec.pid"), "--process", directory.file("process.json"), "box"],
                                        output: directory.file("detached"))
        #expect(detached.status == 0, "\(detached.output)")
        let helper = Int32((try? String(contentsOfFile: directory.file("exec.pid"), encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
        #expect(helper > 0 && kill(helper, 0) == 0, "pid file: \(helper)")
        #expect(try Self.waitFor { kill(helper, 0) != 0 }, "the exec'd process's host process did not end")
        let after = try Command.spawned(60, runtime, ["--root", stateRoot, "exec", "box", "/usr/bin/python3", "-c", "print(open('/detached').read())"])
        #expect(after.status == 0 && after.stdout == "d\n", "\(after)")

        let missing = try Self.runtime(stateRoot, ["exec", "box", "/no/such/program"], output: directory.file("missing"))
        #expect(missing.status != 0 && missing.output.contains("/no/such/program") && missing.output.contains("ENOENT"), "\(missing.output)")
        let terminal = try Self.runtime(stateRoot, ["exec", "--tty", "box", "/usr/bin/python3"], output: directory.file("terminal"))
        #expect(terminal.status != 0 && terminal.output.contains("--console-socket"), "\(terminal.output)")
        _ = try Self.runtime(stateRoot, ["kill", "box", "KILL"], output: directory.file("kill"))
        #expect(try Self.waitFor { try Self.state(stateRoot, "box")["status"] as? String == "stopped" })
        let stopped = try Self.runtime(stateRoot, ["exec", "box", "/usr/bin/python3", "-c", "pass"], output: directory.file("stopped"))
        #expect(stopped.status != 0 && stopped.output.contains("is stopped"), "\(stopped.output)")
    }

    @Test("checkpoint --image-path writes a Catalyzer image and stops the container; restore resumes it mid-loop with its root, /tmp and tmpfs mount; --leave-running keeps it; a restored container checkpoints again; a second process, a stopped container and a path without a checkpoint are refused")
    func checkpointRestore() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM && TestEnvironment.hasFUSE,
                     Comment(rawValue: TestEnvironment.requirementMessage("root, /dev/kvm and /dev/fuse")))
        let directory = try TemporaryDirectory("oci-checkpoint")
        defer { directory.remove() }
        let script = """
            import time
            open('/etc/mark', 'w').write('root'); open('/tmp/mark', 'w').write('tmp'); open('/run/mark', 'w').write('run')
            n = 0
            while True:
                n += 1
                print(n, open('/etc/mark').read(), open('/tmp/mark').read(), open('/run/mark').read(), flush=True)
                time.sleep(0.05)
            """
        let bundle = try Self.bundle(directory, "bundle", rootfs: try PythonRootfs.path(), args: ["/usr/bin/python3", "-c", script], writableRoot: true)
        let stateRoot = directory.file("state"), first = directory.file("first"), second = directory.file("second")
        defer {
            _ = try? Self.runtime(stateRoot, ["delete", "--force", "box"], output: directory.file("cleanup"))
            _ = try? Self.runtime(stateRoot, ["delete", "--force", "again"], output: directory.file("cleanup"))
        }
        func counts(_ path: String) -> [Int] {
            ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
                line.hasSuffix(" root tmp run") ? Int(line.split(separator: " ")[0]) : nil
            }
        }
        try #require(try Self.runtime(stateRoot, ["run", "--detach", "--bundle", bundle, "box"], output: first).status == 0)
        #expect(try Self.waitFor { counts(first).count >= 3 }, "\(counts(first))")

        // --leave-running: an image, and the container goes on.
        let kept = try Self.runtime(stateRoot, ["checkpoint", "--leave-running", "--image-path", directory.file("kept"), "box"], output: directory.file("kept.log"))
        #expect(kept.status == 0, "\(kept.output)")
        #expect(try Self.state(stateRoot, "box")["status"] as? String == "running")
        #expect(FileManager.default.fileExists(atPath: directory.file("kept") + "/inventory.img"))

        let checkpoint = directory.file("checkpoint")
        let taken = try Self.runtime(stateRoot, ["checkpoint", "--image-path", checkpoint, "--work-path", directory.path, "box"], output: directory.file("taken.log"))
        try #require(taken.status == 0, "\(taken.output)")
        #expect(try Self.state(stateRoot, "box")["status"] as? String == "stopped")
        let last = counts(first).last ?? 0
        let again = try Self.runtime(stateRoot, ["checkpoint", "--image-path", directory.file("late"), "box"], output: directory.file("late.log"))
        #expect(again.status != 0 && again.output.contains("is stopped"), "\(again.output)")
        _ = try Self.runtime(stateRoot, ["delete", "box"], output: directory.file("delete"))

        let restored = try Self.runtime(stateRoot, ["restore", "--detach", "--image-path", checkpoint, "--bundle", bundle, "again"], output: second)
        try #require(restored.status == 0, "\(restored.output)")
        #expect(try Self.waitFor { counts(second).count >= 3 }, "\((try? String(contentsOfFile: second, encoding: .utf8)) ?? "")")
        #expect(counts(second).first == last + 1, "counted to \(last) before the checkpoint, then \(counts(second).prefix(3)) after the restore")
        #expect(try Self.state(stateRoot, "again")["status"] as? String == "running")

        let empty = try TemporaryDirectory("oci-no-checkpoint")
        defer { empty.remove() }
        let nothing = try Self.runtime(stateRoot, ["restore", "--detach", "--image-path", empty.path, "--bundle", bundle, "none"], output: directory.file("nothing"))
        #expect(nothing.status != 0 && nothing.output.contains("holds no complete Catalyzer checkpoint"), "\(nothing.output)")

        // A restored container checkpointed again (its memory is the image mapped privately, the
        // pages it changed only in the mapping), and restored from that: it counts on.
        let regained = directory.file("regained")
        let twice = try Self.runtime(stateRoot, ["checkpoint", "--leave-running", "--image-path", regained, "again"], output: directory.file("twice.log"))
        #expect(twice.status == 0, "\(twice.output)")
        let third = directory.file("third")
        let reached = counts(second).last ?? 0
        defer { _ = try? Self.runtime(stateRoot, ["delete", "--force", "third"], output: directory.file("cleanup")) }
        let thirdRestore = try Self.runtime(stateRoot, ["restore", "--detach", "--image-path", regained, "--bundle", bundle, "third"], output: third)
        #expect(thirdRestore.status == 0, "\(thirdRestore.output)")
        #expect(try Self.waitFor { counts(third).count >= 2 })
        #expect((counts(third).first ?? 0) > last + 1 && (counts(third).first ?? 0) <= reached + 1,
                "the second image counts on from where the restored container was: \(counts(third).prefix(3)), it had reached \(reached)")
        _ = try Self.runtime(stateRoot, ["delete", "--force", "third"], output: directory.file("delete-third"))

        // Two processes: the checkpoint holds one, and says so; the container keeps running.
        let child = try Command.spawned(60, Command.binary("catalyzer-runtime"),
                                        ["--root", stateRoot, "exec", "--detach", "again", "/usr/bin/python3", "-c", "import time; time.sleep(30)"])
        #expect(child.status == 0, "\(child)")
        let refused = try Self.runtime(stateRoot, ["checkpoint", "--image-path", directory.file("two"), "again"], output: directory.file("two.log"))
        #expect(refused.status != 0 && refused.output.contains("a checkpoint holds one process"), "\(refused.output)")
        #expect(try Self.state(stateRoot, "again")["status"] as? String == "running")
        _ = try Self.runtime(stateRoot, ["delete", "--force", "again"], output: directory.file("delete-again"))
        let mounts = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        // Temporary paths here have a doubled slash that mountinfo does not: match the unique directory name.
        #expect(!mounts.contains(URL(fileURLWithPath: directory.path).lastPathComponent), "the restored image's catalyzerfs mount is left: \(mounts)")
    }

    @Test("process.user: the program runs as its uid, gid and additional gids, and owns what it creates; exec --user runs as another")
    func user() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("root and /dev/kvm")))
        let directory = try TemporaryDirectory("oci-user")
        defer { directory.remove() }
        let script = "import os, time\nopen('/tmp/mine', 'w')\nprint(os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups()), os.stat('/tmp/mine').st_uid, flush=True)\ntime.sleep(30)"
        let bundle = try Self.bundle(directory, "bundle", rootfs: try PythonRootfs.path(), args: ["/usr/bin/python3", "-c", script]) { spec in
            var process = spec["process"] as! [String: Any]
            process["user"] = ["uid": 1000, "gid": 1001, "additionalGids": [27, 100]]
            spec["process"] = process
        }
        let stateRoot = directory.file("state"), output = directory.file("output")
        defer { _ = try? Self.runtime(stateRoot, ["delete", "--force", "box"], output: directory.file("cleanup")) }
        try #require(try Self.runtime(stateRoot, ["run", "--detach", "--bundle", bundle, "box"], output: output).status == 0)
        #expect(try Self.waitFor { (try String(contentsOfFile: output, encoding: .utf8)).contains("\n") })
        #expect(try String(contentsOfFile: output, encoding: .utf8) == "1000 1000 1001 [27, 100] 1000\n")
        let other = try Command.spawned(60, Command.binary("catalyzer-runtime"),
                                        ["--root", stateRoot, "exec", "--user", "2000:2001", "box", "/usr/bin/python3", "-c",
                                         "import os; print(os.getuid(), os.getgid(), os.stat('/tmp/mine').st_uid)"])
        #expect(other.status == 0 && other.stdout == "2000 2001 1000\n", "\(other)")
    }

    @Test("create refuses, naming the field and leaving no state, what a sandbox cannot honour")
    func refusals() throws {
        try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("root and /dev/kvm")))
        let directory = try TemporaryDirectory("oci-refuse")
        defer { directory.remove() }
        let rootfs = try PythonRootfs.path()
        let cases: [(String, String, (inout [String: Any]) -> Void)] = [
            ("terminal", "--console-socket", { spec in
                var process = spec["process"] as! [String: Any]; process["terminal"] = true; spec["process"] = process }),
            ("host-network", "linux.namespaces", { spec in
                spec["linux"] = ["namespaces": [["type": "pid"], ["type": "mount"]]] }),
            ("device", "linux.devices", { spec in
                spec["linux"] = ["namespaces": [["type": "pid"], ["type": "network"], ["type": "mount"]],
                                 "devices": [["path": "/dev/kvm", "type": "c", "major": 10, "minor": 232]]] }),
            ("volume", "mounts[3] (/data)", { spec in
                var mounts = spec["mounts"] as! [[String: Any]]
                mounts.append(["destination": "/data", "type": "bind", "source": "/etc", "options": ["rbind", "ro"]])
                spec["mounts"] = mounts }),
            ("no-args", "process.args", { spec in
                var process = spec["process"] as! [String: Any]; process["args"] = [String](); spec["process"] = process }),
            ("missing-program", "process.args: /usr/bin/no-such-program is not an executable file", { spec in
                var process = spec["process"] as! [String: Any]; process["args"] = ["/usr/bin/no-such-program"]; spec["process"] = process }),
        ]
        for (name, field, edit) in cases {
            let bundle = try Self.bundle(directory, name, rootfs: rootfs, args: ["/usr/bin/python3", "-c", "print(1)"], edit: edit)
            let result = try Self.runtime(directory.file("state"), ["--log", directory.file("log-\(name)"), "--log-format", "json",
                                                                     "create", "--bundle", bundle, name], output: directory.file("out-\(name)"))
            #expect(result.status != 0 && result.output.contains(field), "\(name): \(result.output)")
            #expect(!FileManager.default.fileExists(atPath: directory.file("state") + "/" + name), "\(name) left state behind")
            let log = (try? String(contentsOfFile: directory.file("log-\(name)"), encoding: .utf8)) ?? ""
            let entry = log.split(separator: "\n").last.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(entry?["level"] as? String == "error" && (entry?["msg"] as? String)?.contains(field) == true, "\(name): \(log)")
        }
    }
}
