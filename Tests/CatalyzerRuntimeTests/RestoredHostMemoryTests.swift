import CatalyzerTestSupport
import Foundation
import Testing

/// A restored instance is bounded by its image's memory size like a cold run: its private copies
/// of image pages and every forked child's guest RAM count against it.
@Suite("restored instances: host memory bounded", .serialized)
struct RestoredHostMemoryTests {
    @Test("a fork chain (20 nested forks after touching 100 MiB) in a restored 256 MiB function stops at ENOMEM within 256 MiB of host memory")
    func restoredForkChain() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("fork-chain")
        defer { scene.close() }
        let function = ["/usr/bin/python3", "-c", """
            import os, sys
            for line in sys.stdin:
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
            """]
        try scene.checkpoint("fork-chain", rootfs: rootfs, memory: "256M", function)
        let footprint = try HostFootprint.measure(60, Command.binary("catalyzer"), ["invoke", "fork-chain", "--input", "x", "--timeout", "30s"],
                                                  environment: scene.environment)
        #expect(footprint.result.status == 0, "\(footprint)")
        #expect(footprint.result.stdout == "fork failed at depth 1 12\ndepth 1\n", "\(footprint)")
        #expect(footprint.peakBytes <= (256 << 20) + (32 << 20), "\(footprint)")
        #expect(footprint.wallSeconds < 10, "\(footprint)")
    }

    @Test("--timeout stops a restored instance running a fork bomb within 0.5 s")
    func restoredForkBombTimesOut() throws {
        let rootfs = try PythonRootfs.path()
        let scene = try RestoreScene("fork-bomb")
        defer { scene.close() }
        let function = ["/usr/bin/python3", "-c", """
            import os, sys, time
            for line in sys.stdin:
                print(time.monotonic(), flush=True)
                while True:
                    try: os.fork()
                    except OSError: pass
            """]
        try scene.checkpoint("fork-bomb", rootfs: rootfs, memory: "256M", function)
        _ = try scene.invoke("fork-bomb", input: "warm", options: ["--timeout", "1s"])  // mounts the store
        let footprint = try HostFootprint.measure(60, Command.binary("catalyzer"), ["invoke", "fork-bomb", "--input", "x", "--timeout", "2s"],
                                                  environment: scene.environment)
        // The guest prints its monotonic time (the host's: this host's clock is not behind the
        // checkpoint's) when the request arrives, just after the timeout started counting.
        #expect(footprint.result.status == 124, "\(footprint)")
        let elapsed = footprint.secondsFromGuestStartToExit
        #expect(elapsed != nil && elapsed! < 2.5, "\(footprint)")
        #expect(footprint.wallSeconds < 4, "\(footprint)")
        #expect(footprint.peakBytes <= (256 << 20) + (32 << 20), "\(footprint)")
    }
}
