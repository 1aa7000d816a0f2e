import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// Debian's containerd, started here with its own root, state and sockets under a temporary
/// directory (the CRI plugin off), and `ctr run --runc-binary` pointing at catalyzer-runtime:
/// containerd's runc v2 shim drives our binary as it drives runc. `--rootfs` hands ctr the Python
/// function rootfs directly, so no image is imported.
@Suite("OCI runtime under containerd", .serialized)
struct ContainerdTests {
    final class Containerd {
        let directory: TemporaryDirectory
        let address: String
        private let pid: pid_t

        init() throws {
            try #require(TestEnvironment.isRoot && TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("root and /dev/kvm")))
            for binary in ["/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/containerd-shim-runc-v2"] {
                try #require(FileManager.default.isExecutableFile(atPath: binary),
                             Comment(rawValue: TestEnvironment.requirementMessage("\(binary) (Debian's containerd; Scripts/bootstrap.sh installs it)")))
            }
            directory = try TemporaryDirectory("containerd")
            address = directory.file("containerd.sock")
            let config = """
                version = 2
                root = "\(directory.file("root"))"
                state = "\(directory.file("state"))"
                disabled_plugins = ["io.containerd.grpc.v1.cri"]
                [grpc]
                  address = "\(address)"
                [ttrpc]
                  address = "\(address).ttrpc"
                """
            try config.write(toFile: directory.file("config.toml"), atomically: true, encoding: .utf8)
            pid = try Command.background("/usr/bin/containerd", ["--config", directory.file("config.toml")], log: directory.file("containerd.log"))
            var ready = false
            for _ in 0..<100 where !ready {
                ready = (try? ctr(["version"], timeout: 10))?.status == 0
                if !ready { usleep(100_000) }
            }
            if !ready { close() }
            try #require(ready, "containerd did not answer on \(address): \((try? String(contentsOfFile: directory.file("containerd.log"), encoding: .utf8)) ?? "")")
        }

        func ctr(_ arguments: [String], timeout: Double = 120) throws -> CommandResult {
            try Command.spawned(timeout, "/usr/bin/ctr", ["--address", address] + arguments)
        }

        /// `ctr run --rm --runc-binary catalyzer-runtime [FLAGS] --rootfs ROOTFS ID ARGS` (with
        /// `--rootfs`, the directory is the first positional argument).
        func run(_ id: String, rootfs: String, flags: [String] = [], _ arguments: [String]) throws -> CommandResult {
            try ctr(["run", "--rm", "--runc-binary", Command.binary("catalyzer-runtime")] + flags + ["--rootfs", rootfs, id] + arguments)
        }

        /// Stops containerd and any shim it left (shims detach from it and outlive it).
        func close() {
            _ = Glibc.kill(pid, SIGTERM)
            var status: Int32 = 0
            let deadline = Date().addingTimeInterval(10)
            while waitpid(pid, &status, WNOHANG) == 0 {
                if Date() > deadline { _ = Glibc.kill(pid, SIGKILL); waitpid(pid, &status, 0); break }
                usleep(20_000)
            }
            _ = try? Command.spawned(10, "/usr/bin/pkill", ["-KILL", "-f", "containerd-shim-runc-v2 .*-address \(address)"])
            directory.remove()
        }
    }

    @Test("ctr run --runc-binary: through the runc v2 shim a container runs to completion in a sandbox, with its output, env, memory limit and exit status, and a writable root that never reaches the rootfs")
    func runToCompletion() throws {
        let containerd = try Containerd()
        defer { containerd.close() }
        let rootfs = try PythonRootfs.path()
        let script = """
            import os, sys
            print('hello', os.environ['GREETING'], sys.argv[1:], os.uname().release.endswith('-catalyzer'), os.getpid())
            print(open('/proc/meminfo').readline().split()[1])
            sys.stderr.write('to stderr\\n')
            sys.exit(3)
            """
        let result = try containerd.run("hello", rootfs: rootfs, flags: ["--read-only", "--env", "GREETING=ctr", "--memory-limit", "\(200 << 20)"],
                                        ["/usr/bin/python3", "-c", script, "a b", "c"])
        // The guest's uname says it ran in our sandbox, not under runc; its memory is the limit.
        #expect(result.status == 3, "\(result)")
        #expect(result.stdout == "hello ctr ['a b', 'c'] True 1\n\(200 << 10)\n", "\(result)")
        #expect(result.stderr.contains("to stderr"), "\(result)")
        // Without --read-only the root is writable, in memory: writes read back, the rootfs is untouched.
        let writer = "import os; open('/opt/written', 'w').write('w'); os.unlink('/etc/group'); print(sorted(os.listdir('/opt')), os.path.exists('/etc/group'))"
        let writable = try containerd.run("writable", rootfs: rootfs, ["/usr/bin/python3", "-c", writer])
        #expect(writable.status == 0 && writable.stdout.hasPrefix("[") && writable.stdout.contains("'written'") && writable.stdout.hasSuffix("False\n"),
                "\(writable)")
        #expect(!FileManager.default.fileExists(atPath: rootfs + "/opt/written") && FileManager.default.fileExists(atPath: rootfs + "/etc/group"))
        // --rm removed them: containerd lists no container.
        let listed = try containerd.ctr(["containers", "ls", "-q"])
        #expect(listed.status == 0 && listed.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(listed)")
    }

    @Test("ctr run --net-host and --privileged are refused at create, naming the field, and leave no container")
    func refusals() throws {
        let containerd = try Containerd()
        defer { containerd.close() }
        let rootfs = try PythonRootfs.path()
        let host = try containerd.run("host-net", rootfs: rootfs, flags: ["--read-only", "--net-host"], ["/usr/bin/python3", "-c", "print(1)"])
        #expect(host.status != 0 && host.stderr.contains("linux.namespaces") && !host.stdout.contains("1"), "\(host)")
        let privileged = try containerd.run("privileged", rootfs: rootfs, flags: ["--read-only", "--privileged"], ["/usr/bin/python3", "-c", "print(1)"])
        #expect(privileged.status != 0 && privileged.stderr.contains("linux."), "\(privileged)")
        let listed = try containerd.ctr(["containers", "ls", "-q"])
        #expect(listed.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(listed)")
    }
}
