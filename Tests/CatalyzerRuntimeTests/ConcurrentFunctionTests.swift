import CatalyzerTestSupport
import Foundation
import Testing

/// A function that uses threads, asyncio, timers, signals and subprocesses, served through the
/// reference runner three ways — on the host under chroot, cold in a sandbox, and restored from a
/// checkpoint taken with its thread pool and a background thread alive — must answer the same.
@Suite("functions with threads and processes, cold and restored", .serialized)
struct ConcurrentFunctionTests {
    /// The function module: a thread pool and a background worker started at import, so both
    /// exist (parked) at the ready point and are captured by the checkpoint.
    static let module = """
        import asyncio, concurrent.futures, multiprocessing, queue, signal, sqlite3, subprocess, sys, threading
        POOL = concurrent.futures.ThreadPoolExecutor(4)
        list(POOL.map(abs, range(8)))
        JOBS, DONE = queue.Queue(), queue.Queue()
        def worker():
            while True:
                DONE.put(JOBS.get() * 2)
        threading.Thread(target=worker, daemon=True).start()

        def child(lock):
            with lock:
                pass

        def handler(event):
            kind = event["kind"]
            if kind == "pool":
                return list(POOL.map(lambda x: x * x, range(10)))
            if kind == "background":
                JOBS.put(event["n"])
                return DONE.get(timeout=5)
            if kind == "asyncio":
                async def work(i):
                    await asyncio.sleep(0.01 * (3 - i))
                    return i
                async def main():
                    return await asyncio.gather(*(work(i) for i in range(3)))
                return asyncio.run(main())
            if kind == "timer":
                done = threading.Event()
                threading.Timer(0.05, done.set).start()
                return done.wait(5)
            if kind == "alarm":
                def too_long(signum, frame):
                    raise TimeoutError("bounded by SIGALRM")
                previous = signal.signal(signal.SIGALRM, too_long)
                signal.setitimer(signal.ITIMER_REAL, 0.1)
                try:
                    while True:
                        sum(range(100))
                except TimeoutError as error:
                    return str(error)
                finally:
                    signal.signal(signal.SIGALRM, previous)
            if kind == "pipeline":
                first = subprocess.Popen([sys.executable, "-c", "print('x' * 100000)"], stdout=subprocess.PIPE)
                second = subprocess.Popen([sys.executable, "-c", "import sys; print(len(sys.stdin.read()))"],
                                          stdin=first.stdout, stdout=subprocess.PIPE)
                first.stdout.close()
                return [second.communicate()[0].decode(), first.wait(), second.returncode]
            if kind == "input":
                return subprocess.run([sys.executable, "-c", "import sys; print(sys.stdin.read()[::-1])"],
                                      input=event["text"].encode(), capture_output=True).stdout.decode()
            if kind == "sqlite":
                db = sqlite3.connect("/tmp/function.db")
                db.execute("create table if not exists t (x)")
                db.execute("insert into t values (?)", (event["n"],))
                db.commit()
                return db.execute("select count(*), sum(x) from t").fetchone()
            if kind == "lock":
                lock = multiprocessing.Lock()
                process = multiprocessing.Process(target=child, args=(lock,))
                with lock:
                    process.start()
                process.join(10)
                return process.exitcode
            if kind == "threads":
                gate = threading.Event()
                started = [threading.Thread(target=gate.wait, daemon=True) for _ in range(8)]
                try:
                    for thread in started:
                        thread.start()  # all 8 alive at once: they wait for the gate
                finally:
                    gate.set()
                for thread in started:
                    if thread.ident is not None:
                        thread.join()
                return len(started)
            raise ValueError(kind)
        """

