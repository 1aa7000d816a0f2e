import Glibc

/// What to run in a sandbox and with which limits.
public struct SandboxConfiguration: Sendable {
    /// Host directory that becomes the guest's `/`, read-only (see `writableRoot`).
    public var rootDirectory: String
    /// Guest RAM in bytes: the hard cap on everything the program and its page tables use.
    public var memorySize: Int
    /// The guest path of the program; resolved inside the rootfs.
    public var programPath: String
    /// argv, including argv[0].
    public var arguments: [String]
    /// envp entries, `KEY=VALUE`.
    public var environment: [String]
    /// Print every syscall with its arguments and result to stderr.
    public var traceSyscalls: Bool
    /// The guest's initial working directory.
    public var workingDirectory = "/"
    /// Host fds that become the guest's stdin, stdout and stderr (the monitor's own by default).
    public var standardStreams: [Int32] = [0, 1, 2]
    /// Run to the program's ready point and stop there for a checkpoint: the first read of stdin,
    /// or wait for it alone, that finds no data ends the run with `.readyPoint` instead of blocking,
    /// and the rootfs files the program uses until then are recorded (`RootfsFingerprint`).
    public var stopsAtReadyPoint = false
    /// Bounds on threads and processes (`--max-tasks`).
    public var limits = SandboxLimits()
    /// Where the program may connect beyond the sandbox (`--net-allow`, `--dns`): nowhere by default.
    public var network = NetworkPolicy.none
    /// Mounts beyond the built-in ones (/tmp, /dev/shm, /proc, the devices), as a container
    /// engine asks for them: more in-memory directories, and read-only files. A sandbox with any
    /// cannot be checkpointed yet.
    public var mounts: [SandboxMount] = []
    /// What uname and gethostname report (default "catalyzer").
    public var hostName: String?
    /// Who the program runs as (real, effective and saved IDs alike): root by default. The IDs
    /// are what getuid and friends report and who owns the files it creates; they are not an
    /// isolation boundary inside the sandbox (permission bits are not enforced between its
    /// users), the sandbox itself is.
    public var user = SandboxUser()
    /// Makes `/` writable through an in-memory upper layer over the read-only rootfs
    /// (`RootOverlay`), as a container engine's writable root; what is written counts against
    /// `memorySize`. Off for functions, whose root stays read-only. A sandbox with a writable
    /// root cannot be checkpointed yet.
    public var writableRoot = false

    public init(rootDirectory: String, memorySize: Int = 256 << 20, programPath: String, arguments: [String],
                environment: [String] = [], traceSyscalls: Bool = false) {
        self.rootDirectory = rootDirectory
        self.memorySize = memorySize
        self.programPath = programPath
        self.arguments = arguments
        self.environment = environment
        self.traceSyscalls = traceSyscalls
    }
}

extension SandboxConfiguration {
    /// The guest path of `program`: a bare name is looked up on the environment's PATH (else
    /// `defaultSearchPath`) inside `rootfs`, as a shell or runc's init would; a path is made absolute.
    public static func resolveProgram(_ program: String, rootfs: String, environment: [String], defaultSearchPath: String = "") -> String {
        guard !program.contains("/") else { return program.hasPrefix("/") ? program : "/" + program }
        let path = environment.last { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) } ?? defaultSearchPath
        for directory in path.split(separator: ":") where access(rootfs + "/" + directory + "/" + program, X_OK) == 0 {
            return directory + "/" + program
        }
        return "/" + program
    }
}

/// A mount a sandbox adds to its rootfs view.
public enum SandboxMount: Sendable, Equatable {
    /// An empty in-memory directory at a guest path (a tmpfs), its bytes charged to the sandbox's
    /// memory like /tmp's.
    case memory(path: String)
    /// A read-only file at a guest path with these contents (a bind-mounted file, read when the
    /// sandbox is made: the engine's /etc/hosts, /etc/resolv.conf, /etc/hostname).
    case file(path: String, contents: [UInt8])

