import Foundation
import Testing

/// The vDSO's clock_gettime: answered in guest user mode (no trap), monotonic, and in step with
/// the host's clocks, including across sleeps served by the monitor.
@Suite("vDSO clocks")
struct VirtualDSOTests {
    @Test("python's clocks are read without syscalls, never go back and agree with the host")
    func clocksInGuest() throws {
        let script = """
            import sys, time
            start = time.time()
            last = time.monotonic()
            for _ in range(200000):
                now = time.monotonic()
                assert now >= last, (now, last)
                last = now
            before = time.monotonic()
            time.sleep(0.05)
            slept = time.monotonic() - before
            print(abs(start - float(sys.argv[1])) < 5, 0.05 <= slept < 1, time.perf_counter() > 0)
            """
        let result = try PythonTests.sandbox(["/usr/bin/python3", "-c", script, String(Date().timeIntervalSince1970)],
                                             options: ["--strace"])
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        #expect(result.stdout == "True True True\n")
        let trapped = result.stderr.split(separator: "\n").filter { $0.hasPrefix("clock_gettime(") }
        #expect(trapped.isEmpty, "clock_gettime trapped \(trapped.count) times")
    }
}
