import CatalyzerKernel
import Testing

@Suite("syscall accounting")
struct StraceTests {
    @Test("unimplemented syscalls answer ENOSYS and are counted")
    func unimplementedAreCounted() throws {
        // glibc registers rseq (334) at startup; the sandbox does not implement it.
        let result = try runSandbox(["/bin/busybox", "true"])
        #expect(result.status == 0)
        #expect(result.unimplemented[334] == 1)
        #expect(result.syscallCount > 5)
    }

    @Test("--strace prints each syscall with arguments and result")
    func straceLines() throws {
        let result = try runSandbox(["/bin/busybox", "cat", "/data/fruits.txt", "/missing"], strace: true)
        #expect(result.stderr.contains(#"openat(AT_FDCWD, "/data/fruits.txt", 0, 00) = 3"#), "\(result.stderr)")
        #expect(result.stderr.contains(#"openat(AT_FDCWD, "/missing", 0, 00) = -1 ENOENT (No such file or directory)"#))
        #expect(result.stderr.contains("syscall_334("))
        #expect(result.stderr.contains("exit_group(1) = 0"))
    }
}