    public var path: String {
        switch self {
        case .memory(let path), .file(let path, _): path
        }
    }
}

/// What a restored sandbox gets from its invocation rather than from the checkpoint.
public struct RestoreOptions: Sendable {
    /// Host fds that become the guest's stdin, stdout and stderr.
    public var standardStreams: [Int32] = [0, 1, 2]
    public var traceSyscalls = false
    public var limits = SandboxLimits()
    /// Skip the check of the rootfs against the checkpoint's fingerprint: the caller checked it
    /// already (a template checks once, and every sandbox forked from it shares the result).
    public var rootfsVerified = false
    /// Where the restored program may connect beyond the sandbox: nil for the policy recorded
    /// with the checkpoint (the runtime fills it in), or what the invocation set instead. Sockets
    /// that were connected outside at the checkpoint come back reset whatever it says.
    public var network: NetworkPolicy?
    /// The rootfs to restore against, instead of the one the checkpoint recorded (a container
    /// engine mounts the container's root afresh for a restore).
    public var rootDirectory: String?
    /// Bound files to add again (`SandboxMount.file`: an engine's /etc/hosts and the like); the
    /// checkpoint's in-memory mounts come back from it, with their contents.
    public var mounts: [SandboxMount] = []

    public init() {}
}

/// How a sandboxed program ended.
public enum SandboxExit: Equatable, Sendable {
    case exited(status: Int32)
    /// Killed by a signal, as Linux would (e.g. SIGSEGV on an unresolvable fault).
    case killed(signal: Int32, reason: String)
    /// Stopped by the monitor after the timeout.
    case timedOut
    /// Stopped at the ready point (see `SandboxConfiguration.stopsAtReadyPoint`), inside its
    /// read of stdin, ready to be checkpointed.
    case readyPoint

    /// The shell-style exit status catalyzer reports: the status, 128+signal, or 124 on timeout.
    public var status: Int32 {
        switch self {
        case .exited(let status): return status
        case .killed(let signal, _): return 128 + signal
        case .timedOut: return 124
        case .readyPoint: return 0
        }
    }
}

/// The user, group and supplementary groups a sandbox's program runs as.
public struct SandboxUser: Sendable, Equatable {
    public var uid: UInt32
    public var gid: UInt32
    public var groups: [UInt32]

    public init(uid: UInt32 = 0, gid: UInt32 = 0, groups: [UInt32] = []) {
        self.uid = uid
        self.gid = gid
        self.groups = groups
    }
}

/// The user and group the program runs as (root inside its own sandbox, like a container), with
/// Linux's real, effective and saved IDs and supplementary groups. They decide who owns the files
/// it creates in /tmp; the sandbox boundary, not these IDs, is what isolates it from the host.
struct Credentials {
    /// The real IDs (getuid, getgid).
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    var effectiveUID: UInt32 = 0
    var effectiveGID: UInt32 = 0
    var savedUID: UInt32 = 0
    var savedGID: UInt32 = 0
    var groups: [UInt32] = []

    init(uid: UInt32 = 0, gid: UInt32 = 0) {
        self.uid = uid
        self.gid = gid
        effectiveUID = uid
        effectiveGID = gid
        savedUID = uid
        savedGID = gid
    }

    init(_ user: SandboxUser) {
        self.init(uid: user.uid, gid: user.gid)
        groups = user.groups
    }

    /// Root may change any ID (CAP_SETUID, CAP_SETGID); others only among their own.
    var isPrivileged: Bool { effectiveUID == 0 }

    /// The owner of files it creates: its effective IDs.
    var fileOwner: Credentials { Credentials(uid: effectiveUID, gid: effectiveGID) }

    /// Whether a checkpoint's real uid and gid say everything (no changed effective or saved
    /// IDs, no supplementary groups).
    var isPlain: Bool {
        effectiveUID == uid && savedUID == uid && effectiveGID == gid && savedGID == gid && groups.isEmpty
    }
}
