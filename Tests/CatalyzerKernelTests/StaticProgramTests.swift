import CatalyzerKernel
import Glibc
import Testing

/// The probe program (`Tests/fixtures/kernel/probe.c`, built with `gcc -static`).
@Suite("static C program")
struct StaticProgramTests {
    @Test("mallocs and fills 100 MiB, reads files, getrandom, clock_gettime, exits with the chosen code",
          arguments: [0, 7, 42])
    func workload(_ code: Int32) throws {
        let result = try runSandbox(["/bin/probe", "workload", String(code)])
        #expect(result.exit == .exited(status: code), "stderr: \(result.stderr)")
        #expect(result.stdout.contains("filled 100 MiB"))
        #expect(result.stdout.contains("read: banana\nread: apple\nread: cherry\nread: apple\n"))
        #expect(result.stdout.contains("getrandom: ok"))
        #expect(result.stdout.contains("clock_gettime: ok"))
    }

    @Test("mprotect and munmap of a touched page take effect: the next write faults", arguments: ["readonly", "unmapped"])
    func narrowedMappingsFault(_ mode: String) throws {
        let result = try runSandbox(["/bin/probe", mode])
        #expect(result.status == 139, "\(result.exit)")
    }

    @Test("mremap moves contents; a new mapping at a reused address reads as zero")
    func remap() throws {
        let result = try runSandbox(["/bin/probe", "remap"])
        #expect(result.exit == .exited(status: 0), "\(result.exit)")
        #expect(result.stdout == "remap ok\n")
    }

    @Test("statx agrees with stat")
    func statx() throws {
        let result = try runSandbox(["/bin/probe", "statx"])
        #expect(result.stdout == "statx agrees size 26\n", "\(result.stderr)")
    }

    @Test("a static-pie build of the same program runs the same")
    func staticPie() throws {
        let result = try runSandbox(["/bin/probe-pie", "workload", "5"])
        #expect(result.exit == .exited(status: 5), "\(result.stderr)")
        #expect(result.stdout.contains("getrandom: ok"))
    }
}
