import CatalyzerImage
import CatalyzerKernel
import Foundation
import Glibc

/// The language runtimes a function can be written for. Each has a runner in its runtime rootfs
/// (`Scripts/build-rootfs.sh [--runtime nodejs] DIR`) that keeps one stdin/stdout contract: one
/// JSON request per line in, one JSON response per line out, the first read of stdin the ready point.
public enum FunctionRuntime: String, Sendable, Codable, CaseIterable {
    case python311 = "python3.11"
    case nodejs

    /// Files the runtime rootfs must have.
    var requiredFiles: [String] {
        switch self {
        case .python311: ["/usr/bin/python3", "/opt/catalyzer/runner.py"]
        case .nodejs: ["/usr/bin/node", "/opt/catalyzer/runner.js", "/opt/catalyzer/reseed.node"]
        }
    }

    var programPath: String {
        switch self {
        case .python311: "/usr/bin/python3"
        case .nodejs: "/usr/bin/node"
        }
    }

    func arguments(codePath: String, handler: String) -> [String] {
        switch self {
        case .python311: [programPath, "/opt/catalyzer/runner.py", codePath, handler]
        case .nodejs: [programPath, "/opt/catalyzer/runner.js", codePath, handler]
        }
    }

    /// The environment variable that names the runtime rootfs when --runtime-rootfs is not given.
    public var rootfsVariable: String {
        switch self {
        case .python311: "CATALYZER_RUNTIME_ROOTFS"
        case .nodejs: "CATALYZER_NODEJS_ROOTFS"
        }
    }

    /// How the runtime rootfs is built.
    public var buildCommand: String {
        switch self {
        case .python311: "Scripts/build-rootfs.sh DIR"
        case .nodejs: "Scripts/build-rootfs.sh --runtime nodejs DIR"
        }
    }
}

/// What `catalyzer function create` asks for: a directory of code, a handler named as AWS Lambda
/// names it, optional requirements, and the runtime rootfs they run on.
public struct FunctionCreateRequest: Sendable {
    public var name: String
    public var codeDirectory: String
    /// `MODULE.FUNCTION`, imported from the code directory.
    public var handler = "app.handler"
    /// A pip requirements file, installed from wheels for the guest's CPython 3.11 on x86-64.
    /// A pip requirements file (Python only), installed from wheels for the guest's CPython 3.11 on
    /// x86-64. A Node.js function's dependencies are its code directory's `node_modules`, or what
    /// `npm ci` installs from its `package-lock.json`.
    public var requirements: String?
    public var runtime = FunctionRuntime.python311
    /// The runtime layer: a rootfs made by `Scripts/build-rootfs.sh` (the interpreter and the runner).
    public var runtimeRootfs: String
    public var memorySize = 256 << 20
    /// The function's timeout, which its context reports (`get_remaining_time_in_millis`).
    public var timeoutSeconds: Double = 30
    /// How long importing the handler may take.
    public var initializationTimeoutSeconds: Double = 120
    public var environment: [String] = []
    public var network = NetworkPolicy.none
    public var limits = SandboxLimits()
    public var image = ImageCreateOptions()

    public init(name: String, codeDirectory: String, runtimeRootfs: String) {
        self.name = name
        self.codeDirectory = codeDirectory
        self.runtimeRootfs = runtimeRootfs
    }
}

public struct FunctionCreateReport: Sendable, Codable {
    public struct Layer: Sendable, Codable {
        /// runtime, dependencies or code.
        public var role: String
        public var digest: Digest
        public var size: Int64
        /// The layer was already in the store, unchanged: nothing was rebuilt.
        public var reused: Bool
    }

    public var name: String
    public var handler: String
    public var runtime: FunctionRuntime
    public var layers: [Layer]
    /// How the function's program starts: what the checkpoint ran, and what a cold start runs.
    public var launch: FunctionLaunch
    public var checkpoint: CheckpointReport
}

/// The program a function's sandbox runs: the runtime's interpreter on its runner, with the
/// code directory, the handler and the function's environment.
public struct FunctionLaunch: Sendable, Codable {
    public var programPath: String
    public var arguments: [String]
    public var environment: [String]
}

