/// The parts of an OCI runtime bundle's `config.json` (runtime-spec 1.x) that Catalyzer reads.
/// Fields it does not know are ignored by decoding; fields it knows but cannot honour are refused
/// by `SandboxPlan`, naming the field.
public struct RuntimeSpec: Codable, Sendable {
    public var ociVersion: String
    public var process: Process?
    public var root: Root?
    public var hostname: String?
    public var mounts: [Mount]?
    public var annotations: [String: String]?
    public var linux: Linux?

    public struct Process: Codable, Sendable {
        public var terminal: Bool?
        public var user: User?
        public var args: [String]?
        public var env: [String]?
        public var cwd: String?
        public var rlimits: [Rlimit]?
        public var noNewPrivileges: Bool?
    }

    public struct User: Codable, Sendable {
        public var uid: UInt32?
        public var gid: UInt32?
        public var umask: UInt32?
        public var additionalGids: [UInt32]?

        public init(uid: UInt32?, gid: UInt32?) {
            self.uid = uid
            self.gid = gid
        }
    }

    public struct Rlimit: Codable, Sendable {
        public var type: String
        public var hard: UInt64
        public var soft: UInt64
    }

    public struct Root: Codable, Sendable {
        public var path: String
        public var readonly: Bool?
    }

    public struct Mount: Codable, Sendable {
        public var destination: String
        public var type: String?
        public var source: String?
        public var options: [String]?
    }

    public struct Linux: Codable, Sendable {
        public var namespaces: [Namespace]?
        public var resources: Resources?
        public var devices: [Device]?
        public var uidMappings: [IDMapping]?
        public var gidMappings: [IDMapping]?
    }

    public struct Namespace: Codable, Sendable {
        public var type: String
        public var path: String?
    }

    public struct Resources: Codable, Sendable {
        public var memory: Memory?
        public var pids: Pids?
    }

    public struct Memory: Codable, Sendable {
        public var limit: Int64?
    }

    public struct Pids: Codable, Sendable {
        public var limit: Int64
    }

    public struct Device: Codable, Sendable {
        public var path: String
        public var type: String?
    }

    public struct IDMapping: Codable, Sendable {
        public var containerID: UInt32
        public var hostID: UInt32
        public var size: UInt32
    }
}

/// The state of a container as `state` reports it (runtime-spec "State").
public struct ContainerStateDocument: Codable, Sendable, Equatable {
    public var ociVersion: String
    public var id: String
    /// creating, created, running or stopped.
    public var status: String
    public var pid: Int32
    public var bundle: String
    public var annotations: [String: String]?
}
