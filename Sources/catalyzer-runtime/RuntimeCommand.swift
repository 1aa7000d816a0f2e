import ArgumentParser
import CatalyzerKernel
import CatalyzerOCI
import CatalyzerRuntime
import Foundation
import Glibc

/// `catalyzer-runtime`: an OCI runtime (the command line runc has) whose containers are
/// Catalyzer sandboxes. A container's process is a monitor process running the sandbox: the
/// engine (podman through conmon, containerd's shim) sees it as the container's init, gets its
/// exit status from it, and signals it; the monitor forwards signals to the guest.
struct RuntimeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catalyzer-runtime",
        abstract: "An OCI runtime whose containers run in Catalyzer sandboxes.",
        discussion: """
            Global flags, before the command: --root DIR (state; default /run/catalyzer-runtime), --log FILE, \
            --log-format text|json; --systemd-cgroup, --debug and --rootless VALUE are accepted and have no effect. \
            A bundle's config.json is checked at create: what a sandbox cannot honour (\
            the host's namespaces, devices, directory bind mounts) is refused, naming the field. A writable root \
            (root.readonly false) is an in-memory layer over root.path, which is never written.
            """,
        subcommands: [Create.self, Start.self, Run.self, State.self, Kill.self, Delete.self, List.self, Ps.self, Features.self,
                      Exec.self, Checkpoint.self, Restore.self, Init.self, ExecProcess.self])

    static var store: ContainerStore { ContainerStore(root: RuntimeGlobals.current.root) }

    /// Runs `body`; a failure is logged (stderr and --log) and exits 1.
    static func guarded(_ body: () throws -> Void) {
        do {
            try body()
        } catch let exit as ExitCode {
            Foundation.exit(exit.rawValue)
        } catch {
            RuntimeLog.fail(String(describing: error))
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a container from a bundle; its process waits for start.")
        @OptionGroup var options: CreateOptions
        @Argument(help: "The container id.") var id: String

        func run() {
            RuntimeCommand.guarded { _ = try options.create(id: id) }
        }
    }

    struct Start: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a created container's process.")
        @Argument(help: "The container id.") var id: String

        func run() {
            RuntimeCommand.guarded { try ContainerLauncher.start(id: id) }
        }
    }

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create and start a container; without --detach, wait for it and exit with its status.")
        @OptionGroup var options: CreateOptions
        @Flag(name: [.customLong("detach"), .customShort("d")], help: "Return once the container runs.") var detach = false
        @Argument(help: "The container id.") var id: String

        func run() {
            RuntimeCommand.guarded {
                let child = try options.create(id: id)
                try ContainerLauncher.start(id: id)
                guard !detach else { return }
                // The monitor is our child: its status is the container's.
                var status: Int32 = 0
                while waitpid(child, &status, 0) < 0 && errno == EINTR {}
                RuntimeCommand.store.remove(id)
                ContainerLauncher.exit(withStatusOf: status)
            }
        }
    }

    struct State: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a container's state as the OCI runtime spec defines it.")
        @Argument(help: "The container id.") var id: String

        func run() {
            RuntimeCommand.guarded {
                let store = RuntimeCommand.store
                let state = store.state(of: try store.load(id))
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(state), as: UTF8.self))
            }
        }
    }

    struct Kill: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send a signal (default SIGTERM) to a container's process, which forwards it to the guest.")
        @Flag(name: [.customLong("all"), .customShort("a")], help: "Every process of the container (the sandbox's are all behind one).") var all = false
        @Argument(help: "The container id.") var id: String
        @Argument(help: "The signal: a name (TERM, SIGTERM) or a number.") var signal = "SIGTERM"

        func run() {
            RuntimeCommand.guarded {
                let store = RuntimeCommand.store
                let record = try store.load(id)
                let status = store.status(of: record)
                guard status == "created" || status == "running" else {
                    throw ContainerError.wrongState(id: id, status: status, wanted: "created or running")
                }
                guard let number = Signals.number(signal) else {
                    throw ValidationError("unknown signal \(signal)")
                }
                guard Glibc.kill(record.pid, number) == 0 else {
                    throw ContainerError.system("cannot signal process \(record.pid): \(String(cString: strerror(errno)))")
                }
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a stopped container's state (--force: kill it first).")
        @Flag(name: [.customLong("force"), .customShort("f")], help: "Kill a created or running container first.") var force = false
        @Argument(help: "The container id.") var id: String

        func run() {
            RuntimeCommand.guarded {
                let store = RuntimeCommand.store
                let record: ContainerRecord
                do {
                    record = try store.load(id)
                } catch ContainerError.notFound(_) where force {
                    return  // already gone: what --force asks for (an engine cleaning up after a failed create)
                }
                let status = store.status(of: record)
                if status == "created" || status == "running" {
                    guard force else { throw ContainerError.wrongState(id: id, status: status, wanted: "stopped (or use --force)") }
                    _ = Glibc.kill(record.pid, SIGKILL)
                }
                // Until every thread of it is gone: only then are its mappings of a restored image released.
                let deadline = Date().addingTimeInterval(10)
                while !ContainerStore.hasFinished(pid: record.pid, startTime: record.pidStartTime) && Date() < deadline { usleep(5_000) }
                // The restored image's catalyzerfs mount goes first: the image is in the state removed next.
                if let storeRoot = record.restoredFrom { ContainerCheckpoint.unmount(storeRoot: storeRoot) }
                store.remove(id)
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List containers.")
        @Option(name: [.customLong("format"), .customShort("f")], help: "table or json.") var format = "table"
        @Flag(name: [.customLong("quiet"), .customShort("q")], help: "Only ids.") var quiet = false

        func run() {
            RuntimeCommand.guarded {
                let store = RuntimeCommand.store
                let states = store.list().compactMap { try? store.load($0) }.map { store.state(of: $0) }
                if quiet { return states.forEach { print($0.id) } }
                if format == "json" {
                    print(String(decoding: try JSONEncoder().encode(states), as: UTF8.self))
                    return
                }
                print("ID\tPID\tSTATUS\tBUNDLE")
                for state in states { print("\(state.id)\t\(state.pid)\t\(state.status)\t\(state.bundle)") }
            }
        }
    }

    struct Ps: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The host processes of a container: its monitor process.")
        @Option(name: [.customLong("format"), .customShort("f")], help: "table or json.") var format = "table"
        @Argument(help: "The container id.") var id: String
        @Argument(parsing: .captureForPassthrough, help: "ps options (ignored).") var psOptions: [String] = []

        func run() {
            RuntimeCommand.guarded {
                let store = RuntimeCommand.store
                let record = try store.load(id)
                let pids = store.status(of: record) == "stopped" ? [] : [record.pid]
                if format == "json" { print("[" + pids.map(String.init).joined(separator: ",") + "]"); return }
                print("PID")
                for pid in pids { print(pid) }
            }
        }
    }

    struct Features: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "What this runtime supports, as JSON (runtime-spec features.md).")

        func run() {
            let features: [String: Any] = [
                "ociVersionMin": "1.0.0", "ociVersionMax": "1.1.0",
                "hooks": [String](),
                "mountOptions": ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec", "rprivate", "private", "mode", "size"],
                "linux": [
                    "namespaces": ["pid", "network", "ipc", "uts", "mount", "cgroup"],
                    "capabilities": [String](),
                    "cgroup": ["v1": false, "v2": false, "systemd": false, "systemdUser": false],
                    "seccomp": ["enabled": false],
                    "apparmor": ["enabled": false],
                    "selinux": ["enabled": false],
                ] as [String: Any],
                "annotations": ["dev.catalyzer.sandbox": "kvm"],
            ]
            let data = (try? JSONSerialization.data(withJSONObject: features, options: [.prettyPrinted, .sortedKeys])) ?? Data()
            print(String(decoding: data, as: UTF8.self))
        }
    }

    struct Exec: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run another process in a running container (in its sandbox, beside its first process).",
            discussion: "The process is --process FILE (an OCI process object), or COMMAND with the container's env and cwd, "
                + "changed by --env and --cwd. Its stdio is this command's; without --detach this command waits and exits "
                + "with its status. A terminal (-t) and users other than root are refused.")
        @Option(name: [.customLong("process"), .customShort("p")], help: "An OCI process object (JSON) to run.") var process: String?
        @Option(name: .customLong("pid-file"), help: "Write the pid of the process standing for it on the host here.") var pidFile: String?
        @Flag(name: [.customLong("detach"), .customShort("d")], help: "Return once the process runs.") var detach = false
        @Option(name: .customLong("cwd"), help: "The working directory in the container.") var cwd: String?
        @Option(name: [.customLong("env"), .customShort("e")], help: "Set an environment variable (KEY=VALUE); repeatable.") var env: [String] = []
        @Flag(name: [.customLong("tty"), .customShort("t")], help: "A terminal as stdio (needs --console-socket).") var tty = false
        @Option(name: [.customLong("user"), .customShort("u")], help: "uid[:gid] to run as.") var user: String?
        @Option(name: .customLong("console-socket"), help: "With a terminal: the unix socket that receives its primary side.") var consoleSocket: String?
        @Option(name: [.customLong("cap"), .customShort("c")], help: "Accepted; the sandbox has no capabilities to add.") var capabilities: [String] = []
        @Option(name: .customLong("preserve-fds"), help: "Accepted; extra fds are not passed into the sandbox.") var preserveFDs = 0
        @Option(name: [.customLong("additional-gids"), .customShort("g")], help: "Accepted (the process runs as root).") var additionalGIDs: [String] = []
        @Option(name: .customLong("process-label")) var processLabel: String?
        @Option(name: .customLong("apparmor")) var apparmor: String?
        @Option(name: .customLong("cgroup")) var cgroup: String?
        @Flag(name: .customLong("no-new-privs")) var noNewPrivileges = false
        @Flag(name: .customLong("ignore-paused")) var ignorePaused = false
        @Argument(help: "The container id.") var id: String
        @Argument(parsing: .captureForPassthrough, help: "The command, without --process.") var command: [String] = []

        func run() {
            RuntimeCommand.guarded {
                let record = try RuntimeCommand.store.load(id)
                let container = try SandboxPlan.load(bundle: record.bundle)
                var process: RuntimeSpec.Process
                if let file = self.process {
                    process = try ExecPlan.process(at: file)
                } else {
                    guard !command.isEmpty else { throw ValidationError("exec needs --process FILE or a COMMAND") }
                    process = container.process
                    process.args = command
                    process.terminal = tty
                    if let user {
                        let ids = user.split(separator: ":").map { UInt32($0) }
                        guard ids.allSatisfy({ $0 != nil }) else { throw ValidationError("--user takes uid[:gid] as numbers") }
                        process.user = RuntimeSpec.User(uid: ids.first ?? 0, gid: ids.count > 1 ? ids[1] : 0)
                    }
                }
                if let cwd { process.cwd = cwd }
                if !env.isEmpty {
                    let names = Set(env.map { $0.split(separator: "=", maxSplits: 1).first.map(String.init) ?? $0 })
                    process.env = (process.env ?? []).filter { !names.contains(String($0.split(separator: "=", maxSplits: 1).first ?? "")) } + env
                }
                let plan = try ExecPlan(process: process, root: container.configuration.rootDirectory)
                try ExecChannel.exec(id: id, plan: plan, pidFile: pidFile, detach: detach, consoleSocket: consoleSocket)
            }
        }
    }

    /// The process standing on the host for one started by exec (started by exec, never by hand).
    struct ExecProcess: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "exec-process", abstract: "An exec'd process (internal).",
                                                        shouldDisplay: false)
        @Argument var id: String
        @Argument var request: String

        func run() {
            ExecChannel.runHelper(id: id, request: request)
        }
    }

    /// `checkpoint` and `restore` (see `ContainerCheckpoint`).
    struct Checkpoint: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Checkpoint a running container into a Catalyzer image under --image-path (then stop it, unless --leave-running).",
            discussion: "The image is DIR/catalyzer, a Catalyzer store (OCI layout) holding image `container`: guest memory in "
                + "compressed content-addressed chunks, the kernel state with the writable root and in-memory mounts. "
                + "CRIU's other flags are accepted and have no effect.")
        @Option(name: .customLong("image-path"), help: "Where the image goes.") var imagePath: String
        @Option(name: .customLong("work-path"), help: "Accepted (CRIU's logs would go there; nothing does).") var workPath: String?
        @Option(name: .customLong("parent-path")) var parentPath: String?
        @Flag(name: .customLong("leave-running"), help: "Keep the container running after the checkpoint.") var leaveRunning = false
        @Flag(name: .customLong("pre-dump")) var preDump = false
        @Option(name: .customLong("status-fd")) var statusFD: Int32?
        @Option(name: .customLong("page-server")) var pageServer: String?
        @OptionGroup var criu: CRIUOptions
        @Argument(help: "The container id.") var id: String

        func run() {
            RuntimeCommand.guarded {
                guard !preDump else { throw ValidationError("--pre-dump is not supported: a Catalyzer checkpoint is taken in one go") }
                try ExecChannel.requestCheckpoint(id: id, imagePath: imagePath, leaveRunning: leaveRunning)
                if let statusFD { close(statusFD) }
            }
        }
    }

    struct Restore: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Restore a container from the Catalyzer image under --image-path; without --detach, wait for it.",
            discussion: "The bundle's config.json is checked as for create; the sandbox resumes from the image (memory through "
                + "catalyzerfs, fetched on first touch) against the bundle's root, with this command's stdio (or a terminal "
                + "for --console-socket). CRIU's other flags are accepted and have no effect.")
        @OptionGroup var options: CreateOptions
        @Option(name: .customLong("image-path"), help: "The checkpoint's directory.") var imagePath: String
        @Option(name: .customLong("work-path")) var workPath: String?
        @Flag(name: [.customLong("detach"), .customShort("d")], help: "Return once the container runs.") var detach = false
        @Flag(name: .customLong("no-subreaper")) var noSubreaper = false
        @OptionGroup var criu: CRIUOptions
        @Option(name: .customLong("lsm-profile")) var lsmProfile: String?
        @Option(name: .customLong("lsm-mount-context")) var lsmMountContext: String?
        @Argument(help: "The container id.") var id: String

        func run() {
            RuntimeCommand.guarded {
                let storeRoot = ContainerCheckpoint.storeRoot(imagePath: imagePath)
                let marker = imagePath + "/" + ContainerCheckpoint.completionMarker
                guard let data = FileManager.default.contents(atPath: marker),
                      (try? JSONDecoder().decode(ContainerCheckpoint.ImageReference.self, from: data)) != nil,
                      FileManager.default.fileExists(atPath: storeRoot + "/index.json") else {
                    throw ContainerError.system("\(imagePath) holds no complete Catalyzer checkpoint (\(marker) missing or not a Catalyzer image reference); it was not made by catalyzer-runtime checkpoint, or the checkpoint did not finish")
                }
                let child = try options.create(id: id, restoringFrom: storeRoot)
                guard !detach else { return }
                var status: Int32 = 0
                while waitpid(child, &status, 0) < 0 && errno == EINTR {}
                ContainerLauncher.exit(withStatusOf: status)
            }
        }
    }

    /// The container's process (started by create, never by hand): builds the sandbox, reports
    /// on fd 3, waits on the start FIFO, then runs the guest and exits with its status.
    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "init", abstract: "The container process (internal).",
                                                        shouldDisplay: false)
        @Argument var id: String

        func run() {
            ContainerLauncher.runContainerProcess(id: id)
        }
    }
}

