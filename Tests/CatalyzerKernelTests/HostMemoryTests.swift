import CatalyzerTestSupport
import Foundation
import Testing

/// `--memory` bounds what a sandbox makes the host hold — guest RAM of all its processes, pipe
/// and socket buffers, /tmp — and `--timeout` stops it within half a second whatever it does.
/// Each case runs `catalyzer run` and measures the monitor from the host (`HostFootprint`: its
/// anonymous memory plus its memfds' pages, its fds, its wall time).
@Suite("host memory and time bounded by --memory and --timeout", .serialized)
struct HostMemoryTests {
    /// The monitor's own memory beside what the guest makes it hold: its heap, stacks, caches.
    static let monitorSlack = 32 << 20

    static func run(_ script: String, memory: String, timeout: String = "30s", options: [String] = [],
                    rootfs: String? = nil, program: [String]? = nil) throws -> HostFootprint {
        _ = try requireKVM()
        let root = try rootfs ?? PythonRootfs.path()
        let command = program ?? ["/usr/bin/python3", "-c", script]
        return try HostFootprint.measure(60, Command.binary("catalyzer"),
                                         ["run", "--rootfs", root, "--memory", memory, "--timeout", timeout] + options + ["--"] + command)
    }

    static let forkChain = """
        import os
        big = bytearray(100 << 20)
        for i in range(0, len(big), 4096): big[i] = 1
        depth = 0
        for i in range(20):
            try:
                pid = os.fork()
            except OSError as e:
                print("fork failed at depth", depth, e.errno, flush=True)
                break
            if pid:
                _, status = os.waitpid(pid, 0)
                os._exit(os.waitstatus_to_exitcode(status))
            depth += 1
        print("depth", depth, flush=True)
        """

    @Test("a chain of 20 nested forks after touching 100 MiB: forks past --memory get ENOMEM, the host holds no more than --memory")
    func forkChainAfterTouching() throws {
        let footprint = try Self.run(Self.forkChain, memory: "256M")
        #expect(footprint.result.status == 0, "\(footprint)")
        #expect(footprint.result.stdout == "fork failed at depth 1 12\ndepth 1\n", "\(footprint)")
        #expect(footprint.peakBytes <= (256 << 20) + Self.monitorSlack, "\(footprint)")
        #expect(footprint.wallSeconds < 10, "\(footprint)")
    }

    @Test("a plain fork chain stops at --max-tasks (EAGAIN) and holds a few host fds per process")
    func plainForkChainFileDescriptors() throws {
        let script = """
            import os
            depth = 0
            while True:
                try:
                    pid = os.fork()
                except OSError as e:
                    print("fork failed at depth", depth, e.errno, flush=True)
                    break
                if pid:
                    _, status = os.waitpid(pid, 0)
                    os._exit(os.waitstatus_to_exitcode(status))
                depth += 1
            """
        let footprint = try Self.run(script, memory: "1G", options: ["--max-tasks", "24"])
        #expect(footprint.result.status == 0, "\(footprint)")
        #expect(footprint.result.stdout == "fork failed at depth 23 11\n", "\(footprint)")
        // Each process is a VM: its vCPU, VM and guest-RAM memfd; the monitor's own are ~12.
        #expect(footprint.peakDescriptors <= 24 * 4 + 16, "\(footprint)")
        #expect(footprint.peakBytes <= (1 << 30) + Self.monitorSlack, "\(footprint)")
    }

    @Test("a VM's kernel memory (reverse maps for its whole memory slot, ~1/400 of it) counts against --memory: a 2 GiB sandbox holds fewer than 110 python processes, not 155")
    func vmKernelMemoryCounts() throws {
        let script = """
            import os
            depth = 0
            while True:
                try:
                    pid = os.fork()
                except OSError as e:
                    print("fork failed", e.errno, 60 < depth < 110, flush=True)
                    break
                if pid:
                    _, status = os.waitpid(pid, 0)
                    os._exit(os.waitstatus_to_exitcode(status))
                depth += 1
            """
        let footprint = try Self.run(script, memory: "2G")
        #expect(footprint.result.status == 0, "\(footprint)")
        #expect(footprint.result.stdout == "fork failed 12 True\n", "\(footprint)")
        #expect(footprint.peakBytes <= (2 << 30) + Self.monitorSlack, "\(footprint)")
    }

