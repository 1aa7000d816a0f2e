import CatalyzerKernel
import Glibc
import Testing

@Suite("isolation")
struct IsolationTests {
    @Test("escapes through .., symlinks and /proc/self/root never reach host files",
          arguments: ["/../secret.txt", "../../../../secret.txt", "/data/../../secret.txt", "/absolute-escape",
                      "/relative-escape", "/deep-escape", "/proc/self/root/secret.txt", "/proc/self/cwd/../secret.txt"])
    func pathEscapes(_ path: String) throws {
        let rootfs = try requireRootfs()
        for applet in [["cat", path], ["cat", rootfs.secretPath + path]] {
            let result = try runSandbox(["/bin/busybox"] + applet)
            #expect(!result.stdout.contains(TestRootfs.secret))
            #expect(result.status != 0)
        }
        let viaShell = try runSandbox(["/bin/busybox", "sh", "-c", "cd /data && cd .. && cd .. && cat secret.txt"])
        #expect(!viaShell.stdout.contains(TestRootfs.secret))
    }

    @Test("writes into the rootfs fail with EROFS; /tmp is writable and private")
    func readOnlyRootfs() throws {
        let rootfs = try requireRootfs()
        for command in ["echo x > /data/fruits.txt", "echo x > /new-file", "mkdir /newdir", "rm /data/words.txt",
                        "touch /data/new"] {
            let result = try runSandbox(["/bin/busybox", "sh", "-c", command])
            #expect(result.status != 0, "\(command)")
            #expect(result.stderr.contains("Read-only file system"), "\(command): \(result.stderr)")
        }
        // Shell builtins only: the sandbox has no fork, and /tmp lives as long as one sandbox.
        let tmp = try runSandbox(["/bin/busybox", "sh", "-c", """
            echo hello > /tmp/a && echo more >> /tmp/a && while read line; do echo "$line"; done < /tmp/a \
            && test -f /tmp/a && echo exists && cd /tmp && echo *
            """])
        #expect(tmp.stdout == "hello\nmore\nexists\na\n", "\(tmp.stderr)")
        #expect(access(rootfs.root + "/tmp/a", F_OK) != 0, "/tmp writes must not reach the host")
        let directories = try runSandbox(["/bin/busybox", "mkdir", "-p", "/tmp/d/e/f"])
        #expect(directories.status == 0, "\(directories.stderr)")
    }

    @Test("the memory cap holds: the guest sees ENOMEM, the host is untouched")
    func memoryCap() throws {
        let result = try runSandbox(["/bin/probe", "hog"], memory: 64 << 20)
        #expect(result.exit == .exited(status: 0), "\(result.stderr)")
        let allocated = Int(result.stdout.split(separator: " ")[1]) ?? -1
        #expect(allocated > 32 && allocated < 64, "\(result.stdout)")
    }

    @Test("/tmp is bounded by the guest memory size: writes beyond it fail with ENOSPC")
    func tmpCapacity() throws {
        let result = try runSandbox(["/bin/busybox", "dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=64"],
                                    memory: 32 << 20)
        #expect(result.status != 0)
        #expect(result.stderr.contains("No space left on device"), "\(result.stderr)")
    }

    @Test("an infinite loop hits the timeout")
    func timeout() throws {
        let result = try runSandbox(["/bin/probe", "spin"], timeout: 0.5)
        #expect(result.exit == .timedOut)
        #expect(result.status == 124)
    }

    @Test("a child process spinning forever hits the sandbox timeout too")
    func timeoutInChild() throws {
        let result = try runSandbox(["/bin/busybox", "sh", "-c", "/bin/probe spin; echo not reached"], timeout: 0.5)
        #expect(result.exit == .timedOut)
        #expect(!result.stdout.contains("not reached"))
    }

    @Test("a null-pointer write ends the program with SIGSEGV (status 139) and names the address and RIP")
    func nullWrite() throws {
        let result = try runSandbox(["/bin/probe", "null"])
        #expect(result.status == 139)
        guard case .killed(let signal, let reason) = result.exit else {
            Issue.record("expected a kill, got \(result.exit)")
            return
        }
        #expect(signal == SIGSEGV)
        #expect(reason.contains("address 0x0 ") && reason.contains("rip 0x"), "\(reason)")
    }

    @Test("10 000 random syscalls: the monitor stays up and answers every one", arguments: [1, 2, 3])
    func fuzz(_ seed: Int) throws {
        let result = try runSandbox(["/bin/probe", "fuzz", "10000", String(seed)], timeout: 120)
        #expect(result.exit == .exited(status: 0), "\(result.exit)")
        #expect(result.stdout.contains("answered 10000 syscalls"))
        #expect(result.syscallCount >= 10000)
    }

    @Test("10 000 random syscalls from 4 threads at once, blocking ones cut short by per-thread timers", arguments: [1, 2])
    func fuzzThreads(_ seed: Int) throws {
        let result = try runSandbox(["/bin/probe", "fuzz-threads", "10000", String(seed)], timeout: 120)
        #expect(result.exit == .exited(status: 0), "\(result.exit) \(result.stderr)")
        #expect(result.stdout.contains("answered 10000 syscalls from 4 threads"))
        #expect(result.syscallCount >= 10000)
    }
}