/// Why a function could not be created. Nothing is published when creation fails.
public enum FunctionBuildError: Error, CustomStringConvertible {
    case badName(String)
    case badHandler(String)
    case runtimeMissing(path: String, missing: String, runtime: FunctionRuntime)
    case requirementsNotForRuntime(FunctionRuntime)
    case nodeDependencies(String)
    case npmFailed(lockfile: String, output: String)
    case codeUnreadable(path: String, reason: String)
    case symlinkOutside(path: String, target: String)
    case specialFile(path: String)
    case codeTooLarge(bytes: Int64, limit: Int64)
    case requirementsFailed(file: String, pipOutput: String)
    case toolFailed(tool: String, output: String)
    case initializationFailed(String)

    public var description: String {
        switch self {
        case .badName(let name):
            "function name '\(name)' is not valid: use letters, digits, '.', '_' and '-'"
        case .badHandler(let handler):
            "--handler \(handler) is not MODULE.FUNCTION (Lambda's form, e.g. app.handler or pkg.module.handler)"
        case .runtimeMissing(let path, let missing, let runtime):
            "the runtime rootfs \(path) has no \(missing), so it is not a \(runtime.rawValue) runtime: build one with \(runtime.buildCommand) and pass --runtime-rootfs DIR"
        case .requirementsNotForRuntime(let runtime):
            "--requirements is a pip requirements file, for Python; a \(runtime.rawValue) function brings its dependencies in its code directory (node_modules, or package.json with package-lock.json for npm ci)"
        case .nodeDependencies(let problem):
            "the function's Node.js dependencies are not usable: \(problem)"
        case .codeUnreadable(let path, let reason):
            "the code directory \(path) cannot be read: \(reason)"
        case .symlinkOutside(let path, let target):
            "the code directory's symlink \(path) points outside it (to \(target)); a function ships only its own files"
        case .specialFile(let path):
            "the code directory holds \(path), which is not a regular file, directory or symlink"
        case .codeTooLarge(let bytes, let limit):
            "the code directory holds \(bytes) bytes, over the limit of \(limit) (Lambda's 250 MB unzipped); move data to where the function fetches it"
        case .requirementsFailed(let file, let output):
            "installing \(file) for the guest (CPython 3.11, x86-64 manylinux wheels only) failed; pip said:\n\(output)"
        case .npmFailed(let lockfile, let output):
            "npm ci from \(lockfile) failed (vendor node_modules in the code directory where the npm registry is out of reach); npm said:\n\(output)"
        case .toolFailed(let tool, let output):
            "\(tool) failed:\n\(output)"
        case .initializationFailed(let message):
            "the function did not initialize: \(message)"
        }
    }
}

/// Builds a function's image from three content-addressed rootfs layers — the runtime (python3.11
/// and the runner), the dependencies (pip wheels for the guest, precompiled) and the code (the
/// directory as /var/task, precompiled) — then checkpoints it at its ready point, where its handler
/// is imported and the runner waits for the first request.
///
/// Layers are shared by digest. The dependencies of one requirements file are installed once per
/// store (`functions/dependencies/KEY`) and packed once, so functions with the same requirements
/// share that layer on disk and, unpacked, in the page cache; changing only the code rebuilds
/// only the code layer.
public enum FunctionBuilder {
    /// The most code a function may ship, as Lambda's unzipped deployment package limit.
    public static let codeLimit: Int64 = 250_000_000
    /// Where pip-installed packages go in the guest: Debian's python looks there.
    static let sitePackages = "/usr/local/lib/python3.11/dist-packages"
    static let codePath = "/var/task"
    /// The host's CPython 3.11, whose pip installs wheels for the guest.
    static let hostPython = "/usr/bin/python3.11"