/// CRIU's flags that runc's `checkpoint` and `restore` both take: accepted, with no effect on a
/// Catalyzer checkpoint (which holds the sandbox's sockets, locks and memory its own way).
struct CRIUOptions: ParsableArguments {
    @Flag(name: .customLong("tcp-established")) var tcpEstablished = false
    @Flag(name: .customLong("ext-unix-sk")) var externalUnixSockets = false
    @Flag(name: .customLong("shell-job")) var shellJob = false
    @Flag(name: .customLong("file-locks")) var fileLocks = false
    @Flag(name: .customLong("lazy-pages")) var lazyPages = false
    @Flag(name: .customLong("auto-dedup")) var autoDedup = false
    @Option(name: .customLong("manage-cgroups-mode")) var manageCgroupsMode: String?
    @Option(name: .customLong("empty-ns")) var emptyNamespaces: [String] = []
}

/// The options `create` and `run` share, as runc takes them.
struct CreateOptions: ParsableArguments {
    @Option(name: [.customLong("bundle"), .customShort("b")], help: "The bundle directory (config.json and the root).") var bundle = "."
    @Option(name: .customLong("pid-file"), help: "Write the container process's pid here.") var pidFile: String?
    @Option(name: .customLong("console-socket"), help: "With process.terminal: the unix socket that receives the terminal's primary side.") var consoleSocket: String?
    @Option(name: .customLong("preserve-fds"), help: "Accepted; extra fds are not passed into the sandbox.") var preserveFDs = 0
    @Flag(name: .customLong("no-pivot")) var noPivot = false
    @Flag(name: .customLong("no-new-keyring")) var noNewKeyring = false

