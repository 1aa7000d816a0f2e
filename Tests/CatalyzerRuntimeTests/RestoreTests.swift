import CatalyzerImage
import CatalyzerRuntime
import CatalyzerTestSupport
import Foundation
import Glibc
import Synchronization
import Testing

/// Checkpoint at the ready point and restore through catalyzerfs, end to end through the CLI:
/// real KVM sandboxes, a real FUSE mount, images in a real store.
@Suite("checkpoint and restore", .serialized)
struct RestoreTests {
    static let runner = ["/usr/bin/python3", "/opt/catalyzer/runner.py"]

    /// The cold run's responses to `requests`: the reference a restored instance must match.
    func coldResponses(rootfs: String, function: String, requests: [String]) throws -> String {
        let cold = try Command.catalyzer(["run", "--rootfs", rootfs, "--memory", "128M", "--"] + Self.runner + [function],
                                         stdin: RunnerResponse.input(requests))
        try #require(cold.status == 0, "cold run failed: \(cold)")
        return cold.stdout
    }

    @Test("a restored instance answers like a cold run, for both sample functions")
    func restoredMatchesColdRun() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("match")
        defer { scene.close() }
        let cases = [("hello", ["{\"name\": \"Ada\"}", "{\"raise\": \"boom\"}", "{}"]),
                     ("heavy", ["{\"customer\": \"customer-42\"}", "{\"customer\": \"nobody\"}", "{}"])]
        for (function, requests) in cases {
            try scene.checkpoint(function, rootfs: rootfs, Self.runner + ["/functions/\(function).py"])
            let cold = try coldResponses(rootfs: rootfs, function: "/functions/\(function).py", requests: requests)
            let restored = try scene.invoke(function, stdin: RunnerResponse.input(requests))
            #expect(restored.status == 0, "\(restored)")
            #expect(restored.stdout == cold)
            #expect(try RunnerResponse.parse(restored.stdout).count == requests.count)
            // One request per invocation, as a platform would send it.
            let single = try scene.invoke(function, input: requests[0])
            #expect(single.status == 0, "\(single)")
            #expect(single.stdout == cold.split(separator: "\n")[0] + "\n")
        }
    }

    @Test("one restored instance serves 100 requests exactly as a cold run does")
    func hundredRequests() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("hundred")
        defer { scene.close() }
        try scene.checkpoint("hello", rootfs: rootfs, Self.runner + ["/functions/hello.py"])
        let requests = (0..<100).map { $0 % 10 == 9 ? "{\"raise\": \"request \($0)\"}" : "{\"name\": \"caller \($0)\"}" }
        let cold = try coldResponses(rootfs: rootfs, function: "/functions/hello.py", requests: requests)
        let restored = try scene.invoke("hello", stdin: RunnerResponse.input(requests))
        #expect(restored.status == 0, "\(restored)")
        let responses = try RunnerResponse.parse(restored.stdout)
        #expect(responses.count == 100)
        #expect(responses.filter { !$0.ok }.count == 10)
        #expect(restored.stdout == cold)
    }

    /// A function whose init writes a /tmp file and keeps a list in memory; each request appends
    /// to both, sleeps so that instances overlap, and reports what it sees, with fresh
    /// randomness (reseeded as the runner does) and the time.
    static let isolationProbe = ["/usr/bin/python3", "-c", """
        import json, os, random, sys, time
        seen = ["init"]
        os.makedirs("/tmp/shared", exist_ok=True)
        with open("/tmp/shared/base.txt", "w") as f: f.write("base")
        checkpointed_at = time.time()
        for line in sys.stdin:
            random.seed(os.urandom(32))
            me = json.loads(line)["id"]
            seen.append(me)
            with open(f"/tmp/shared/{me}.txt", "w") as f: f.write(me)
            with open("/tmp/shared/base.txt", "a") as f: f.write("+" + me)
            time.sleep(0.3)
            print(json.dumps({"seen": seen, "tmp": sorted(os.listdir("/tmp/shared")),
                              "base": open("/tmp/shared/base.txt").read(), "urandom": os.urandom(16).hex(),
                              "random": random.random(), "time": time.time(), "monotonic": time.monotonic(),
                              "initTime": checkpointed_at}), flush=True)
        """]

    struct ProbeResponse: Decodable {
        var seen: [String]
        var tmp: [String]
        var base: String
        var urandom: String
        var random: Double
        var time: Double
        var initTime: Double
    }

    @Test("8 instances restored concurrently from one image each see only their own memory and /tmp writes")
    func concurrentInstancesAreIsolated() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("isolation")
        defer { scene.close() }
        try scene.checkpoint("probe", rootfs: rootfs, Self.isolationProbe)
        _ = try scene.catalyzer(["mount"])  // mounted once up front, so instances race only to restore
        let ids = (0..<8).map { "instance\($0)" }
        let results = Mutex<[String: CommandResult]>([:])
        let environment = scene.environment
        DispatchQueue.concurrentPerform(iterations: ids.count) { index in
            let arguments = ["invoke", "probe", "--input", "{\"id\": \"\(ids[index])\"}"]
            guard let result = try? Command.run(Command.binary("catalyzer"), arguments, environment: environment) else { return }
            results.withLock { $0[ids[index]] = result }
        }
        var responses: [ProbeResponse] = []
        for id in ids {
            let result = try #require(results.withLock { $0[id] })
            #expect(result.status == 0, "\(id): \(result)")
            let response = try JSONDecoder().decode(ProbeResponse.self, from: Data(result.stdout.utf8))
            #expect(response.seen == ["init", id])
            #expect(response.tmp == ["base.txt", "\(id).txt"])
            #expect(response.base == "base+\(id)")
            responses.append(response)
        }
        // A later instance starts from the checkpoint again, not from any earlier instance's writes.
        let later = try scene.invoke("probe", input: "{\"id\": \"later\"}")
        let response = try JSONDecoder().decode(ProbeResponse.self, from: Data(later.stdout.utf8))
        #expect(response.seen == ["init", "later"] && response.tmp == ["base.txt", "later.txt"])
    }

    @Test("clocks and randomness after a restore are the host's at restore time, not the checkpoint's")
    func timeAndRandomnessAreFresh() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("fresh")
        defer { scene.close() }
        try scene.checkpoint("probe", rootfs: rootfs, Self.isolationProbe)
        var checkpointDone = timespec()
        clock_gettime(CLOCK_REALTIME, &checkpointDone)
        usleep(200_000)
        let first = try JSONDecoder().decode(ProbeResponse.self, from: Data(try scene.invoke("probe", input: "{\"id\": \"a\"}").stdout.utf8))
        let second = try JSONDecoder().decode(ProbeResponse.self, from: Data(try scene.invoke("probe", input: "{\"id\": \"b\"}").stdout.utf8))
        let checkpointTime = Double(checkpointDone.tv_sec) + Double(checkpointDone.tv_nsec) / 1e9
        for response in [first, second] {
            #expect(response.initTime < checkpointTime)
            #expect(response.time > checkpointTime + 0.2, "the clock is the host's now, not the checkpoint's")
        }
        #expect(second.time > first.time)
        #expect(first.urandom != second.urandom)
        #expect(first.random != second.random, "random is reseeded from the fresh getrandom")
    }

    @Test("open pipes with unread bytes, dup'ed fds, devices and an unlinked /tmp file survive the checkpoint")
    func openFilesOfEveryKindSurvive() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("fd-kinds")
        defer { scene.close() }
        let probe = ["/usr/bin/python3", "-c", """
            import os, sys
            r, w = os.pipe()
            os.write(w, b"buffered-before-checkpoint")
            d = os.dup(r)
            null = open("/dev/null", "rb")
            t = open("/tmp/x", "w+"); t.write("tmpdata"); t.flush(); t.seek(3)
            os.unlink("/tmp/x")
            os.chdir("/tmp")
            for line in sys.stdin:
                print(os.read(d, 8), os.read(r, 100), null.read(3), t.read(), os.listdir("."), os.getcwd(), flush=True)
            """]
        try scene.checkpoint("fds", rootfs: rootfs, probe)
        let result = try scene.invoke("fds", input: "x")
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "b'buffered' b'-before-checkpoint' b'' data [] /tmp\n")
    }

    @Test("eventfds, timerfds and epoll instances open at the ready point survive the checkpoint, as node's event loop needs")
    func eventFilesSurvive() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("event-files")
        defer { scene.close() }
        let probe = ["/usr/bin/python3", "-c", """
            import ctypes, os, select, struct, sys, time
            libc = ctypes.CDLL(None, use_errno=True)
            counter = os.eventfd(5, os.EFD_NONBLOCK)
            semaphore = os.eventfd(2, os.EFD_SEMAPHORE)
            quiet = os.eventfd(0, os.EFD_NONBLOCK)
            r, w = os.pipe()
            os.write(w, b"x")
            poll = select.epoll()
            poll.register(counter, select.EPOLLIN)
            poll.register(r, select.EPOLLIN | select.EPOLLET)
            poll.register(quiet, select.EPOLLIN)
            # A timerfd: one armed to fire every 50 ms, one disarmed.
            class Spec(ctypes.Structure):
                _fields_ = [("interval_s", ctypes.c_long), ("interval_ns", ctypes.c_long), ("value_s", ctypes.c_long), ("value_ns", ctypes.c_long)]
            periodic = libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK)
            idle = libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK)
            libc.timerfd_settime(periodic, 0, ctypes.byref(Spec(0, 50_000_000, 0, 50_000_000)), None)
            for line in sys.stdin:
                ready = sorted(fd for fd, events in poll.poll(0))
                expected = sorted([counter, r])
                os.write(quiet, struct.pack("=Q", 1))
                # The pipe is edge-triggered: reported once, not again until more arrives.
                later = sorted(fd for fd, events in poll.poll(0))
                time.sleep(0.12)
                fired = struct.unpack("=Q", os.read(periodic, 8))[0]
                try:
                    os.read(idle, 8); idle_state = "fired"
                except BlockingIOError:
                    idle_state = "quiet"
                print(os.eventfd_read(counter), os.eventfd_read(semaphore), os.eventfd_read(semaphore),
                      ready == expected, later == sorted([counter, quiet]), fired >= 2, idle_state, flush=True)
            """]
        try scene.checkpoint("events", rootfs: rootfs, probe)
        let result = try scene.invoke("events", input: "x")
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "5 1 1 True True True quiet\n", "\(result)")
    }

    @Test("/tmp symlinks, hard links, owners, times and /dev/shm files survive the checkpoint")
    func tmpMetadataSurvives() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("tmp-metadata")
        defer { scene.close() }
        let probe = ["/usr/bin/python3", "-c", """
            import os, sys
            open("/tmp/f", "w").write("data")
            os.link("/tmp/f", "/tmp/g")
            os.symlink("f", "/tmp/s")
            os.chown("/tmp/f", 12, 34)
            os.utime("/tmp/f", (1000, 2000))
            open("/dev/shm/m", "w").write("shm")
            for line in sys.stdin:
                st = os.stat("/tmp/f")
                print(os.readlink("/tmp/s"), open("/tmp/s").read(), st.st_nlink, st.st_uid, st.st_gid,
                      int(st.st_atime), int(st.st_mtime), open("/dev/shm/m").read(), flush=True)
            """]
        try scene.checkpoint("tmp-metadata", rootfs: rootfs, probe)
        let result = try scene.invoke("tmp-metadata", input: "x")
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "f data 2 12 34 1000 2000 shm\n")
    }

    @Test("a restored instance forks: each child starts from a copy of the restored memory")
    func restoredInstanceForks() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("fork")
        defer { scene.close() }
        let forker = ["/usr/bin/python3", "-c", """
            import os, sys
            data = list(range(100000))
            for line in sys.stdin:
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    data.append(len(line.strip()))
                    os.write(w, str(sum(data)).encode()); os._exit(7)
                os.close(w)
                _, status = os.waitpid(pid, 0)
                print(os.read(r, 100).decode(), os.waitstatus_to_exitcode(status), len(data), flush=True)
            """]
        try scene.checkpoint("forker", rootfs: rootfs, forker)
        let result = try scene.invoke("forker", stdin: RunnerResponse.input(["a", "bb", "ccc"]))
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "4999950001 7 100000\n4999950002 7 100000\n4999950003 7 100000\n")
    }

    @Test("monotonic time continues from the checkpoint's where the host's clock is behind it (another node, a reboot)")
    func monotonicTimeNeverGoesBack() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("monotonic")
        defer { scene.close() }
        let probe = ["/usr/bin/python3", "-c", """
            import sys, time
            at_init = time.monotonic()
            for line in sys.stdin:
                before = time.monotonic()
                time.sleep(0.2)  # clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME): a guest deadline
                print(at_init, before, time.monotonic() - before, time.clock_gettime(time.CLOCK_BOOTTIME), flush=True)
            """]
        try scene.checkpoint("clock", rootfs: rootfs, probe)
        // As if the checkpoint had been made on a host whose monotonic clock was 30 days ahead.
        var state = try CheckpointState(decoding: try scene.store.open("clock").readState(), image: "clock")
        state.kernel.checkpointMonotonic += 30 * 86_400 * 1_000_000_000
        try StoreSurgery.replaceState(scene.store, "clock", with: state.encoded())
        let result = try scene.invoke("clock", input: "x", options: ["--timeout", "20s"])
        #expect(result.status == 0, "\(result)")
        let values = result.stdout.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        try #require(values.count == 4, "\(result)")
        let (atInit, now, slept, boottime) = (values[0], values[1], values[2], values[3])
        #expect(now >= Double(state.kernel.checkpointMonotonic) / 1e9, "monotonic time went back across the restore")
        #expect(now > atInit)
        #expect(slept >= 0.2 && slept < 10, "an absolute sleep deadline on the guest's clock lasts as long as asked")
        #expect(boottime >= now - 1)
    }

    @Test("a file opened while initializing reopens on first use at its checkpointed offset")
    func openFilesReconnectLazily() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("reconnect")
        defer { scene.close() }
        let probe = ["/usr/bin/python3", "-c", """
            import sys
            f = open("/opt/catalyzer/runner.py", "rb", buffering=0)
            f.read(100)
            for line in sys.stdin:
                print(f.read(40).hex(), flush=True)
            """]
        try scene.checkpoint("reader", rootfs: rootfs, probe)
        let file = Array(try Data(contentsOf: URL(fileURLWithPath: rootfs + "/opt/catalyzer/runner.py")))
        let expected = file[100..<140].map { String(format: "%02x", $0) }.joined() + "\n"
            + file[140..<180].map { String(format: "%02x", $0) }.joined() + "\n"
        for _ in 0..<2 {
            let result = try scene.invoke("reader", stdin: RunnerResponse.input(["1", "2"]))
            #expect(result.status == 0, "\(result)")
            #expect(result.stdout == expected)
        }
    }

    @Test("at the end of input a restored runner runs the function's atexit handlers and exits 0")
    func runnerExitRunsAtexitHandlers() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("atexit")
        defer { scene.close() }
        // The function module lives in the checkpoint's /tmp, written before the runner starts.
        let function = ["/usr/bin/python3", "-c", """
            import runpy, sys
            with open("/tmp/fn.py", "w") as f:
                f.write("import atexit, sys\\natexit.register(lambda: print('atexit ran', file=sys.stderr))\\n"
                        "def handler(event):\\n    return event['n'] * 2\\n")
            sys.argv = ["runner.py", "/tmp/fn.py"]
            runpy.run_path("/opt/catalyzer/runner.py", run_name="__main__")
            """]
        try scene.checkpoint("doubler", rootfs: rootfs, function)
        let result = try scene.invoke("doubler", stdin: RunnerResponse.input(["{\"n\": 21}", "{\"n\": 2}"]))
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "{\"ok\":true,\"result\":42}\n{\"ok\":true,\"result\":4}\n")
        #expect(result.stderr == "atexit ran\n", "\(result)")
    }

    @Test("gc keeps a replaced image version's blobs while an instance restored from it still runs")
    func gcKeepsVersionsInUse() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("gc-in-use")
        defer { scene.close() }
        func function(_ version: String) -> [String] {
            ["/usr/bin/python3", "-c", "import sys\nfor line in sys.stdin:\n    print('\(version)', line.strip(), len(bytearray(8 << 20)), flush=True)"]
        }
        try scene.checkpoint("fn", rootfs: rootfs, function("v1"))
        let v1 = try scene.store.open("fn")
        let v1Blobs = [v1.manifestDescriptor.digest, v1.manifest.config.digest] + v1.manifest.layers.map(\.digest)

        let instance = Process()
        instance.executableURL = URL(fileURLWithPath: Command.binary("catalyzer"))
        instance.arguments = ["invoke", "fn"]
        instance.environment = ProcessInfo.processInfo.environment.merging(scene.environment) { $1 }
        let input = Pipe(), output = Pipe()
        instance.standardInput = input
        instance.standardOutput = output
        try instance.run()
        func ask(_ line: String) -> String {
            input.fileHandleForWriting.write(Data((line + "\n").utf8))
            var answer = Data()
            while !answer.contains(UInt8(ascii: "\n")) {
                let more = output.fileHandleForReading.availableData
                if more.isEmpty { break }
                answer.append(more)
            }
            return String(decoding: answer, as: UTF8.self)
        }
        #expect(ask("a") == "v1 a 8388608\n")

        // Replaced while the instance runs, then collected: the running version's blobs stay.
        try scene.checkpoint("fn", rootfs: rootfs, function("v2"))
        let first = try scene.catalyzer(["image", "gc", "--json"])
        #expect(first.status == 0 && (try? JSONDecoder().decode(GCReport.self, from: Data(first.stdout.utf8)))?.versionsInUse == 1, "\(first)")
        for digest in v1Blobs { #expect(FileManager.default.fileExists(atPath: scene.store.blobPath(digest)), "\(digest) was collected") }
        #expect(ask("b") == "v1 b 8388608\n")
        try input.fileHandleForWriting.close()
        instance.waitUntilExit()
        #expect(instance.terminationStatus == 0)

        // Once it has ended, the old version is garbage like any other.
        let second = try scene.catalyzer(["image", "gc", "--json"])
        #expect(second.status == 0 && (try? JSONDecoder().decode(GCReport.self, from: Data(second.stdout.utf8)))?.versionsInUse == 0, "\(second)")
        #expect(!FileManager.default.fileExists(atPath: scene.store.blobPath(v1.manifestDescriptor.digest)))
        #expect(try scene.invoke("fn", input: "c").stdout == "v2 c 8388608\n")
    }

    @Test("restores keep working after catalyzerfs is unmounted and mounted again")
    func restoreAfterRemount() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("remount")
        defer { scene.close() }
        try scene.checkpoint("hello", rootfs: rootfs, Self.runner + ["/functions/hello.py"])
        let expected = "{\"ok\":true,\"result\":{\"greeting\":\"Hello, again!\",\"length\":5}}\n"
        #expect(try scene.invoke("hello", input: "{\"name\": \"again\"}").stdout == expected)
        // The managed mount: unmounted behind catalyzer's back, it is mounted again on demand.
        let mountpoint = try scene.catalyzer(["mount"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try Command.run("umount", [mountpoint]).status == 0)
        #expect(try scene.invoke("hello", input: "{\"name\": \"again\"}").stdout == expected)
        // A user's own mount, unmounted and mounted again.
        let own = scene.directory.path + "/own-mount"
        try FileManager.default.createDirectory(atPath: own, withIntermediateDirectories: true)
        for _ in 0..<2 {
            let mounted = try Command.run(Command.binary("catalyzerfs"), [scene.store.root, own])
            try #require(mounted.status == 0, "\(mounted)")
            let result = try scene.invoke("hello", input: "{\"name\": \"again\"}", options: ["--mount", own])
            #expect(result.status == 0 && result.stdout == expected, "\(result)")
            #expect(try Command.run("umount", [own]).status == 0)
        }
    }

    @Test("--record-working-set stores the chunks the first request touched; catalyzerfs does not prefetch them for an image with a page working set")
    func workingSet() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("working-set")
        defer { scene.close() }
        try scene.checkpoint("hello", rootfs: rootfs, options: ["--record-working-set", "--working-set-input", "{\"name\": \"w\"}"],
                             Self.runner + ["/functions/hello.py"])
        let image = try scene.store.open("hello")
        let workingSet = try #require(image.config.workingSet)
        #expect(workingSet.count > 5 && workingSet.count < image.config.chunkCount)
        #expect(workingSet.allSatisfy { $0 >= 0 && $0 < image.config.chunkCount })
        // A fresh mount: the restore installs the page working set, so catalyzerfs pushes no
        // chunks besides (ReadTests covers the chunk prefetch of images without one).
        #expect(image.config.pageWorkingSet != nil)
        _ = try scene.catalyzer(["mount", "--unmount"])
        let result = try scene.invoke("hello", input: "{\"name\": \"w\"}", options: ["--json", "--timings"])
        #expect(result.status == 0, "\(result)")
        let mountpoint = try scene.catalyzer(["mount"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let stats = try String(contentsOfFile: mountpoint + "/.stats", encoding: .utf8)
        let prefetched = try #require(stats.firstMatch(of: /"prefetchedChunks" : (\d+)/)).1
        #expect(Int(prefetched)! == 0, "\(stats)")
    }

    @Test("--record-working-set also stores the touched pages as a layer of their own; a restore installs them before the guest runs, answers as before, and refuses a damaged one")
    func pageWorkingSet() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("page-working-set")
        defer { scene.close() }
        try scene.checkpoint("hello", rootfs: rootfs, options: ["--record-working-set", "--working-set-input", "{\"name\": \"w\"}"],
                             Self.runner + ["/functions/hello.py"])
        let image = try scene.store.open("hello")
        #expect(image.config.formatVersion == 2)
        let record = try #require(image.config.pageWorkingSet)
        #expect(image.manifest.layers.contains(record.blob))
        #expect(record.blob.mediaType == MediaType.pageWorkingSet(.lz4))
        // Pages, not chunks: far fewer bytes than the chunks they lie in.
        let chunkBytes = (image.config.workingSet ?? []).count * image.config.chunkSize
        #expect(record.pages > 50 && record.pages * 4096 < chunkBytes, "\(record.pages) pages, \(chunkBytes) bytes of chunks")
        let verified = try scene.catalyzer(["image", "verify", "hello"])
        #expect(verified.status == 0, "\(verified)")

        // A fresh mount: the pages come from the blob, the answer is the same as from the chunks.
        _ = try scene.catalyzer(["mount", "--unmount"])
        let result = try scene.invoke("hello", input: "{\"name\": \"other\"}", options: ["--json", "--timings"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.contains("Hello, other!"), "\(result.stdout)")
        #expect(plainAnswer(try scene.invoke("hello", input: "{\"name\": \"other\"}").stdout))
        struct Document: Decodable { var timings: InvocationTimings }
        let timings = try JSONDecoder().decode(Document.self, from: Data(result.stdout.utf8)).timings
        #expect(timings.workingSet?.pages == record.pages, "\(timings)")
        // catalyzerfs put every page of it into the memory file's page cache, once.
        let mountpoint = try scene.catalyzer(["mount"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let stats = try String(contentsOfFile: mountpoint + "/.stats", encoding: .utf8)
        #expect(stats.contains("\"workingSetPagesStored\" : \(record.pages)"), "\(stats)")
        // Without the blob the same restore reads chunks on first touch; with it, far fewer ...
        _ = try scene.catalyzer(["mount", "--unmount"])
        try StoreSurgery.copy(scene.store, "hello", to: "plain")
        // ... and as a version 1 image, which this catalyzer still reads.
        try StoreSurgery.editConfig(scene.store, "plain") { $0["pageWorkingSet"] = nil; $0["formatVersion"] = 1 }
        let plain = try scene.invoke("plain", input: "{\"name\": \"other\"}", options: ["--json", "--timings"])
        #expect(plain.status == 0 && plain.stdout.contains("Hello, other!"), "\(plain)")
        let plainTimings = try JSONDecoder().decode(Document.self, from: Data(plain.stdout.utf8)).timings
        #expect(plainTimings.workingSet == nil)
        #expect((timings.fuseReads ?? .max) < (plainTimings.fuseReads ?? 0), "with: \(timings), without: \(plainTimings)")
        // Installed pages have writable host entries, so KVM maps their neighbours on each fault:
        // far fewer first-touch exits (hello: ~530 against ~1,070).
        if let with = timings.kvm?.pageFaults, let without = plainTimings.kvm?.pageFaults {
            #expect(with * 4 < without * 3, "KVM page faults with the working set \(with), without \(without)")
        }

        // Damaged bytes of the blob: verify names it, a restore refuses to run on it.
        let path = scene.store.blobPath(record.blob.digest)
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count / 2] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let damaged = try scene.catalyzer(["image", "verify", "hello"])
        #expect(damaged.status != 0 && (damaged.stdout + damaged.stderr).contains("working set blob \(record.blob.digest) is corrupt"), "\(damaged)")
        _ = try scene.catalyzer(["mount", "--unmount"])
        let refused = try scene.invoke("hello", input: "{\"name\": \"other\"}")
        #expect(refused.status != 0 && refused.stderr.contains("working set") && refused.stderr.contains("catalyzer image verify hello"), "\(refused)")
        #expect(!refused.stdout.contains("Hello"))
    }

    private func plainAnswer(_ stdout: String) -> Bool {
        stdout == "{\"ok\":true,\"result\":{\"greeting\":\"Hello, other!\",\"length\":5}}\n"
    }
}