    @Test("120 pipes filled under --memory 64M: F_SETPIPE_SZ past 1 MiB is EPERM and the buffers stop at the budget with ENOMEM")
    func pipesWithinMemory() throws {
        let script = """
            import os, fcntl, errno
            total = 0; stops = {}; sizes = set()
            chunk = b"x" * (1 << 20)
            scratch = bytearray(1 << 20)  # allocated now: the guest has no memory left later
            pipes = []
            for i in range(120):
                r, w = os.pipe()
                try: fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 16 << 20)
                except OSError as e: sizes.add(errno.errorcode[e.errno])
                sizes.add(fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20))
                os.set_blocking(w, False)
                while True:
                    try: total += os.write(w, chunk)
                    except OSError as e:
                        stops[errno.errorcode[e.errno]] = stops.get(errno.errorcode[e.errno], 0) + 1
                        break
                pipes.append((r, w))
            print(sorted(map(str, sizes)), sorted(stops), total < 64 << 20, flush=True)
            # Draining one pipe gives its memory back: another pipe takes it.
            r, w = pipes[0]
            os.set_blocking(r, False)
            while True:
                try: os.readv(r, [scratch])
                except BlockingIOError: break
            print("refilled", os.write(pipes[-1][1], chunk) > 0, flush=True)
            """
        let footprint = try Self.run(script, memory: "64M")
        #expect(footprint.result.status == 0, "\(footprint)")
        #expect(footprint.result.stdout == "['1048576', 'EPERM'] ['EAGAIN', 'ENOMEM'] True\nrefilled True\n", "\(footprint)")
        #expect(footprint.peakBytes <= (64 << 20) + Self.monitorSlack, "\(footprint)")
    }

    @Test("400 socket pairs filled under --memory 64M: queued bytes stop at the budget with ENOMEM")
    func socketsWithinMemory() throws {
        let script = """
            import socket, errno
            total = 0; stops = set(); pairs = []
            chunk = b"z" * 65536
            for i in range(400):
                a, b = socket.socketpair()
                a.setblocking(False); b.setblocking(False)
                for s in (a, b):
                    while True:
                        try: total += s.send(chunk)
                        except OSError as e:
                            stops.add(errno.errorcode[e.errno]); break
                pairs.append((a, b))
            print(sorted(stops), total < 64 << 20, flush=True)
            """
        let footprint = try Self.run(script, memory: "64M")
        #expect(footprint.result.status == 0, "\(footprint)")
        #expect(footprint.result.stdout == "['EAGAIN', 'ENOMEM'] True\n", "\(footprint)")
        #expect(footprint.peakBytes <= (64 << 20) + Self.monitorSlack, "\(footprint)")
    }

    @Test("/tmp and guest RAM share --memory: with 150 MiB touched, filling /tmp stops with ENOSPC before 256 MiB in all")
    func tmpSharesMemory() throws {
        let script = """
            import os, errno
            big = bytearray(150 << 20)
            for i in range(0, len(big), 4096): big[i] = 1
            total = 0
            chunk = b"y" * (1 << 20)
            with open("/tmp/fill", "wb", buffering=0) as f:
                while True:
                    try: total += f.write(chunk)
                    except OSError as e:
                        print(errno.errorcode[e.errno], 64 << 20 < total < 106 << 20, flush=True); break
            st = os.statvfs("/tmp")
            print("free MiB below 1", st.f_bfree * st.f_bsize < 1 << 20)
            os.truncate("/tmp/fill", 0)
            with open("/tmp/again", "wb") as f: f.write(b"a" * (32 << 20))
            print("after truncate", os.path.getsize("/tmp/again") >> 20, flush=True)
            """
        let footprint = try Self.run(script, memory: "256M")
        #expect(footprint.result.status == 0, "\(footprint)")
        #expect(footprint.result.stdout == "ENOSPC True\nfree MiB below 1 True\nafter truncate 32\n", "\(footprint)")
        #expect(footprint.peakBytes <= (256 << 20) + Self.monitorSlack, "\(footprint)")
    }

    @Test("a MAP_SHARED mapping of a /tmp file past its end is charged: 200 MiB past the end of an empty file with 100 MiB in use is ENOMEM")
    func sharedMappingPastEnd() throws {
        let script = """
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
            big = bytearray(100 << 20)
            for i in range(0, len(big), 4096): big[i] = 1
            fd = os.open("/tmp/empty", os.O_RDWR | os.O_CREAT)
            for size in (200 << 20, 64 << 20):
                p = libc.mmap(None, size, 3, 1, fd, 0)
                if p in (None, ctypes.c_void_p(-1).value):
                    print(os.strerror(ctypes.get_errno()), flush=True)
                else:
                    ctypes.memset(p, 7, size)
                    print("wrote", size >> 20, flush=True)
            """
        let footprint = try Self.run(script, memory: "256M")
        #expect(footprint.result.status == 0, "\(footprint)")
        #expect(footprint.result.stdout == "Cannot allocate memory\nwrote 64\n", "\(footprint)")
        #expect(footprint.peakBytes <= (256 << 20) + Self.monitorSlack, "\(footprint)")
    }

