import CatalyzerKernel
import CatalyzerKVM
import Glibc

/// Measurements of the sandbox against the host: the syscall trap round trip, the guest's
/// first-touch cost per page, and start-to-exit of a program. Each yields samples in nanoseconds;
/// callers print median and p99 and the ratio to the host baseline.
public enum SandboxBenchmark {
    public struct Row: Sendable {
        public let name: String
        public let sandbox: [Double]
        /// Host samples for the same work, if a baseline exists.
        public let host: [Double]?
    }

    /// Round trip of a trapped `syscall` (a getpid loop answered by the monitor) vs. host getpid.
    public static func syscallRoundTrip(iterations: Int = 5000) throws -> Row {
        // loop: mov eax, 39; syscall; jmp loop
        let guest = try MicroGuest(code: [0xB8, 39, 0, 0, 0, 0x0F, 0x05, 0xEB, 0xF7], dataPages: 0)
        var samples: [Double] = []
        for _ in 0..<iterations {
            let start = now()
            guard try guest.cpu.run() == .syscall else { throw KVMError("benchmark guest did not trap", errno: EIO) }
            guest.cpu.registers.rax = 1
            samples.append(now() - start)
        }
        let host = (0..<iterations).map { _ -> Double in
            let start = now()
            _ = getpid()  // glibc does not cache getpid: this is a real syscall
            return now() - start
        }
        return Row(name: "syscall round trip", sandbox: samples, host: host)
    }

    /// Guest first write to a fresh page (shadow-paging fault, no monitor exit) vs. host first touch.
    public static func firstTouch(pages: Int = 4096, runs: Int = 5) throws -> Row {
        var sandbox: [Double] = [], host: [Double] = []
        for _ in 0..<runs {
            // mov rbx, DATA; mov ecx, pages; loop: mov [rbx], al; add rbx, 4096; dec ecx; jnz loop; syscall
            let base = MicroGuest.dataAddress
            var code: [UInt8] = [0x48, 0xBB] + withUnsafeBytes(of: base.littleEndian) { Array($0) }
            code += [0xB9] + withUnsafeBytes(of: UInt32(pages).littleEndian) { Array($0) }
            code += [0x88, 0x03, 0x48, 0x81, 0xC3, 0x00, 0x10, 0x00, 0x00, 0xFF, 0xC9, 0x75, 0xF3, 0x0F, 0x05]
            let guest = try MicroGuest(code: code, dataPages: pages)
            let start = now()
            guard try guest.cpu.run() == .syscall else { throw KVMError("benchmark guest did not trap", errno: EIO) }
            sandbox.append((now() - start) / Double(pages))

            let length = pages * 4096
            guard let region = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                  region != MAP_FAILED else { continue }
            let hostStart = now()
            for page in 0..<pages { region.storeBytes(of: 1, toByteOffset: page * 4096, as: UInt8.self) }
            host.append((now() - hostStart) / Double(pages))
            munmap(region, length)
        }
        return Row(name: "first touch per page", sandbox: sandbox, host: host)
    }

    /// Start-to-exit of `configuration`'s program in a fresh sandbox (VM creation, ELF load, run)
    /// vs. `posix_spawn` of the same binary on the host. Its output goes to /dev/null.
    public static func startToExit(_ configuration: SandboxConfiguration, runs: Int = 20) throws -> Row {
        let devNull = open("/dev/null", O_RDWR)
        defer { close(devNull) }
        var configuration = configuration
        configuration.standardStreams = [devNull, devNull, devNull]
        let kvm = try KVM()
        var sandbox: [Double] = []
        for _ in 0..<runs {
            let start = now()
            let kernel = try Sandbox(configuration: configuration, kvm: kvm)
            _ = try kernel.run()
            sandbox.append(now() - start)
        }
        let hostPath = configuration.rootDirectory + "/" + configuration.programPath
        var host: [Double] = []
        for _ in 0..<runs {
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            for fd: Int32 in 0...2 { posix_spawn_file_actions_adddup2(&actions, devNull, fd) }
            defer { posix_spawn_file_actions_destroy(&actions) }
            let argv = configuration.arguments.map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            let start = now()
            var pid: pid_t = 0
            guard posix_spawn(&pid, hostPath, &actions, nil, argv, nil) == 0 else { break }
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            host.append(now() - start)
        }
        return Row(name: "start to exit", sandbox: sandbox, host: host.isEmpty ? nil : host)
    }

    private static func now() -> Double { Double(Sandbox.monotonicNanoseconds()) }
}

/// A bare user-mode guest for micro-benchmarks: one code page at 0x400000, a stack page, and
/// `dataPages` writable pages at `dataAddress`, all mapped before it runs.
private struct MicroGuest {
    static let codeAddress: UInt64 = 0x40_0000
    static let dataAddress: UInt64 = 0x1000_0000
    static let stackTop: UInt64 = 0x80_0000
    let cpu: UserModeCPU

    init(code: [UInt8], dataPages: Int) throws {
        let memory = try GuestMemory(size: (dataPages + 1024) * GuestMemory.pageSize)
        let allocator = PhysicalPageAllocator(memory: memory)
        let pageTables = PageTables(memory: memory, allocator: allocator)
        cpu = try UserModeCPU(vm: try VM(kvm: try KVM(), memory: memory), pageTables: pageTables)
        func page() throws -> UInt64 {
            guard let page = allocator.allocate() else { throw KVMError("benchmark guest memory", errno: ENOMEM) }
            return page
        }
        let codePage = try page()
        memory.write(code, at: codePage)
        try pageTables.map(virtual: Self.codeAddress, physical: codePage, flags: [.user])
        try pageTables.map(virtual: Self.stackTop - 4096, physical: try page(), flags: [.user, .writable, .noExecute])
        for index in 0..<dataPages {
            try pageTables.map(virtual: Self.dataAddress + UInt64(index * 4096), physical: try page(),
                               flags: [.user, .writable, .noExecute])
        }
        cpu.registers.rip = Self.codeAddress
        cpu.registers.rsp = Self.stackTop
    }
}
