import CatalyzerKernel
import Foundation
import Glibc

/// Why a bundle cannot run in a Catalyzer sandbox: each names the `config.json` field, so the
/// engine's user knows what to change (and `create` refuses before anything starts).
public enum BundleError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case invalid(field: String, problem: String)
    case unsupported(field: String, what: String, instead: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "cannot read the bundle's \(path): \(reason)"
        case .invalid(let field, let problem): "config.json \(field): \(problem)"
        case .unsupported(let field, let what, let instead): "config.json \(field): \(what) is not supported in a Catalyzer sandbox; \(instead)"
        }
    }
}

/// What a bundle's `config.json` asks for, checked and turned into a sandbox configuration.
///
/// The sandbox is a VM whose kernel is the monitor, so it is its own pid, ipc, uts, mount,
/// network and cgroup namespace whatever the spec says; only sharing the host's (a namespace left
/// out of `linux.namespaces`) is refused. Honoured: process args, env, cwd, user (uid, gid and
/// additional gids, as getuid and file owners report them), terminal (a pty whose
/// primary side the runtime sends to the engine's console socket) and rlimit NPROC (as the task
/// limit); root (read-only, or writable through the monitor's in-memory layer over
/// it, `root.readonly` false); hostname; `linux.resources.memory.limit` as guest memory; mounts of
/// proc at /proc, tmpfs anywhere (in memory, charged to the sandbox), the devices at /dev, and
/// bind mounts of regular files (read once, read-only). sysfs, cgroup, mqueue and devpts mounts
/// are accepted and absent in the guest (nothing in a function needs them). Refused, naming the
/// field: user namespaces' ID mappings, devices beyond the built-in null, zero,
/// random and urandom, bind mounts of directories, and other mount types.
public struct SandboxPlan: Sendable {
    public var configuration: SandboxConfiguration
    /// The spec's annotations, for `state`.
    public var annotations: [String: String]
    /// The spec's process, the base of `exec ID COMMAND...`.
    public var process: RuntimeSpec.Process

