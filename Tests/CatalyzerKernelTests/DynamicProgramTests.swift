import CatalyzerKernel
import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// Dynamically linked programs: the sandbox loads `/lib64/ld-linux-x86-64.so.2` from the rootfs as
/// the program's interpreter, and ld.so maps libc with file-backed `mmap`, `MAP_FIXED` segments,
/// `mprotect` (RELRO) and partial `munmap`.
@Suite("dynamically linked programs")
struct DynamicProgramTests {
    @Test("the probe built without -static runs its workload through ld.so and libc.so.6", arguments: [0, 9])
    func dynamicProbe(_ code: Int32) throws {
        let result = try runSandbox(["/bin/probe-dynamic", "workload", String(code)])
        #expect(result.exit == .exited(status: code), "stderr: \(result.stderr)")
        #expect(result.stdout.contains("filled 100 MiB"))
        #expect(result.stdout.contains("read: banana\nread: apple\nread: cherry\nread: apple\n"))
        #expect(result.stdout.contains("getrandom: ok"))
    }

    @Test("mprotect, munmap and mremap behave the same in a dynamic program", arguments: ["readonly", "unmapped", "remap"])
    func memoryCalls(_ mode: String) throws {
        let result = try runSandbox(["/bin/probe-dynamic", mode])
        if mode == "remap" {
            #expect(result.exit == .exited(status: 0) && result.stdout == "remap ok\n", "\(result.exit) \(result.stderr)")
        } else {
            #expect(result.status == 139, "\(result.exit)")
        }
    }

    @Test("the host's dynamically linked coreutils print what they print on the host",
          arguments: [["/usr/bin/true"], ["/usr/bin/cat", "data/fruits.txt", "data/words.txt"],
                      ["/usr/bin/sort", "-r", "data/fruits.txt"]])
    func coreutils(_ command: [String]) throws {
        let rootfs = try requireRootfs()
        // Relative paths name the same files: the host runs in the rootfs directory, the guest in /.
        let host = runHost([rootfs.root + command[0]] + command.dropFirst(), directory: rootfs.root)
        let result = try runSandbox(command)
        #expect(result.exit == .exited(status: host.status), "\(result.stderr)")
        #expect(result.stdout == host.stdout)
    }

    @Test("a program whose interpreter is missing fails to start with ENOENT")
    func missingInterpreter() throws {
        let kvm = try requireKVM()
        let rootfs = try requireRootfs()
        let configuration = SandboxConfiguration(rootDirectory: rootfs.root + "/bin", programPath: "/probe-dynamic",
                                                 arguments: ["probe-dynamic"])
        #expect(throws: Errno(ENOENT)) { _ = try Sandbox(configuration: configuration, kvm: kvm) }
    }

    @Test("loading executables and interpreters with corrupted ELF headers fails cleanly, never crashes the monitor")
    func corruptedHeaders() throws {
        let kvm = try requireKVM()
        let rootfs = try requireRootfs()
        let original = try Data(contentsOf: URL(fileURLWithPath: rootfs.root + "/bin/probe-dynamic"))
        let interpreter = try Data(contentsOf: URL(fileURLWithPath: rootfs.root + "/lib64/ld-linux-x86-64.so.2"))
        let directory = try TemporaryDirectory("corrupt-elf")
        defer { directory.remove() }
        try FileManager.default.createDirectory(atPath: directory.file("lib64"), withIntermediateDirectories: true)
        var generator = SystemRandomNumberGenerator()
        for round in 0..<60 {
            var program = original, loader = interpreter
            // Corrupt the header and program headers (the first 1 KiB) of one of the two files.
            for _ in 0..<Int.random(in: 1...8, using: &generator) {
                let index = Int.random(in: 0..<1024, using: &generator)
                let value = UInt8.random(in: 0...255, using: &generator)
                if round % 2 == 0 { program[index] = value } else { loader[index] = value }
            }
            try program.write(to: URL(fileURLWithPath: directory.file("program")))
            try loader.write(to: URL(fileURLWithPath: directory.file("lib64/ld-linux-x86-64.so.2")))
            let configuration = SandboxConfiguration(rootDirectory: directory.path, memorySize: 8 << 20,
                                                     programPath: "/program", arguments: ["program"])
            _ = try? Sandbox(configuration: configuration, kvm: kvm)
        }
    }
}
