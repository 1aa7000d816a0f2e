import CatalyzerTestSupport
import Foundation
import Testing

/// Debian's python3.11 (the rootfs of `Scripts/build-rootfs.sh`) in the sandbox, run through
/// `catalyzer run` exactly as a user would, against the fairest host baseline: the same rootfs
/// under chroot(8), with the same environment.
@Suite("python3.11 in the sandbox", .serialized)
struct PythonTests {
    static let environment = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

    /// `catalyzer run --rootfs R OPTIONS -- ARGUMENTS`.
    static func sandbox(_ arguments: [String], options: [String] = [], stdin: Data? = nil,
                        timeout: String = "60s") throws -> CommandResult {
        _ = try requireKVM()
        let root = try PythonRootfs.path()
        return try Command.run(Command.binary("catalyzer"),
                               ["run", "--rootfs", root, "--memory", "512M", "--timeout", timeout] + options + ["--"] + arguments,
                               stdin: stdin)
    }

    /// `chroot R ARGUMENTS` with only the sandbox's environment, in a mount namespace of its own
    /// whose /tmp is a fresh tmpfs, as the sandbox's is: nothing a script writes lands in the
    /// shared rootfs, which other tests pack into layers.
    static func host(_ arguments: [String]) throws -> CommandResult {
        try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (for chroot)")))
        let root = try PythonRootfs.path()
        return try Command.run(HostNamespace.unshare, HostNamespace.arguments(["--mount"], script: "mount -t tmpfs tmpfs \"$0/tmp\" && exec \"$@\"",
                                                                             [root, "/usr/bin/env", "-i"] + environment + ["/usr/sbin/chroot", root] + arguments))
    }

    static let scripts: [String] = [
        // standard library imports, C extension modules and their shared libraries
        """
        import json, re, decimal, datetime, collections, hashlib, sqlite3, zlib, base64, struct, math
        print(json.dumps({"b": [1, 2.5, None], "a": "é"}, sort_keys=True))
        print(re.sub(r"(\\w+)@(\\w+)", r"\\2 at \\1", "user@example"), decimal.Decimal(1) / 7)
        print(datetime.date(2026, 11, 27).isoformat(), collections.Counter("abracadabra").most_common(2))
        print(hashlib.sha256(b"catalyzer").hexdigest(), zlib.crc32(b"abc"), base64.b64encode(b"sandbox"))
        db = sqlite3.connect(":memory:")
        db.execute("create table t (x)")
        db.executemany("insert into t values (?)", [(i,) for i in range(1000)])
        print(db.execute("select count(*), sum(x) from t").fetchone(), struct.pack("<I", 7), math.factorial(20))
        """,
        // reads of rootfs files and directory trees
        """
        import os, sys
        print(open("/functions/hello.py").read())
        print(sorted(os.listdir("/usr/lib/python3.11"))[:15])
        files = sum(len(names) for _, _, names in os.walk("/usr/lib/python3.11/email"))
        print(files, os.stat("/etc/passwd").st_size, os.path.isdir("/usr/lib"), os.path.exists("/nonexistent"))
        print(os.readlink("/usr/bin/python3"), sys.executable, sys.prefix, sys.path)
        """,
        // writes and reads in /tmp
        """
        import os, shutil
        os.makedirs("/tmp/pytest-dir/sub", exist_ok=True)
        with open("/tmp/pytest-dir/sub/data.txt", "w") as f:
            f.write("line\\n" * 1000)
        os.rename("/tmp/pytest-dir/sub/data.txt", "/tmp/pytest-dir/moved.txt")
        with open("/tmp/pytest-dir/moved.txt") as f:
            print(len(f.readlines()), os.path.getsize("/tmp/pytest-dir/moved.txt"))
        print(sorted(os.listdir("/tmp/pytest-dir")))
        shutil.rmtree("/tmp/pytest-dir")
        print(os.path.exists("/tmp/pytest-dir"))
        """,
        // an uncaught exception: traceback on stderr, status 1
        "def f():\n    raise ValueError('boom')\nprint('before')\nf()\n",
        // sys.exit with a status
        "import sys\nprint('exiting')\nsys.exit(3)\n",
        // os.fork: the child runs to completion before fork returns in the parent
        "import os\npid = os.fork()\nif pid == 0:\n    os._exit(5)\nprint(os.waitpid(pid, 0)[1] >> 8)\n",
        // pipes under select and poll: readiness, end of file, closed fds
        """
        import os, select
        r, w = os.pipe()
        print(select.select([r], [w], [], 0))
        os.write(w, b"hi")
        print(select.select([r], [w], [], 0), os.read(r, 2))
        p = select.poll(); p.register(w, select.POLLOUT); p.register(r, select.POLLIN); print(p.poll(0), p.poll(30))
        os.write(w, b"x"); os.close(w); print(select.select([r], [], [], 1), p.poll(0), os.read(r, 1), p.poll(0))
        print(select.select([], [], [], 0.05))
        """,
        // huge inaccessible reservations (as runtimes make) cost nothing to map and unmap
        "import mmap\nfor _ in range(3):\n    mmap.mmap(-1, 64 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=0).close()\nprint('ok')\n",
        // subprocess: vfork, exec of a dynamic program, pipes for its output
        "import subprocess\nr = subprocess.run(['/usr/bin/python3', '-c', 'print(6 * 7)'], capture_output=True, text=True)\nprint(r.returncode, repr(r.stdout))\n",
    ]

