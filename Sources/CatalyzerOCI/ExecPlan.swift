import CatalyzerKernel
import Foundation
import Glibc

/// A second process for a running container (`exec`), checked as `create` checks the first: the
/// OCI process object (`exec --process FILE`, or the container's own process with the given
/// args, cwd and env), what a sandbox cannot honour refused naming the field, the program looked
/// up in the container's root. It travels to the container's monitor as JSON.
public struct ExecPlan: Codable, Sendable {
    /// The guest path of the program.
    public var programPath: String
    public var arguments: [String]
    public var environment: [String]
    public var workingDirectory: String
    /// Whether its stdio is a terminal (the runtime's pty, given to the engine's console socket).
    public var terminal: Bool
    /// Who it runs as (`process.user`).
    public var uid: UInt32
    public var gid: UInt32
    public var groups: [UInt32]

    public init(process: RuntimeSpec.Process, root: String) throws(BundleError) {
        guard let args = process.args, let program = args.first, !program.isEmpty else {
            throw .invalid(field: "process.args", problem: "empty: name the program to run")
        }
        let environment = process.env ?? []
        programPath = SandboxConfiguration.resolveProgram(program, rootfs: root, environment: environment,
                                                          defaultSearchPath: SandboxPlan.defaultSearchPath)
        arguments = args
        self.environment = environment
        workingDirectory = process.cwd ?? "/"
        terminal = process.terminal ?? false
        let user = SandboxPlan.user(process.user)
        uid = user.uid
        gid = user.gid
        groups = user.groups
    }

    /// Reads the OCI process object at `path` (`exec --process`).
    public static func process(at path: String) throws(BundleError) -> RuntimeSpec.Process {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .unreadable(path: path, reason: FileManager.default.fileExists(atPath: path) ? "permission denied" : "no such file")
        }
        do {
            return try JSONDecoder().decode(RuntimeSpec.Process.self, from: data)
        } catch {
            throw .invalid(field: "(process)", problem: "not a runtime-spec process: \(error)")
        }
    }
}
