import CatalyzerBenchmarks
import CatalyzerImage
import CatalyzerKVM
import CatalyzerRuntime
import CatalyzerTestSupport
import Foundation
import Glibc
import Synchronization
import Testing

/// sfork: invocations forked from a parked template (`ForkingFunctionService`, `FunctionTemplate`),
/// with VMs reset and reused between forks.
@Suite("sfork", .serialized)
struct ForkTests {
    /// A function that remembers: it reports what the previous invocation left in a module global
    /// and in /tmp, then leaves its own value there. A fresh fork must see neither.
    static let statefulFunction = ["/usr/bin/python3", "-c", """
        import runpy, sys
        with open("/tmp/fn.py", "w") as f:
            f.write('''
        import os, time
        seen = None
        kept = None
        def handler(event):
            global seen, kept
            if event.get("sleep"):
                time.sleep(event["sleep"])
            if event.get("raise"):
                raise ValueError(event["raise"])
            if event.get("fill"):
                kept = b"x" * (event["fill"] << 20)
                return {"filled": len(kept) >> 20}
            if event.get("allocate"):
                hoard = [bytearray(1 << 20) for _ in range(event["allocate"])]
                return {"allocated": len(hoard)}
            before = {"global": seen, "tmp": open("/tmp/state").read() if os.path.exists("/tmp/state") else None}
            seen = event.get("value")
            with open("/tmp/state", "w") as f:
                f.write(str(seen))
            return {"value": seen, "before": before}
        ''')
        sys.argv = ["runner.py", "/tmp/fn.py"]
        runpy.run_path("/opt/catalyzer/runner.py", run_name="__main__")
        """]