    /// Writes the module to /tmp (before the ready point), then runs the runner on it.
    static var command: [String] {
        let literal = module.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"\"\"", with: "\\\"\\\"\\\"")
        return ["/usr/bin/python3", "-c", """
            import os, runpy, signal, sys
            signal.pthread_sigmask(signal.SIG_SETMASK, set())  # a host run inherits the test runner's mask
            for stale in ("/tmp/function.db", "/tmp/function.py"):
                if os.path.exists(stale):
                    os.remove(stale)
            with open("/tmp/function.py", "w") as f:
                f.write(\"\"\"\(literal)\"\"\")
            sys.argv = ["runner.py", "/tmp/function.py"]
            runpy.run_path("/opt/catalyzer/runner.py", run_name="__main__")
            """]
    }

    static let requests = [
        #"{"kind": "pool"}"#, #"{"kind": "background", "n": 21}"#, #"{"kind": "asyncio"}"#, #"{"kind": "timer"}"#,
        #"{"kind": "alarm"}"#, #"{"kind": "pipeline"}"#, #"{"kind": "input", "text": "hello"}"#,
        #"{"kind": "sqlite", "n": 5}"#, #"{"kind": "sqlite", "n": 7}"#, #"{"kind": "lock"}"#,
        #"{"kind": "background", "n": 2}"#, #"{"kind": "pool"}"#,
    ]

    @Test("host, cold and restored instances answer the same; the checkpoint holds the pool and the background thread")
    func sameAnswersEverywhere() throws {
        let rootfs = try PythonRootfs.path()
        let input = RunnerResponse.input(Self.requests)
        // The host run gets what the sandbox has: an empty /tmp and a /dev/shm (tmpfs, in a mount
        // namespace of its own) under the same rootfs.
        let setup = "mkdir -p \"$0/dev/shm\" && mount -t tmpfs tmpfs \"$0/dev/shm\" && mount -t tmpfs tmpfs \"$0/tmp\" && "
            + "exec /usr/bin/timeout -s KILL 120 /usr/bin/env -i PATH=/usr/bin:/bin /usr/sbin/chroot \"$0\" \"$@\""
        let host = try Command.run(HostNamespace.unshare, HostNamespace.arguments(["--mount"], script: setup, [rootfs] + Self.command), stdin: input)
        try #require(host.status == 0, "the host run failed: \(host)")
        let lines = host.stdout.split(separator: "\n")
        #expect(lines.count == Self.requests.count && lines.allSatisfy { $0.hasPrefix("{\"ok\":true,") }, "\(host.stdout)")

        let cold = try Command.catalyzer(["run", "--rootfs", rootfs, "--memory", "512M", "--timeout", "120s", "--"] + Self.command,
                                         stdin: input)
        #expect(cold.status == 0, "\(cold)")
        #expect(cold.stdout == host.stdout)

        let scene = try RestoreScene("threads")
        defer { scene.close() }
        try scene.checkpoint("threaded", rootfs: rootfs, memory: "512M", Self.command)
        let restored = try scene.invoke("threaded", stdin: input, options: ["--timeout", "120s"])
        #expect(restored.status == 0, "\(restored)")
        #expect(restored.stdout == host.stdout)
        // A second instance starts from the checkpoint again: its database is empty.
        let again = try scene.invoke("threaded", input: #"{"kind": "sqlite", "n": 1}"#)
        #expect(again.stdout == "{\"ok\":true,\"result\":[1,1]}\n", "\(again)")
        // --max-tasks bounds a restored instance: 6 tasks came with the checkpoint, 8 more do not fit in 8.
        let bounded = try scene.invoke("threaded", input: #"{"kind": "threads"}"#, options: ["--max-tasks", "8"])
        #expect(bounded.status == 0, "\(bounded)")
        #expect(bounded.stdout.contains("\"ok\":false") && bounded.stdout.contains("can't start new thread"), "\(bounded)")
        let unbounded = try scene.invoke("threaded", input: #"{"kind": "threads"}"#)
        #expect(unbounded.stdout == "{\"ok\":true,\"result\":8}\n", "\(unbounded)")
    }

    @Test("a checkpoint refuses a thread that keeps running past the ready point")
    func runningThreadIsRefused() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("spinner")
        defer { scene.close() }
        let spinning = ["/usr/bin/python3", "-c", """
            import threading, sys
            def spin():
                while True:
                    sum(range(100))
            threading.Thread(target=spin, daemon=True).start()
            sys.stdin.readline()
            """]
        let result = try scene.catalyzer(["checkpoint", "--rootfs", rootfs, "--name", "spinner", "--"] + spinning)
        #expect(result.status != 0, "\(result)")
        #expect(result.stderr.contains("was still running"), "\(result.stderr)")
        #expect(try scene.catalyzer(["image", "ls"]).stdout.contains("spinner") == false)
    }
}
