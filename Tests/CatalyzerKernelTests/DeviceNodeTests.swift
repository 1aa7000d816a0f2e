import CatalyzerTestSupport
import Foundation
import Glibc
import Testing
@testable import CatalyzerKernel

/// Device nodes in an operator's rootfs are never the host's devices: only the monitor's own
/// (/dev/null, zero, random, urandom) exist for the guest, any other char or block node is
/// EACCES, and writes to the random devices are accepted and dropped, never passed to the host.
@Suite("device nodes", .serialized)
struct DeviceNodeTests {
    /// A busybox rootfs with device nodes an operator might have copied in: the host's /dev/kvm
    /// (char 10,232), /dev/null (char 1,3) under another name, and /dev/loop0 (block 7,0).
    struct Rootfs {
        let directory: TemporaryDirectory
        var root: String { directory.path + "/rootfs" }

        init() throws {
            try #require(TestEnvironment.isRoot, Comment(rawValue: TestEnvironment.requirementMessage("root (to make device nodes)")))
            directory = try TemporaryDirectory("devices")
            let root = directory.path + "/rootfs"
            let made = try Command.run("/bin/sh", ["-c", """
                set -e
                mkdir -p \(root)/bin \(root)/dev \(root)/data
                cp /bin/busybox \(root)/bin/busybox
                mknod \(root)/dev/kvm-copy c 10 232
                mknod \(root)/data/null-copy c 1 3
                mknod \(root)/dev/loop-copy b 7 0
                ln -s /dev/kvm-copy \(root)/data/kvm-link
                echo plain > \(root)/data/plain.txt
                """])
            try #require(made.status == 0, "cannot build the rootfs: \(made)")
        }
    }

    @Test("opening a device node of the rootfs is EACCES, in any mode and through a symlink; stat still works")
    func rootfsDeviceNodesAreNotOpened() throws {
        let rootfs = try Rootfs()
        defer { rootfs.directory.remove() }
        let filesystem = try Filesystem(rootDirectory: rootfs.root, tmpCapacity: 1 << 20)
        for path in ["/dev/kvm-copy", "/data/null-copy", "/dev/loop-copy", "/data/kvm-link"] {
            for flags in [O_RDONLY, O_WRONLY, O_RDWR, O_RDONLY | O_NONBLOCK] {
                #expect(throws: Errno.EACCES, "\(path) flags \(flags)") { _ = try filesystem.open(path, flags: flags, mode: 0) }
            }
            #expect(try filesystem.status(path, followSymlinks: true).st_mode & S_IFMT != S_IFREG)
        }
        #expect(throws: Errno.EACCES) { _ = try filesystem.openExecutable("/dev/kvm-copy") }
        // Ordinary files and the monitor's own devices open as before.
        _ = try filesystem.open("/data/plain.txt", flags: O_RDONLY, mode: 0)
        #expect(throws: Errno.EROFS) { _ = try filesystem.open("/data/plain.txt", flags: O_WRONLY, mode: 0) }
        _ = try filesystem.open("/dev/null", flags: O_RDWR, mode: 0)
    }

    @Test("the random devices take writes without passing them to the host")
    func randomDeviceWritesStayInTheMonitor() throws {
        let rootfs = try Rootfs()
        defer { rootfs.directory.remove() }
        let filesystem = try Filesystem(rootDirectory: rootfs.root, tmpCapacity: 1 << 20)
        for path in ["/dev/urandom", "/dev/random"] {
            for flags in [O_WRONLY, O_RDWR] {
                let file = try filesystem.open(path, flags: flags, mode: 0)
                guard case .host(let fd, _) = file.backing else {
                    Issue.record("\(path) is not a host device")
                    continue
                }
                #expect(fcntl(fd, F_GETFL) & O_ACCMODE == O_RDONLY, "the host fd of \(path) must be read-only")
                #expect(file.discardsWrites && file.isWritable)
            }
        }
        #expect(try !filesystem.open("/dev/null", flags: O_WRONLY, mode: 0).discardsWrites)
    }

    @Test("in a sandbox: cat of a copied /dev/kvm is refused, urandom takes writes and still gives bytes")
    func inASandbox() throws {
        try #require(TestEnvironment.hasKVM, Comment(rawValue: TestEnvironment.requirementMessage("/dev/kvm")))
        let rootfs = try Rootfs()
        defer { rootfs.directory.remove() }
        let script = """
            cat /dev/kvm-copy; echo "kvm $?"
            cat /dev/loop-copy; echo "loop $?"
            echo x > /data/null-copy; echo "null-copy $?"
            echo entropy > /dev/urandom; echo "urandom $?"
            head -c 16 /dev/urandom | wc -c
            """
        let result = try Command.bounded(60, Command.binary("catalyzer"),
                                         ["run", "--rootfs", rootfs.root, "--memory", "32M", "--", "/bin/busybox", "sh", "-c", script])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == "kvm 1\nloop 1\nnull-copy 1\nurandom 0\n16\n", "\(result)")
        #expect(result.stderr.components(separatedBy: "Permission denied").count == 4, "\(result)")
    }
}
