import Foundation
import Glibc

/// What `catalyzer-runtime` keeps per container under `--root`: `ROOT/ID/container.json` (the
/// record below) and, between `create` and `start`, the FIFO `ROOT/ID/start` on which the
/// container's monitor process waits. Status is derived, as runc derives it: no pid yet is
/// creating; a dead (or reused) pid is stopped; a live one with the FIFO still there is created,
/// without it running.
public struct ContainerRecord: Codable, Sendable {
    public var id: String
    public var bundle: String
    /// The monitor process: the container's init as the engine sees it (0 while creating).
    public var pid: Int32
    /// Its start time in clock ticks since boot (/proc/PID/stat field 22), so a reused pid is
    /// never taken for the container.
    public var pidStartTime: UInt64
    public var created: String
    public var annotations: [String: String]
    /// For a container made by `restore`: the Catalyzer store (under `--image-path`) its sandbox
    /// was restored from, whose catalyzerfs mount `delete` takes down.
    public var restoredFrom: String?

    public init(id: String, bundle: String, pid: Int32, pidStartTime: UInt64, created: String, annotations: [String: String]) {
        self.id = id
        self.bundle = bundle
        self.pid = pid
        self.pidStartTime = pidStartTime
        self.created = created
        self.annotations = annotations
    }
}

public enum ContainerError: Error, CustomStringConvertible, Equatable {
    case badID(String)
    case exists(String)
    case notFound(String)
    case wrongState(id: String, status: String, wanted: String)
    case system(String)

    public var description: String {
        switch self {
        case .badID(let id): "container id \"\(id)\" is not valid: use letters, digits, '.', '_' and '-' (at most 1024)"
        case .exists(let id): "container \"\(id)\" already exists"
        case .notFound(let id): "container \"\(id)\" does not exist"
        case .wrongState(let id, let status, let wanted): "container \"\(id)\" is \(status); it must be \(wanted)"
        case .system(let message): message
        }
    }
}

public struct ContainerStore: Sendable {
    public let root: String

    public init(root: String) { self.root = root }

    public func directory(_ id: String) -> String { root + "/" + id }
    public func startFIFO(_ id: String) -> String { directory(id) + "/start" }

    public static func isValidID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 1024 && id != "." && id != ".."
            && id.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0) }
    }

    /// Makes the container's directory (failing if it exists) and its start FIFO.
    public func create(_ record: ContainerRecord) throws(ContainerError) {
        guard Self.isValidID(record.id) else { throw .badID(record.id) }
        guard (try? FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true,
                                                         attributes: [.posixPermissions: 0o711])) != nil else {
            throw .system("cannot make the state directory \(root)")
        }
        guard mkdir(directory(record.id), 0o700) == 0 else {
            throw errno == EEXIST ? .exists(record.id) : .system("cannot make \(directory(record.id)): \(String(cString: strerror(errno)))")
        }
        guard mkfifo(startFIFO(record.id), 0o600) == 0 else {
            throw .system("cannot make \(startFIFO(record.id)): \(String(cString: strerror(errno)))")
        }
        try save(record)
    }

    public func save(_ record: ContainerRecord) throws(ContainerError) {
        let path = directory(record.id) + "/container.json"
        guard let data = try? JSONEncoder().encode(record), (try? data.write(to: URL(fileURLWithPath: path), options: .atomic)) != nil else {
            throw .system("cannot write \(path)")
        }
    }

    public func load(_ id: String) throws(ContainerError) -> ContainerRecord {
        guard Self.isValidID(id) else { throw .badID(id) }
        let path = directory(id) + "/container.json"
        guard let data = FileManager.default.contents(atPath: path) else { throw .notFound(id) }
        guard let record = try? JSONDecoder().decode(ContainerRecord.self, from: data), record.id == id else {
            throw .system("\(path) is damaged; remove the container with delete --force")
        }
        return record
    }

    public func remove(_ id: String) {
        try? FileManager.default.removeItem(atPath: directory(id))
    }

    public func list() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter(Self.isValidID).sorted()
    }

    /// creating, created, running or stopped.
    public func status(of record: ContainerRecord) -> String {
        guard record.pid > 0 else { return "creating" }
        guard Self.isAlive(pid: record.pid, startTime: record.pidStartTime) else { return "stopped" }
        return FileManager.default.fileExists(atPath: startFIFO(record.id)) ? "created" : "running"
    }

    public func state(of record: ContainerRecord) -> ContainerStateDocument {
        let status = status(of: record)
        return ContainerStateDocument(ociVersion: "1.0.2", id: record.id, status: status,
                                      pid: status == "stopped" ? 0 : record.pid, bundle: record.bundle,
                                      annotations: record.annotations.isEmpty ? nil : record.annotations)
    }

    /// Whether `pid` runs and is the process that started at `startTime` (not a zombie).
    public static func isAlive(pid: Int32, startTime: UInt64) -> Bool {
        guard let stat = processStat(pid) else { return false }
        return stat.state != "Z" && stat.state != "X" && (startTime == 0 || stat.startTime == startTime)
    }

    /// Whether the process has finished exiting: gone, or a zombie with no thread left. Its
    /// leader is a zombie ("Z") while other threads still tear down, holding its mappings and
    /// files: what waits for those to be released (an unmount) must wait for this.
    public static func hasFinished(pid: Int32, startTime: UInt64) -> Bool {
        guard let stat = processStat(pid), startTime == 0 || stat.startTime == startTime else { return true }
        guard stat.state == "Z" || stat.state == "X" else { return false }
        let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"))?.count ?? 0
        return threads <= 1
    }

    /// The state letter and start time of a process, from /proc/PID/stat.
    public static func processStat(_ pid: Int32) -> (state: Character, startTime: UInt64)? {
        guard let file = FileHandle(forReadingAtPath: "/proc/\(pid)/stat"), let data = try? file.readToEnd() else { return nil }
        let text = String(decoding: data, as: UTF8.self)
        // The command name is in parentheses and may hold spaces: fields count from after it.
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let state = fields[0].first, let start = UInt64(fields[19]) else { return nil }
        return (state, start)
    }
}