    public static func create(_ request: FunctionCreateRequest, store: ImageStore) throws -> FunctionCreateReport {
        guard ImageStore.isValidName(request.name) else { throw FunctionBuildError.badName(request.name) }
        guard isHandlerName(request.handler) else { throw FunctionBuildError.badHandler(request.handler) }
        for required in request.runtime.requiredFiles where access(request.runtimeRootfs + required, R_OK) != 0 {
            throw FunctionBuildError.runtimeMissing(path: request.runtimeRootfs, missing: required, runtime: request.runtime)
        }
        if request.runtime != .python311, request.requirements != nil { throw FunctionBuildError.requirementsNotForRuntime(request.runtime) }
        try checkCode(request.codeDirectory)

        let work = store.root + "/functions"
        try FileManager.default.createDirectory(atPath: work + "/dependencies", withIntermediateDirectories: true)
        let runtime = try store.storeRootfsLayer(from: request.runtimeRootfs)
        var layers = [FunctionCreateReport.Layer(role: "runtime", digest: runtime.descriptor.digest, size: runtime.descriptor.size,
                                                 reused: runtime.reused)]
        var descriptors = [runtime.descriptor]
        if let requirements = request.requirements {
            let directory = try dependencies(requirements, runtime: request.runtimeRootfs, runtimeLayer: runtime.descriptor.digest,
                                             work: work + "/dependencies")
            let layer = try store.storeRootfsLayer(from: directory)
            layers.append(.init(role: "dependencies", digest: layer.descriptor.digest, size: layer.descriptor.size, reused: layer.reused))
            descriptors.append(layer.descriptor)
        }
        if request.runtime == .nodejs,
           let modules = try NodeDependencies.stage(code: request.codeDirectory, work: work + "/dependencies", codePath: codePath) {
            let layer = try store.storeRootfsLayer(from: modules)
            layers.append(.init(role: "dependencies", digest: layer.descriptor.digest, size: layer.descriptor.size, reused: layer.reused))
            descriptors.append(layer.descriptor)
        }
        let codeStage = work + "/code-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: codeStage) }
        try stageCode(request.codeDirectory, into: codeStage, runtime: request.runtime)
        let code = try store.storeRootfsLayer(from: codeStage)
        layers.append(.init(role: "code", digest: code.descriptor.digest, size: code.descriptor.size, reused: code.reused))
        descriptors.append(code.descriptor)

        // The rootfs the function runs on: the layers unpacked in order, once per chain of digests.
        let rootfs = try store.materializeRootfs(descriptors, image: request.name).path
        let timeoutMilliseconds = Int(request.timeoutSeconds * 1000)
        var environment = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           "CATALYZER_FUNCTION_NAME=\(request.name)", "CATALYZER_TIMEOUT_MS=\(timeoutMilliseconds)"]
        environment += request.environment
        let launch = FunctionLaunch(programPath: request.runtime.programPath,
                                    arguments: request.runtime.arguments(codePath: codePath, handler: request.handler),
                                    environment: environment)
        var checkpoint = CheckpointRequest(name: request.name, rootfs: rootfs, memorySize: request.memorySize,
                                           programPath: launch.programPath, arguments: launch.arguments,
                                           environment: launch.environment, timeoutSeconds: request.initializationTimeoutSeconds,
                                           image: request.image)
        checkpoint.rootfsLayers = descriptors
        checkpoint.network = request.network
        checkpoint.limits = request.limits
        checkpoint.image.annotations = (checkpoint.image.annotations ?? [:]).merging(
            FunctionSettings(handler: request.handler, runtime: request.runtime, timeoutMilliseconds: timeoutMilliseconds,
                             layerRoles: layers.map(\.role)).annotations
        ) { _, new in new }
        let report: CheckpointReport
        do {
            report = try Checkpointer.checkpoint(checkpoint, store: store)
        } catch let error as RuntimeError {
            throw FunctionBuildError.initializationFailed(error.description)
        }
        return FunctionCreateReport(name: request.name, handler: request.handler, runtime: request.runtime, layers: layers, launch: launch,
                                    checkpoint: report)
    }

    static func isHandlerName(_ handler: String) -> Bool {
        let parts = handler.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count >= 2 && parts.allSatisfy { part in
            guard let first = part.unicodeScalars.first, first == "_" || CharacterSet.letters.contains(first) else { return false }
            return part.unicodeScalars.allSatisfy { $0 == "_" || CharacterSet.alphanumerics.contains($0) }
        }
    }

    /// Walks the code directory: every symlink stays inside it, nothing but files, directories
    /// and symlinks, and no more than `codeLimit` bytes.
    static func checkCode(_ directory: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw FunctionBuildError.codeUnreadable(path: directory, reason: "it is not a directory")
        }
        let root = URL(fileURLWithPath: directory).standardizedFileURL.path
        var total: Int64 = 0
        guard let enumerator = FileManager.default.enumerator(atPath: root) else {
            throw FunctionBuildError.codeUnreadable(path: directory, reason: "it cannot be listed")
        }
        while let relative = enumerator.nextObject() as? String {
            let path = root + "/" + relative
            var info = stat()
            guard lstat(path, &info) == 0 else {
                throw FunctionBuildError.codeUnreadable(path: path, reason: String(cString: strerror(errno)))
            }
            switch info.st_mode & S_IFMT {
            case S_IFREG:
                total += Int64(info.st_size)
                if total > codeLimit { throw FunctionBuildError.codeTooLarge(bytes: total, limit: codeLimit) }
            case S_IFDIR:
                break
            case S_IFLNK:
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? ""
                // Relative, and inside the directory once resolved lexically: the guest sees the
                // code at /var/task, where an absolute target would mean something else.
                let resolved = URL(fileURLWithPath: target, relativeTo: URL(fileURLWithPath: path).deletingLastPathComponent())
                    .standardizedFileURL.path
                guard !target.hasPrefix("/"), resolved == root || resolved.hasPrefix(root + "/") else {
                    throw FunctionBuildError.symlinkOutside(path: path, target: target)
                }
            default:
                throw FunctionBuildError.specialFile(path: path)
            }
        }
    }

    /// The dependencies of `requirements` as a rootfs tree (`usr/local/lib/python3.11/...`),
    /// installed once per store, runtime and requirements: pip for the guest's platform, wheels
    /// only (building from source on the host would not match the guest), then precompiled. The
    /// system libraries their extension modules link that the runtime lacks (libpthread for
    /// Pillow's, say) come along, from the host whose glibc the runtime rootfs carries.
    static func dependencies(_ requirements: String, runtime: String, runtimeLayer: Digest, work: String) throws -> String {
        let contents: Data
        do { contents = try Data(contentsOf: URL(fileURLWithPath: requirements)) } catch {
            throw FunctionBuildError.codeUnreadable(path: requirements, reason: "\(error.localizedDescription)")
        }
        let key = Digest(of: Array("cp311 manylinux2014_x86_64 \(runtimeLayer)\n".utf8) + Array(contents)).hex
        let directory = work + "/" + key.prefix(32)
        if FileManager.default.fileExists(atPath: directory + sitePackages) { return directory }
        let stage = directory + ".building-\(getpid())"
        try? FileManager.default.removeItem(atPath: stage)
        defer { try? FileManager.default.removeItem(atPath: stage) }
        try FileManager.default.createDirectory(atPath: stage + sitePackages, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        // Wheels for any manylinux the runtime's glibc (the host's, which build-rootfs.sh copies) runs.
        let platforms = manylinuxPlatforms().flatMap { ["--platform", $0] }
        let pip = try run(hostPython, ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore",
                                       "--no-compile", "--only-binary=:all:"] + platforms + [
                                       "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
                                       "--target", stage + sitePackages, "-r", requirements])
        guard pip.status == 0 else { throw FunctionBuildError.requirementsFailed(file: requirements, pipOutput: pip.output) }
        try? FileManager.default.removeItem(atPath: stage + sitePackages + "/bin")  // console scripts point at the host's python
        try addSystemLibraries(to: stage, runtime: runtime)
        try precompile(stage + sitePackages, root: stage)
        guard rename(stage, directory) == 0 else {
            if FileManager.default.fileExists(atPath: directory + sitePackages) { return directory }  // another create won
            throw FunctionBuildError.toolFailed(tool: "rename", output: "\(stage) to \(directory): \(String(cString: strerror(errno)))")
        }
        return directory
    }

    /// manylinux_2_N_x86_64 for every glibc 2.N from this host's down to 2.17 (manylinux2014),
    /// newest first, plus the legacy manylinux2014 name.
    static func manylinuxPlatforms() -> [String] {
        var buffer = [CChar](repeating: 0, count: 64)
        let length = confstr(Int32(_CS_GNU_LIBC_VERSION), &buffer, buffer.count)  // "glibc 2.36"
        let text = length > 0 ? String(decoding: buffer.prefix(max(0, length - 1)).map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        let version = (text.split(separator: " ").last ?? "").split(separator: ".").compactMap { Int($0) }
        let minor = version.count >= 2 && version[0] == 2 ? max(17, version[1]) : 17
        return stride(from: minor, through: 17, by: -1).map { "manylinux_2_\($0)_x86_64" } + ["manylinux2014_x86_64"]
    }

    /// Copies into `stage` (under /lib/x86_64-linux-gnu) each host library that the shared
    /// objects in `stage` link and that neither `stage` nor the runtime rootfs has.
    static func addSystemLibraries(to stage: String, runtime: String) throws {
        let listed = try run("/bin/sh", ["-c", "find \"$1\" -name '*.so*' -type f -print0 | xargs -0 -r ldd 2>/dev/null | awk '/=> \\// { print $3 }' | sort -u",
                                         "sh", stage])
        let directory = "/lib/x86_64-linux-gnu"
        for library in listed.output.split(separator: "\n").map(String.init) where library.hasPrefix("/") && !library.hasPrefix(stage) {
            let name = URL(fileURLWithPath: library).lastPathComponent
            guard !name.hasPrefix("ld-linux") else { continue }
            let present = [directory, "/usr" + directory, "/lib64", "/usr/lib"].contains { access(runtime + $0 + "/" + name, F_OK) == 0 }
            guard !present, access(stage + directory + "/" + name, F_OK) != 0 else { continue }
            try FileManager.default.createDirectory(atPath: stage + directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o755])
            let copied = try run("/bin/cp", ["-L", library, stage + directory + "/" + name])
            guard copied.status == 0 else { throw FunctionBuildError.toolFailed(tool: "cp", output: copied.output) }
        }
    }

    /// The code as a rootfs tree: `var/task/...`; Python's precompiled, a Node.js function's
    /// without `node_modules`, which is its dependencies layer.
    static func stageCode(_ directory: String, into stage: String, runtime: FunctionRuntime) throws {
        try FileManager.default.createDirectory(atPath: stage + codePath, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        let copied = try run("/bin/cp", ["-a", "--no-preserve=ownership", directory + "/.", stage + codePath])
        guard copied.status == 0 else { throw FunctionBuildError.toolFailed(tool: "cp", output: copied.output) }
        switch runtime {
        case .python311: try precompile(stage + codePath, root: stage)
        case .nodejs: try? FileManager.default.removeItem(atPath: stage + codePath + "/node_modules")
        }
    }

    /// Bytecode with the paths the guest sees (the rootfs is read-only in the sandbox, so python
    /// could not write it there).
    static func precompile(_ directory: String, root: String) throws {
        let compiled = try run(hostPython, ["-m", "compileall", "-q", "-j", "0", "-s", root, "-p", "/", directory])
        guard compiled.status == 0 else { throw FunctionBuildError.toolFailed(tool: "compileall", output: compiled.output) }
    }

    /// Runs a host tool to completion; its stdout and stderr together (the last 8 KiB).
    static func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data.suffix(8 << 10), as: UTF8.self))
    }
}