    /// A scene with the stateful function checkpointed as `stateful` and the store mounted.
    final class Scene {
        let scene: RestoreScene
        let mountpoint: String
        init(_ label: String) throws {
            scene = try RestoreScene(label)
            try scene.checkpoint("stateful", rootfs: try PythonRootfs.path(), ForkTests.statefulFunction)
            let mounted = try scene.catalyzer(["mount", "--store", scene.store.root])
            try #require(mounted.status == 0, "\(mounted)")
            mountpoint = mounted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        /// The services made, shut down by `close` so that nothing holds the mount's files.
        private let made = Mutex<[ForkingFunctionService]>([])
        func service(pool: Int = 1, reuse: Int = 1, parking: FunctionTemplate.ParkingPolicy = .init(),
                     handOffLimit: Duration = AnswerHandOff.defaultLimit) throws -> ForkingFunctionService {
            let service = try ForkingFunctionService(store: scene.store, mount: mountpoint, poolSize: pool, reuse: reuse, parking: parking,
                                                     handOffLimit: handOffLimit)
            made.withLock { $0.append(service) }
            return service
        }
        /// Kills the catalyzerfs daemon serving the mount and drops the clean page cache: nothing
        /// of the image is left to read but through the dead mount. Blocks its thread (a killed
        /// daemon took up to 5 s to go with other suites running).
        func killMountDaemon(sourceLocation: SourceLocation = #_sourceLocation) throws {
            let daemons = try FileManager.default.contentsOfDirectory(atPath: "/proc").compactMap(Int32.init).filter { pid in
                let line = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))).map { String(decoding: $0, as: UTF8.self) } ?? ""
                return line.contains("catalyzerfs") && line.contains(mountpoint)
            }
            try #require(daemons.count == 1, "catalyzerfs of \(mountpoint): \(daemons)", sourceLocation: sourceLocation)
            kill(daemons[0], SIGKILL)
            let deadline = Date().addingTimeInterval(30)
            while kill(daemons[0], 0) == 0 && Date() < deadline { usleep(10_000) }
            var info = stat()
            #expect(stat(mountpoint + "/.stats", &info) != 0, "the mount still answers", sourceLocation: sourceLocation)
            // The image's pages are clean (the mount is read-only): no sync, which can take
            // seconds while other tests write.
            let dropped = open("/proc/sys/vm/drop_caches", O_WRONLY)
            try #require(dropped >= 0, "open /proc/sys/vm/drop_caches: \(String(cString: strerror(errno)))", sourceLocation: sourceLocation)
            #expect(write(dropped, "3", 1) == 1, sourceLocation: sourceLocation)
            Glibc.close(dropped)
        }

        func close() {
            for service in made.withLock({ $0 }) { service.shutdown() }
            made.withLock { $0.removeAll() }
            let unmounted = try? scene.catalyzer(["mount", "--unmount"])
            #expect(unmounted?.status == 0, "catalyzer mount --unmount: \(String(describing: unmounted))")
            scene.close()
            // The mount must be gone: a leftover would be a service still holding its files.
            let mounts = FileIO.readToEnd("/proc/self/mountinfo") ?? ""
            #expect(!mounts.contains(scene.directory.path), "a catalyzerfs mount of the test is left behind")
        }
    }

    /// Runs `body` in a new scene, closed once `body` and everything it held are gone (a
    /// template still referenced would keep the mount busy).
    static func withScene(_ label: String, _ body: (Scene) async throws -> Void) async throws {
        let scene = try Scene(label)
        defer { scene.close() }
        try await body(scene)
    }

    static func request(_ event: String, timeout: Double = 30) -> FunctionRequest {
        FunctionRequest(function: "stateful", event: Array(event.utf8), timeoutSeconds: timeout)
    }

    /// The handler's result as a dictionary; fails the test on any other outcome.
    static func result(_ response: FunctionResponse, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        guard case .result(let bytes) = response.outcome else {
            Issue.record("expected a result, got \(response.outcome); log: \(String(decoding: response.logTail, as: UTF8.self))", sourceLocation: sourceLocation)
            throw CancellationError()
        }
        return try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any], sourceLocation: sourceLocation)
    }

    static func before(_ result: [String: Any]) -> (global: String?, tmp: String?) {
        let before = result["before"] as? [String: Any] ?? [:]
        return (before["global"] as? String, before["tmp"] as? String)
    }

    @Test("each invocation runs in a fresh fork: it sees nothing of the invocations before it, in memory or /tmp, on a reused VM")
    func forksAreFresh() async throws {
        try await Self.withScene("fork-fresh") { scene in
            let service = try scene.service(pool: 1)
            let template = try service.template(for: "stateful")
            for value in ["first", "second", "third"] {
                // A fork answers before it has exited; wait for its VM to be reset and parked, so the
                // next invocation runs in the same VM.
                let deadline = Date().addingTimeInterval(10)
                while template.parkedVMs < 1 && Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
                let result = try Self.result(try await service.invoke(Self.request(#"{"value": "\#(value)"}"#)))
                #expect(result["value"] as? String == value)
                let before = Self.before(result)
                #expect(before.global == nil && before.tmp == nil, "invocation \(value) saw \(before)")
            }
            let counters = try #require(service.templateStatistics.first).counters
            #expect(counters.recycledVMs >= 2, "\(counters)")
            #expect(counters.pooledVMs >= 2, "\(counters)")
        }
    }

    @Test("without a pool every fork gets a new VM, which has the pages the last fork wrote copied in (eager copy); each fork is still fresh")
    func newVMsGetHotPagesCopiedIn() async throws {
        try await Self.withScene("fork-eager") { scene in
            let service = try scene.service(pool: 0)
            let template = try service.template(for: "stateful")
            #expect(template.eagerCopy && template.hotPageCount == 0)
            for value in ["first", "second", "third"] {
                let result = try Self.result(try await service.invoke(Self.request(#"{"value": "\#(value)"}"#)))
                #expect(result["value"] as? String == value)
                let before = Self.before(result)
                #expect(before.global == nil && before.tmp == nil, "invocation \(value) saw \(before)")
                // The VM comes back after the answer: wait until the template has learned from it.
                let deadline = Date().addingTimeInterval(10)
                while template.vmsOnTheirWayBack > 0 && Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
                #expect(template.hotPageCount > 10, "after \(value): \(template.hotPageCount) hot pages")
            }
            let counters = try #require(service.templateStatistics.first).counters
            #expect(counters.createdVMs == 3 && counters.recycledVMs == 0, "\(counters)")
        }
    }

    @Test("a fork's VM is reset only once its answer is handed over, or when the hand-off's limit has passed")
    func resetWaitsForTheHandOff() async throws {
        try await Self.withScene("fork-handoff") { scene in
            func waitUntil(_ condition: () -> Bool) async throws {
                let deadline = Date().addingTimeInterval(15)
                while !condition() && Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
            }
            /// Starts one invocation; returns its outcome and its hand-off, not signalled.
            func started(_ service: ForkingFunctionService, _ value: String) async throws -> ([String: Any], AnswerHandOff) {
                let (answers, answered) = AsyncStream.makeStream(of: (Result<FunctionResponse, FunctionServiceError>, AnswerHandOff).self)
                service.start(Self.request(#"{"value": "\#(value)"}"#)) { result, handOff in
                    answered.yield((result, handOff))
                    answered.finish()
                }
                var iterator = answers.makeAsyncIterator()
                let (result, handOff) = try #require(await iterator.next())
                return (try Self.result(try result.get()), handOff)
            }
            // Held: the answer came, and the VM stays out of the pool, unreset, until the hand-off.
            let held = try scene.service(pool: 1, handOffLimit: .seconds(60))
            let template = try held.template(for: "stateful")
            let (first, handOff) = try await started(held, "first")
            #expect(first["value"] as? String == "first")
            try await Task.sleep(for: .milliseconds(300))
            #expect(template.vmsOnTheirWayBack == 1 && template.statistics.recycledVMs == 0, "before the hand-off: \(template.statistics)")
            handOff.handedOver()
            try await waitUntil { template.vmsOnTheirWayBack == 0 }
            #expect(template.vmsOnTheirWayBack == 0 && template.statistics.recycledVMs == 1, "after the hand-off: \(template.statistics)")
            // Never handed over: the VM still comes back once the limit has passed.
            let limited = try scene.service(pool: 1, handOffLimit: .milliseconds(100))
            let other = try limited.template(for: "stateful")
            let (second, _) = try await started(limited, "second")
            #expect(second["value"] as? String == "second")
            try await waitUntil { other.vmsOnTheirWayBack == 0 }
            #expect(other.vmsOnTheirWayBack == 0 && other.statistics.recycledVMs == 1, "without a hand-off: \(other.statistics)")
        }
    }

    @Test("a parked VM keeps the pages its fork wrote until it idles, then is trimmed to 1 MiB; the next fork in it is correct and fresh")
    func idleVMsAreTrimmed() async throws {
        try await Self.withScene("fork-trim") { scene in
            let service = try scene.service(pool: 1, parking: .init(idleSeconds: 3))
            let template = try service.template(for: "stateful")
            func parkedBytes() throws -> Int {
                try #require(ProcessMappings.anonymousBytes(in: template.parkedMemoryRanges)).bytes
            }
            func waitUntil(_ condition: () -> Bool) async throws {
                let deadline = Date().addingTimeInterval(15)
                while !condition() && Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
            }
            // 3 MiB written and still held at the answer: the fork wrote more than 768 pages, which its VM keeps.
            let trimmedBefore = template.statistics.trimmedVMs
            let filled = try Self.result(try await service.invoke(Self.request(#"{"fill": 3}"#)))
            #expect(filled["filled"] as? Int == 3)
            try await waitUntil { template.parkedVMs == 1 && template.vmsOnTheirWayBack == 0 }
            let hot = try parkedBytes()
            // Measured before the trim (3 s after parking) unless the host was too loaded to.
            if template.statistics.trimmedVMs == trimmedBefore {
                #expect(hot > 3 << 20, "a VM parked after writing 3 MiB holds \(hot) bytes")
            }
            try await waitUntil { template.statistics.trimmedVMs > trimmedBefore }
            let idle = try parkedBytes()
            #expect(template.statistics.trimmedVMs > trimmedBefore && idle <= 1 << 20, "after idling: \(idle) bytes, \(template.statistics)")
            // The trimmed VM serves the next fork (the only one parked), as a fresh instance.
            let pooledBefore = template.statistics.pooledVMs
            let result = try Self.result(try await service.invoke(Self.request(#"{"value": "after"}"#)))
            #expect(result["value"] as? String == "after")
            let before = Self.before(result)
            #expect(before.global == nil && before.tmp == nil, "the fork after the trim saw \(before)")
            #expect(template.statistics.pooledVMs == pooledBefore + 1, "\(template.statistics)")
        }
    }

    @Test("forks never read through the mount: after its catalyzerfs daemon is killed and the page cache dropped, new VMs still serve every request")
    func forksOutliveTheirMount() async throws {
        try await Self.withScene("fork-dead-mount") { scene in
            let service = try scene.service(pool: 0)
            let first = try Self.result(try await service.invoke(Self.request(#"{"value": "before"}"#)))
            #expect(first["value"] as? String == "before")
            try scene.killMountDaemon()
            // New VMs (no pool), requests unlike the first: each page comes from the template's memory.
            for value in ["after", "ünïcødé ☃", String(repeating: "long", count: 500)] {
                let result = try Self.result(try await service.invoke(Self.request(#"{"value": "\#(value)", "extra": [1, {"a": null}]}"#)))
                #expect(result["value"] as? String == value)
            }
        }
    }

    @Test("a VM reset after a fork holds none of its data: the next fork's whole guest memory is scanned for a secret the previous one held")
    func recycledVMIsClean() async throws {
        try await Self.withScene("fork-secret") { scene in
            let service = try scene.service(pool: 1)
            let template = try service.template(for: "stateful")
            let secret = "catalyzer-secret-\(UUID().uuidString)"
            func occurrences(in fork: ForkedSandbox) -> Int {
                let memory = fork.memory
                let needle = Array(secret.utf8)
                var count = 0
                var offset = 0
                let base = UnsafeRawPointer(memory.base)
                while offset + needle.count <= memory.size,
                      let found = memchr(base + offset, Int32(needle[0]), memory.size - offset - needle.count + 1) {
                    let at = UnsafeRawPointer(found) - base
                    if memcmp(found, needle, needle.count) == 0 { count += 1 }
                    offset = at + 1
                }
                return count
            }
            var inFirst = 0
            let first = try ForkingFunctionService.runFork(of: template, request: Self.request(#"{"value": "\#(secret)"}"#),
                                                           limits: .init(), accepted: 0) { inFirst = occurrences(in: $0) }
            #expect(try Self.result(first)["value"] as? String == secret)
            #expect(inFirst > 0, "the scan must find the secret in the fork that held it")
            var inSecond = -1
            let second = try ForkingFunctionService.runFork(of: template, request: Self.request(#"{"value": "other"}"#),
                                                            limits: .init(), accepted: 0) { inSecond = occurrences(in: $0) }
            #expect(Self.before(try Self.result(second)).global == nil)
            #expect(inSecond == 0, "a secret of the previous fork is in the recycled VM's memory \(inSecond) times")
            #expect(template.statistics.pooledVMs >= 1 && template.statistics.recycledVMs >= 1, "\(template.statistics)")
        }
    }

    @Test("16 concurrent forks each answer their own event and see no other's state")
    func concurrentForks() async throws {
        try await Self.withScene("fork-concurrent") { scene in
            let service = try scene.service(pool: 4)
            let results = try await withThrowingTaskGroup(of: (Int, String?, String?, String?).self) { group in
                for index in 0..<16 {
                    group.addTask {
                        let result = try Self.result(try await service.invoke(Self.request(#"{"value": "v\#(index)"}"#)))
                        let before = Self.before(result)
                        return (index, result["value"] as? String, before.global, before.tmp)
                    }
                }
                var all: [(Int, String?, String?, String?)] = []
                for try await result in group { all.append(result) }
                return all
            }
            #expect(results.count == 16)
            for (index, value, global, tmp) in results {
                #expect(value == "v\(index)")
                #expect(global == nil && tmp == nil, "fork \(index) saw \(String(describing: global)), \(String(describing: tmp))")
            }
        }
    }

    @Test("--reuse: one instance serves several invocations in sequence and keeps its state, as a warm Lambda container does")
    func reuseKeepsState() async throws {
        try await Self.withScene("fork-reuse") { scene in
            let service = try scene.service(pool: 1, reuse: 3)
            defer { service.stopWarmInstances() }
            var previous: String?
            for (index, value) in ["a", "b", "c", "d"].enumerated() {
                let result = try Self.result(try await service.invoke(Self.request(#"{"value": "\#(value)"}"#)))
                let before = Self.before(result)
                // Invocations 1-3 share an instance; the 4th gets a fresh one.
                let expected = index % 3 == 0 ? nil : previous
                #expect(before.global == expected && before.tmp == expected, "invocation \(index) saw \(before)")
                previous = value
            }
        }
    }

    @Test("a handler error, a timeout, running out of memory and a new image version: each gets its answer, and the service keeps serving")
    func errorsTimeoutsAndNewVersions() async throws {
        try await Self.withScene("fork-errors") { scene in
            let service = try scene.service(pool: 1)
            let failed = try await service.invoke(Self.request(#"{"raise": "boom"}"#))
            guard case .handlerError(let type, let message, let trace) = failed.outcome else {
                Issue.record("expected a handler error, got \(failed.outcome)")
                return
            }
            #expect(type == "ValueError" && message == "boom" && !trace.isEmpty)

            let slow = try await service.invoke(Self.request(#"{"sleep": 30}"#, timeout: 1))
            #expect(slow.outcome == .timedOut(seconds: 1))
            let after = try Self.result(try await service.invoke(Self.request(#"{"value": "after"}"#)))
            #expect(after["value"] as? String == "after")

            // Past its memory (the image's 128 MiB): the instance fails, the service goes on.
            let greedy = try await service.invoke(Self.request(#"{"allocate": 1024}"#))
            switch greedy.outcome {
            case .handlerError(let type, _, _): #expect(type == "MemoryError")
            case .failed: break
            default: Issue.record("a fork that allocates 1 GiB in 128 MiB answered \(greedy.outcome)")
            }
            let afterGreedy = try Self.result(try await service.invoke(Self.request(#"{"value": "after-greedy"}"#)))
            #expect(afterGreedy["value"] as? String == "after-greedy")

            let old = try service.template(for: "stateful")
            try scene.scene.checkpoint("stateful", rootfs: try PythonRootfs.path(), ["/usr/bin/python3", "-c", """
                import runpy, sys
                with open("/tmp/fn.py", "w") as f:
                    f.write("def handler(event):\\n    return {'value': 'v2'}\\n")
                sys.argv = ["runner.py", "/tmp/fn.py"]
                runpy.run_path("/opt/catalyzer/runner.py", run_name="__main__")
                """])
            let new = try Self.result(try await service.invoke(Self.request(#"{"value": "x"}"#)))
            #expect(new["value"] as? String == "v2")
            #expect(try service.template(for: "stateful") !== old)
            await #expect(throws: FunctionServiceError.unknownFunction("missing")) {
                try await service.invoke(FunctionRequest(function: "missing", event: Array("{}".utf8), timeoutSeconds: 1))
            }
        }
    }
}