    /// The guest memory when the spec sets no limit.
    public static let defaultMemory = 256 << 20
    /// Files a bind mount may bring (the engine's hosts, resolv.conf, hostname are a few bytes).
    public static let boundFileLimit = 1 << 20
    /// Where a bare program name is looked up when the spec's env has no PATH (runc's default).
    static let defaultSearchPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    static let absentMountTypes: Set<String> = ["sysfs", "cgroup", "cgroup2", "mqueue", "devpts"]
    static let builtInDevices: Set<String> = ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/full", "/dev/tty",
                                              "/dev/console", "/dev/ptmx"]

    /// Reads and checks `BUNDLE/config.json`.
    public static func load(bundle: String) throws(BundleError) -> SandboxPlan {
        let path = bundle + "/config.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .unreadable(path: path, reason: FileManager.default.fileExists(atPath: path) ? "permission denied" : "no such file")
        }
        let spec: RuntimeSpec
        do {
            spec = try JSONDecoder().decode(RuntimeSpec.self, from: data)
        } catch {
            throw .invalid(field: "(document)", problem: "not a runtime-spec configuration: \(error)")
        }
        return try SandboxPlan(spec: spec, bundle: bundle)
    }

    public init(spec: RuntimeSpec, bundle: String) throws(BundleError) {
        guard spec.ociVersion.hasPrefix("1.") else {
            throw .invalid(field: "ociVersion", problem: "\(spec.ociVersion) is not a 1.x runtime-spec version")
        }
        guard let process = spec.process else { throw .invalid(field: "process", problem: "missing: there is nothing to run") }
        guard let args = process.args, let program = args.first, !program.isEmpty else {
            throw .invalid(field: "process.args", problem: "empty: name the program to run")
        }
        guard let root = spec.root else { throw .invalid(field: "root", problem: "missing: the container needs a root filesystem") }
        let rootPath = root.path.hasPrefix("/") ? root.path : bundle + "/" + root.path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: rootPath, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw .invalid(field: "root.path", problem: "\(rootPath) is not a directory")
        }
        if let linux = spec.linux {
            let types = Set((linux.namespaces ?? []).map(\.type))
            for needed in ["network", "pid", "mount"] where !types.contains(needed) {
                throw .unsupported(field: "linux.namespaces", what: "sharing the host's \(needed) namespace",
                                   instead: "give the container its own (podman: drop --network host / --pid host)")
            }
            if !(linux.uidMappings ?? []).isEmpty || !(linux.gidMappings ?? []).isEmpty {
                throw .unsupported(field: "linux.uidMappings", what: "a user namespace's ID mappings", instead: "run the container rootful, without --userns")
            }
            for device in linux.devices ?? [] where !Self.builtInDevices.contains(device.path) {
                throw .unsupported(field: "linux.devices", what: "the device \(device.path)", instead: "the sandbox has /dev/null, /dev/zero, /dev/random and /dev/urandom only; drop --device")
            }
        }
        var memory = Self.defaultMemory
        if let limit = spec.linux?.resources?.memory?.limit, limit > 0 {
            guard limit >= 16 << 20 else {
                throw .invalid(field: "linux.resources.memory.limit", problem: "\(limit) bytes is below the 16 MiB a sandbox needs")
            }
            memory = Int(min(limit, 64 << 30)) / 4096 * 4096
        }
        let environment = process.env ?? []
        var configuration = SandboxConfiguration(rootDirectory: rootPath, memorySize: memory,
                                                 programPath: SandboxConfiguration.resolveProgram(program, rootfs: rootPath, environment: environment,
                                                                                                     defaultSearchPath: Self.defaultSearchPath),
                                                 arguments: args, environment: environment)
        // Through the root, as the sandbox will open it (a symlink in the root resolves inside it).
        let resolved = URL(fileURLWithPath: rootPath + configuration.programPath).resolvingSymlinksInPath().path
        guard access(rootPath + configuration.programPath, X_OK) == 0 || access(resolved, X_OK) == 0 else {
            throw .invalid(field: "process.args", problem: "\(program) is not an executable file in the root \(rootPath)")
        }
        configuration.workingDirectory = process.cwd ?? "/"
        if let nproc = process.rlimits?.first(where: { $0.type == "RLIMIT_NPROC" }) {
            configuration.limits.maximumTasks = Int(clamping: max(1, min(nproc.soft, 4096)))
        }
        if let pids = spec.linux?.resources?.pids?.limit, pids > 0 {
            configuration.limits.maximumTasks = min(configuration.limits.maximumTasks, Int(clamping: pids))
        }
        configuration.hostName = spec.hostname
        configuration.user = Self.user(process.user)
        // A writable root is an in-memory layer over root.path, which is never written.
        configuration.writableRoot = root.readonly != true
        configuration.mounts = try Self.mounts(spec.mounts ?? [])
        self.configuration = configuration
        annotations = spec.annotations ?? [:]
        self.process = process
    }

    /// `process.user` as the sandbox's user: uid, gid and additional gids (umask is left out).
    static func user(_ user: RuntimeSpec.User?) -> SandboxUser {
        guard let user else { return SandboxUser() }
        let gid = user.gid ?? 0
        var groups: [UInt32] = []
        for group in user.additionalGids ?? [] where !groups.contains(group) { groups.append(group) }
        return SandboxUser(uid: user.uid ?? 0, gid: gid, groups: groups)
    }

    static func mounts(_ mounts: [RuntimeSpec.Mount]) throws(BundleError) -> [SandboxMount] {
        var result: [SandboxMount] = []
        for (index, mount) in mounts.enumerated() {
            let field = "mounts[\(index)] (\(mount.destination))"
            guard mount.destination.hasPrefix("/") else { throw .invalid(field: field, problem: "the destination is not absolute") }
            let options = Set(mount.options ?? [])
            let type = mount.type ?? (options.contains("bind") || options.contains("rbind") ? "bind" : "")
            switch type {
            case "proc" where mount.destination == "/proc":
                continue  // the sandbox's own /proc
            case "tmpfs" where mount.destination == "/dev":
                continue  // the built-in devices
            case "tmpfs" where ["/tmp", "/dev/shm"].contains(mount.destination):
                continue  // built in, in memory
            case "tmpfs":
                result.append(.memory(path: mount.destination))
            case let other where Self.absentMountTypes.contains(other):
                continue
            case "bind", "none" where options.contains("bind") || options.contains("rbind"):
                guard let source = mount.source else { throw .invalid(field: field, problem: "a bind mount without a source") }
                if mount.destination == "/dev/shm" { continue }  // the engine's shm: the sandbox's own is in memory
                var status = stat()
                guard stat(source, &status) == 0 else {
                    throw .invalid(field: field, problem: "the source \(source) cannot be read: \(String(cString: strerror(errno)))")
                }
                guard status.st_mode & S_IFMT == S_IFREG else {
                    throw .unsupported(field: field, what: "a bind mount of a directory (a volume)", instead: "copy what the container needs into its image")
                }
                guard status.st_size <= Self.boundFileLimit, let data = FileManager.default.contents(atPath: source) else {
                    throw .unsupported(field: field, what: "a bound file over \(Self.boundFileLimit) bytes", instead: "copy it into the image")
                }
                result.append(.file(path: mount.destination, contents: [UInt8](data)))
            default:
                throw .unsupported(field: field, what: "a \(type.isEmpty ? "typeless" : type) mount", instead: "use tmpfs, proc or a bind mount of a file")
            }
        }
        return result
    }
}