/// A function's settings as its image records them (annotations of its config), read by
/// `function ls`/`inspect`, `invoke` and `serve`. Every value read back is checked: an image is
/// input like any other.
public struct FunctionSettings: Sendable, Equatable {
    static let handlerKey = "dev.catalyzer.function.handler"
    static let timeoutKey = "dev.catalyzer.function.timeout-ms"
    static let layersKey = "dev.catalyzer.function.layers"
    static let runtimeKey = "dev.catalyzer.function.runtime"
    /// The longest timeout a function may record: 15 minutes, as Lambda's.
    static let maximumTimeoutMilliseconds = 900_000

    public var handler: String?
    /// Absent on functions made before there was a second runtime: those are Python.
    public var runtime: FunctionRuntime?
    public var timeoutMilliseconds: Int?
    /// The roles of the image's rootfs layers, in order (runtime, dependencies, code).
    public var layerRoles: [String]

    public var isFunction: Bool { handler != nil }
    public var timeoutSeconds: Double? { timeoutMilliseconds.map { Double($0) / 1000 } }

    init(handler: String, runtime: FunctionRuntime, timeoutMilliseconds: Int, layerRoles: [String]) {
        self.handler = handler
        self.runtime = runtime
        self.timeoutMilliseconds = timeoutMilliseconds
        self.layerRoles = layerRoles
    }

    public init(_ annotations: [String: String]) {
        handler = annotations[Self.handlerKey].flatMap { FunctionBuilder.isHandlerName($0) ? $0 : nil }
        if let recorded = annotations[Self.runtimeKey] {
            runtime = FunctionRuntime(rawValue: recorded)  // an unknown runtime reads as none
        } else {
            runtime = handler != nil ? .python311 : nil
        }
        timeoutMilliseconds = annotations[Self.timeoutKey].flatMap(Int.init).flatMap {
            (1...Self.maximumTimeoutMilliseconds).contains($0) ? $0 : nil
        }
        layerRoles = annotations[Self.layersKey].map { $0.split(separator: ",").map(String.init) } ?? []
    }

    var annotations: [String: String] {
        var result: [String: String] = [Self.layersKey: layerRoles.joined(separator: ",")]
        if let handler { result[Self.handlerKey] = handler }
        if let runtime { result[Self.runtimeKey] = runtime.rawValue }
        if let timeoutMilliseconds { result[Self.timeoutKey] = String(timeoutMilliseconds) }
        return result
    }
}