    @Test("python3 -c SCRIPT prints what host python prints, on stdout and stderr, with its status",
          arguments: scripts)
    func scriptMatchesHost(_ script: String) throws {
        let sandboxed = try Self.sandbox(["/usr/bin/python3", "-c", script])
        let host = try Self.host(["/usr/bin/python3", "-c", script])
        #expect(sandboxed.status == host.status, "\(sandboxed)")
        #expect(sandboxed.stdout == host.stdout)
        #expect(sandboxed.stderr == host.stderr)
    }

    @Test("threads run: a started thread prints, and join waits for it")
    func threadsRun() throws {
        let script = """
            import threading
            thread = threading.Thread(target=print, args=("thread ran",))
            thread.start()
            thread.join()
            print("joined", threading.active_count())
            """
        let result = try Self.sandbox(["/usr/bin/python3", "-c", script], timeout: "20s")
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "thread ran\njoined 1\n", "\(result)")
    }

    @Test("waiting on a lock nobody can release is reported as a deadlock naming the futex; a timed wait times out")
    func futexDeadlockIsReported() throws {
        let deadlock = try Self.sandbox(["/usr/bin/python3", "-c",
                                         "import threading\nlock = threading.Lock()\nlock.acquire()\nprint('held', flush=True)\nlock.acquire()\n"],
                                        timeout: "20s")
        #expect(deadlock.status == 137 && deadlock.stdout == "held\n", "\(deadlock)")
        #expect(deadlock.stderr.contains("deadlock: every task is blocked"), "\(deadlock)")
        #expect(deadlock.stderr.contains("tid 1 (python3) waits on futex 0x"), "\(deadlock)")
        let timed = try Self.sandbox(["/usr/bin/python3", "-c",
                                      "import threading\nlock = threading.Lock()\nlock.acquire()\nprint(lock.acquire(timeout=0.1))\n"])
        #expect(timed.status == 0 && timed.stdout == "False\n", "\(timed)")
    }

    @Test("an on-disk SQLite database in /tmp (rollback journal and WAL), /dev/shm, and multiprocessing semaphores shared with a child")
    func tmpDatabaseAndSharedMemory() throws {
        let script = """
            import os, sqlite3, _posixshmem, mmap, multiprocessing as mp
            db = sqlite3.connect("/tmp/t.db")
            db.execute("create table t (x)")
            db.executemany("insert into t values (?)", [(i,) for i in range(1000)])
            db.commit()
            db.close()
            db = sqlite3.connect("/tmp/t.db")
            print(db.execute("pragma journal_mode=wal").fetchone(), db.execute("select count(*), sum(x) from t").fetchone())
            db.execute("insert into t values (5000)")
            db.commit()
            print(db.execute("select count(*), sum(x) from t").fetchone(), sorted(os.listdir("/tmp")))
            db.close()
            st = os.statvfs("/tmp")
            print(st.f_bsize, st.f_flag & os.ST_RDONLY, os.statvfs("/").f_flag & os.ST_RDONLY)
            r, w = os.pipe()
            os.set_blocking(r, False)
            print(os.get_blocking(r))
            fd = _posixshmem.shm_open("/catalyzer", os.O_CREAT | os.O_RDWR, 0o600)
            os.ftruncate(fd, 100)
            m = mmap.mmap(fd, 100)
            m[:5] = b"hello"
            print(os.pread(fd, 5, 0), os.listdir("/dev/shm"))
            _posixshmem.shm_unlink("/catalyzer")
            sem = mp.Semaphore(2)
            print(sem.acquire(), sem.acquire(), sem.acquire(False))
            if os.fork() == 0:
                sem.release()
                os._exit(0)
            os.wait()
            print("after the child's release:", sem.acquire(False))
            """
        let result = try Self.sandbox(["/usr/bin/python3", "-c", script])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == """
            ('wal',) (1000, 499500)
            (1001, 504500) ['t.db', 't.db-shm', 't.db-wal']
            4096 0 1
            False
            b'hello' ['catalyzer']
            True True False
            after the child's release: True

            """, "\(result)")
    }

    static func runner(_ function: String, _ requests: [String]) throws -> (CommandResult, [RunnerResponse]) {
        let result = try sandbox(["/usr/bin/python3", "/opt/catalyzer/runner.py", "/functions/\(function).py"],
                                 stdin: RunnerResponse.input(requests))
        return (result, try RunnerResponse.parse(result.stdout))
    }

    @Test("the runner calls a MODULE.FUNCTION handler of a code directory as Lambda does: handler(event, context), prints and logging to the log, never the response")
    func lambdaHandlerContract() throws {
        let program = """
            import os, runpy, sys
            os.makedirs("/tmp/code/pkg")
            open("/tmp/code/pkg/__init__.py", "w").close()
            with open("/tmp/code/pkg/app.py", "w") as f:
                f.write('''
            import logging
            logging.basicConfig(level=logging.INFO)
            def handler(event, context):
                print("printed by the handler")
                logging.info("logged by the handler")
                if event.get("raise"):
                    raise KeyError(event["raise"])
                return {"function": context.function_name, "version": context.function_version,
                        "arn": context.invoked_function_arn, "memory": context.memory_limit_in_mb,
                        "log group": context.log_group_name, "remaining": 0 < context.get_remaining_time_in_millis() <= 5000,
                        "ids": len(context.aws_request_id), "event": event}
            ''')
            sys.argv = ["runner.py", "/tmp/code", "pkg.app.handler"]
            runpy.run_path("/opt/catalyzer/runner.py", run_name="__main__")
            """
        let result = try Self.sandbox(["/usr/bin/python3", "-c", program],
                                      options: ["--env", "CATALYZER_FUNCTION_NAME=thumbnail", "--env", "CATALYZER_TIMEOUT_MS=5000"],
                                      stdin: RunnerResponse.input([#"{"n": 1}"#, #"{"raise": "missing"}"#]))
        #expect(result.status == 0, "\(result)")
        let responses = try RunnerResponse.parse(result.stdout)
        try #require(responses.count == 2, "\(result)")
        #expect(responses[0].result == ["function": .string("thumbnail"), "version": .string("$LATEST"),
                                        "arn": .string("arn:aws:lambda:local:000000000000:function:thumbnail"),
                                        "memory": .number(512), "log group": .string("/aws/lambda/thumbnail"),
                                        "remaining": .bool(true), "ids": .number(36), "event": .object(["n": .number(1)])],
                "\(result)")
        #expect(!responses[1].ok && responses[1].error?.type == "KeyError", "\(result)")
        #expect(result.stderr.components(separatedBy: "printed by the handler").count == 3, "\(result)")
        #expect(result.stderr.contains("INFO:root:logged by the handler"), "\(result)")
        #expect(!result.stdout.contains("printed") && !result.stdout.contains("logged"), "\(result)")
    }

    @Test("the runner answers 100 hello requests, every tenth of which raises in the handler")
    func helloRunner() throws {
        let requests = (0..<100).map { $0 % 10 == 9 ? #"{"raise": "request \#($0)"}"# : #"{"name": "user\#($0)"}"# }
        let (result, responses) = try Self.runner("hello", requests)
        #expect(result.status == 0, "\(result)")
        try #require(responses.count == 100, "\(result)")
        for (index, response) in responses.enumerated() {
            if index % 10 == 9 {
                #expect(!response.ok && response.error?.type == "ValueError"
                        && response.error?.message == "asked to fail: request \(index)", "request \(index)")
                #expect(response.error?.traceback.contains("Traceback (most recent call last)") == true)
            } else {
                #expect(response.ok && response.result?["greeting"] == .string("Hello, user\(index)!"), "request \(index)")
            }
        }
    }

    @Test("the runner answers 100 heavy requests from its sqlite database, then a failing one")
    func heavyRunner() throws {
        let requests = (0..<100).map { #"{"customer": "customer-\#($0 % 500)"}"# }
            + [#"{"customer": "robert'); DROP TABLE orders;--"}"#, "not json"]
        let (result, responses) = try Self.runner("heavy", requests)
        #expect(result.status == 0, "\(result)")
        try #require(responses.count == 102, "\(result)")
        for (index, response) in responses.prefix(100).enumerated() {
            #expect(response.ok && response.result?["orders"] == .number(40)
                    && response.result?["customer"] == .string("customer-\(index)"), "request \(index)")
        }
        #expect(responses[100].error?.type == "ValueError")
        #expect(responses[101].error?.type == "JSONDecodeError")
    }
}
