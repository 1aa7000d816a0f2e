import CatalyzerKVM
import CatalyzerKernel
import Dispatch
import Foundation
import Glibc
import Testing

/// A test rootfs built once per test process: busybox-static, the probe program compiled with
/// `gcc -static` (and `-static-pie`, and dynamically linked), the host's dynamically linked
/// coreutils `true`, `cat` and `sort` in /usr/bin with ld.so and the libraries they need, data files, the host's passwd/group (so `ls -l` names owners like the host does),
/// and symlinks that point out of the rootfs at a secret file that must never be readable.
struct TestRootfs: Sendable {
    let directory: String
    var root: String { directory + "/rootfs" }
    var secretPath: String { directory + "/secret.txt" }
    static let secret = "HOST-SECRET-7f3a9"

    /// Built on first use and removed when the test process exits.
    static let shared: Result<TestRootfs, FixtureError> = Result { () throws(FixtureError) in
        let rootfs = try TestRootfs()
        atexit {
            if case .success(let rootfs) = TestRootfs.shared { try? FileManager.default.removeItem(atPath: rootfs.directory) }
        }
        return rootfs
    }

    struct FixtureError: Error, CustomStringConvertible { let description: String }

    private init() throws(FixtureError) {
        var template = Array((NSTemporaryDirectory() + "/catalyzer-kernel-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw FixtureError(description: "mkdtemp failed") }
        directory = String(cString: made)
        let root = directory + "/rootfs"
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("fixtures/kernel").path
        let script = """
            set -e
            mkdir -p \(root)/bin \(root)/etc \(root)/data/sub \(root)/tmp \(root)/proc
            cp /bin/busybox \(root)/bin/busybox
            cp /etc/passwd /etc/group \(root)/etc/
            printf 'banana\\napple\\ncherry\\napple\\n' > \(root)/data/fruits.txt
            printf 'the quick brown fox\\njumps over\\nthe lazy dog\\n' > \(root)/data/words.txt
            head -c 10000 /dev/zero | tr '\\0' 'x' > \(root)/data/big.txt
            ln -s fruits.txt \(root)/data/link-to-fruits
            touch -d '2024-01-02 03:04:05' \(root)/data/* \(root)/data/sub
            printf '\(TestRootfs.secret)\\n' > \(directory)/secret.txt
            ln -s \(directory)/secret.txt \(root)/absolute-escape
            ln -s ../secret.txt \(root)/relative-escape
            ln -s ../../../../../../../../\(directory)/secret.txt \(root)/deep-escape
            gcc -static -O1 -pthread -o \(root)/bin/probe \(fixtures)/probe.c
            gcc -static-pie -O1 -pthread -o \(root)/bin/probe-pie \(fixtures)/probe.c
            gcc -O1 -pthread -o \(root)/bin/probe-dynamic \(fixtures)/probe.c
            gcc -static -O1 -o \(root)/bin/fsprobe \(fixtures)/fsprobe.c
            mkdir -p \(root)/big
            head -c 20971520 /dev/urandom > \(root)/big/large.bin
            mkdir -p \(root)/usr/bin \(root)/lib64 \(root)/lib/x86_64-linux-gnu
            cp /usr/bin/true /usr/bin/cat /usr/bin/sort \(root)/usr/bin/
            ldd \(root)/bin/probe-dynamic /usr/bin/true /usr/bin/cat /usr/bin/sort | awk '/=> \\// { print $3 }' | sort -u |
              while read -r lib; do cp -L "$lib" \(root)/lib/x86_64-linux-gnu/; done
            cp -L /lib64/ld-linux-x86-64.so.2 \(root)/lib64/
            """
        let result = runHost(["/bin/sh", "-c", script], directory: "/")
        guard result.status == 0 else { throw FixtureError(description: "building the test rootfs failed: \(result.stderr)") }
    }
}

/// What a program printed and how it ended.
struct RunResult {
    let exit: SandboxExit
    let stdout: String
    let stderr: String
    var status: Int32 { exit.status }
    var syscallCount = 0
    var unimplemented: [Int: Int] = [:]
}

/// Fails the calling test loudly when /dev/kvm is missing, instead of skipping it.
func requireKVM() throws -> KVM {
    guard access("/dev/kvm", R_OK | W_OK) == 0 else {
        Issue.record("REQUIREMENT MISSING: /dev/kvm is missing or not accessible; the KVM sandbox tests cannot run here")
        throw KVMError("open /dev/kvm", errno: ENOENT)
    }
    return try KVM()
}

func requireRootfs() throws -> TestRootfs {
    switch TestRootfs.shared {
    case .success(let rootfs): return rootfs
    case .failure(let error):
        Issue.record("test rootfs unavailable: \(error)")
        throw error
    }
}

/// Runs `arguments` in a sandbox over the test rootfs with stdout/stderr captured in memfds.
func runSandbox(_ arguments: [String], memory: Int = 256 << 20, timeout: Double = 30, stdin: String? = nil,
                environment: [String] = ["TZ=UTC", "PATH=/bin"], strace: Bool = false) throws -> RunResult {
    let kvm = try requireKVM()
    let rootfs = try requireRootfs()
    let output = memfd(), errors = memfd()
    defer { close(output); close(errors) }
    let input: Int32
    if let stdin {
        input = memfd()
        _ = stdin.utf8CString.withUnsafeBufferPointer { write(input, $0.baseAddress, $0.count - 1) }
        lseek(input, 0, SEEK_SET)
    } else {
        input = open("/dev/null", O_RDONLY)
    }
    defer { close(input) }
    var configuration = SandboxConfiguration(rootDirectory: rootfs.root, memorySize: memory,
                                             programPath: arguments[0], arguments: arguments,
                                             environment: environment, traceSyscalls: strace)
    configuration.standardStreams = [input, output, errors]
    let kernel = try Sandbox(configuration: configuration, kvm: kvm)
    let requester = kernel.exitRequester
    // A queue of its own (overcommit), not the shared pool that blocked tests may saturate.
    DispatchQueue(label: "sandbox-timeout").asyncAfter(deadline: .now() + timeout) { requester.requestExit() }
    let exit = try kernel.run()
    return RunResult(exit: exit, stdout: readAll(output), stderr: readAll(errors),
                     syscallCount: kernel.syscallCount, unimplemented: kernel.unimplementedSyscalls)
}

private func memfd() -> Int32 {
    let path = NSTemporaryDirectory() + "/catalyzer-kernel-out-XXXXXX"
    var template = Array(path.utf8CString)
    let fd = mkstemp(&template)
    unlink(template)
    return fd
}

private func readAll(_ fd: Int32) -> String {
    lseek(fd, 0, SEEK_SET)
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { break }
        bytes += buffer.prefix(count)
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Runs a host program (the reference the sandbox is compared against).
func runHost(_ arguments: [String], directory: String, environment: [String: String] = ["TZ": "UTC", "PATH": "/bin"])
    -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: arguments[0])
    process.arguments = Array(arguments.dropFirst())
    process.currentDirectoryURL = URL(fileURLWithPath: directory)
    process.environment = environment
    let output = Pipe(), errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    process.standardInput = FileHandle.nullDevice
    do { try process.run() } catch { return (127, "", "\(error)") }
    let stdout = output.fileHandleForReading.readDataToEndOfFile()
    let stderr = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
}