    /// Creates the container (restored from the Catalyzer store at `restoringFrom`: running at
    /// once) and writes the pid file; returns the container process's pid.
    func create(id: String, restoringFrom storeRoot: String? = nil) throws -> Int32 {
        let child = try ContainerLauncher.create(id: id, bundle: bundle, consoleSocket: consoleSocket, restoringFrom: storeRoot)
        if let pidFile { try ContainerLauncher.writePIDFile(pidFile, pid: child) }
        return child
    }
}

enum Signals {
    static let names: [String: Int32] = [
        "HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "ILL": SIGILL, "TRAP": SIGTRAP, "ABRT": SIGABRT, "BUS": SIGBUS,
        "FPE": SIGFPE, "KILL": SIGKILL, "USR1": SIGUSR1, "SEGV": SIGSEGV, "USR2": SIGUSR2, "PIPE": SIGPIPE, "ALRM": SIGALRM,
        "TERM": SIGTERM, "CHLD": SIGCHLD, "CONT": SIGCONT, "STOP": SIGSTOP, "TSTP": SIGTSTP, "TTIN": SIGTTIN, "TTOU": SIGTTOU,
        "URG": SIGURG, "XCPU": SIGXCPU, "XFSZ": SIGXFSZ, "VTALRM": SIGVTALRM, "PROF": SIGPROF, "WINCH": SIGWINCH, "IO": SIGIO,
        "PWR": SIGPWR, "SYS": SIGSYS,
    ]

    static func number(_ text: String) -> Int32? {
        if let value = Int32(text) { return (1...64).contains(value) ? value : nil }
        let upper = text.uppercased()
        return names[upper.hasPrefix("SIG") ? String(upper.dropFirst(3)) : upper]
    }
}