    @Test("/tmp names cost the budget too: a tree of symlinks with 4000-byte targets stops with ENOSPC within --memory")
    func tmpNodesShareMemory() throws {
        let script = """
            import os, errno
            n = 0; stop = None
            try:
                for d in range(2000):
                    os.mkdir(f"/tmp/d{d}")
                    for f in range(100):
                        os.symlink("x" * 4000, f"/tmp/d{d}/{f:03d}")
                        n += 1
            except OSError as e:
                stop = errno.errorcode[e.errno]
            print(stop, 1000 < n < 8192, flush=True)
            """
        let footprint = try Self.run(script, memory: "32M")
        #expect(footprint.result.status == 0, "\(footprint)")
        #expect(footprint.result.stdout == "ENOSPC True\n", "\(footprint)")
        #expect(footprint.peakBytes <= (32 << 20) + Self.monitorSlack, "\(footprint)")
    }

    @Test("the monitor's tables do not grow with names the guest throws away: 150,000 unknown syscall numbers, 20,000 abstract socket names bound and closed (they held about 11 MiB)")
    func monitorTablesStayBounded() throws {
        let script = """
            import ctypes, socket
            call = ctypes.CDLL(None).syscall
            for number in range(100000, 250000): call(number)
            for n in range(20000):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.bind(b"\\0" + b"%0100d" % n)
                s.close()
            print("done", flush=True)
            """
        let footprint = try Self.run(script, memory: "64M")
        #expect(footprint.result.status == 0 && footprint.result.stdout == "done\n", "\(footprint)")
        // The monitor's own anonymous memory stays at its few MiB.
        #expect(footprint.peakBytes - footprint.peakMemfdBytes < 6 << 20, "\(footprint)")
    }

    /// A sandbox stopped by `--timeout`: status 124, and the command gone within 0.5 s of the
    /// expiry, teardown included. The guest prints its monotonic time first thing; the timeout
    /// counted from a little before that, so the bound holds with the program's start-up to spare,
    /// and the command's own start (which a loaded host can stretch) is left out.
    static func expectTimedOut(_ footprint: HostFootprint, after seconds: Double, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(footprint.result.status == 124, "\(footprint)", sourceLocation: sourceLocation)
        #expect(footprint.result.stderr.contains("timed out after"), "\(footprint)", sourceLocation: sourceLocation)
        let elapsed = footprint.secondsFromGuestStartToExit
        #expect(elapsed != nil && elapsed! < seconds + 0.5, "\(footprint)", sourceLocation: sourceLocation)
        #expect(footprint.wallSeconds < seconds + 2, "\(footprint)", sourceLocation: sourceLocation)
    }

    /// The first line a timed script prints: the guest's monotonic time.
    static let printStart = "import time, os; print(time.monotonic(), flush=True)\n"

    @Test("--timeout stops a fork bomb within 0.5 s")
    func timeoutStopsForkBomb() throws {
        let script = Self.printStart + """
            import os
            while True:
                try: os.fork()
                except OSError: pass
            """
        let footprint = try Self.run(script, memory: "512M", timeout: "2s")
        Self.expectTimedOut(footprint, after: 2)
        #expect(footprint.peakBytes <= (512 << 20) + Self.monitorSlack, "\(footprint)")
    }

    @Test("--timeout stops a chain of forks, each copying 300 MiB, within 0.5 s")
    func timeoutStopsForkChain() throws {
        // The first process waits; below it each process forks and exits, so a copy of 300 MiB
        // of guest memory is always under way.
        let script = Self.printStart + """
            import os, time
            if os.fork():
                time.sleep(100)
                os._exit(3)
            big = bytearray(300 << 20)
            for i in range(0, len(big), 4096): big[i] = 1
            n = 0
            while True:
                try: pid = os.fork()
                except OSError: continue
                if pid: os._exit(0)
                n += 1
                big[n * 4096] = 2
            """
        let footprint = try Self.run(script, memory: "1G", timeout: "2s")
        Self.expectTimedOut(footprint, after: 2)
        #expect(footprint.peakBytes <= (1 << 30) + Self.monitorSlack, "\(footprint)")
    }

    @Test("--timeout stops a sandbox whose process is in a blocking host call (opening a FIFO of the rootfs) within 0.5 s")
    func timeoutStopsBlockingHostCall() throws {
        let directory = try TemporaryDirectory("fifo-rootfs")
        defer { directory.remove() }
        let root = directory.path
        let setup = try Command.run("/bin/sh", ["-c", "mkdir -p \(root)/bin && cp /bin/busybox \(root)/bin/ && mkfifo \(root)/fifo"])
        try #require(setup.status == 0, "\(setup)")
        let footprint = try Self.run("", memory: "64M", timeout: "2s", rootfs: root, program: ["/bin/busybox", "cat", "/fifo"])
        // busybox prints no clock: the bound is counted from the command's start here.
        #expect(footprint.result.status == 124, "\(footprint)")
        #expect(footprint.wallSeconds < 2.5, "\(footprint)")
    }
}
