import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// A command whose stdout is read line by line while it runs, so a test can act (kill the
/// registry) at a chosen point of a transfer. It runs under `timeout -s KILL`.
final class RunningCommand {
    private let process = Process()
    private let output: FileHandle
    private let errors: Pipe
    private var buffer = Data()
    private(set) var lines: [String] = []
    let started = Date()

    init(_ seconds: Int, _ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        process.arguments = ["-s", "KILL", String(seconds), executable] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        errors = Pipe()
        process.standardOutput = out
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        output = out.fileHandleForReading
        try process.run()
    }

    /// Reads lines until `predicate` holds for the lines so far or the output ends.
    func read(until predicate: ([String]) -> Bool) {
        while !predicate(lines) {
            let data = output.availableData
            if data.isEmpty { return }
            buffer.append(data)
            while let newline = buffer.firstIndex(of: 0x0A) {
                lines.append(String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self))
                buffer.removeSubrange(buffer.startIndex...newline)
            }
        }
    }

    /// Reads the rest and waits for the exit.
    func finish() -> CommandResult {
        read(until: { _ in false })
        let stderr = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return CommandResult(status: process.terminationStatus, stdout: lines.joined(separator: "\n"),
                             stderr: String(decoding: stderr, as: UTF8.self))
    }
}

/// JSON event lines of `catalyzer push/pull --json`.
struct Events {
    let objects: [[String: Any]]

    init(_ stdout: String) {
        objects = stdout.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    init(lines: [String]) { self.init(lines.joined(separator: "\n")) }

    func blobs(_ action: String? = nil) -> [[String: Any]] {
        objects.filter { $0["event"] as? String == "blob" && (action == nil || $0["action"] as? String == action) }
    }

    var done: [String: Any]? { objects.first { $0["event"] as? String == "done" } }
    var plannedBlobs: Int? { objects.first { $0["event"] as? String == "plan" }?["blobs"] as? Int }
}

enum CLI {
    /// Runs `catalyzer` bounded by `seconds`.
    @discardableResult
    static func run(_ arguments: [String], stdin: Data? = nil, environment: [String: String] = [:], seconds: Int = 60) throws -> CommandResult {
        // No docker config from the machine leaks into a test unless it sets one.
        let environment = ["DOCKER_CONFIG": "/nonexistent-docker-config"].merging(environment) { $1 }
        return try Command.bounded(seconds, Command.binary("catalyzer"), arguments, stdin: stdin, environment: environment)
    }

    static func start(_ arguments: [String], seconds: Int = 60) throws -> RunningCommand {
        try RunningCommand(seconds, Command.binary("catalyzer"), arguments, environment: ["DOCKER_CONFIG": "/nonexistent-docker-config"])
    }
}

/// A store with one image made from the test fixtures.
struct SourceImage {
    let store: ImageStore
    let name: String
    let memory: String

    static func make(in directory: TemporaryDirectory, name: String = "fn", bytes: [UInt8], chunkSize: Int = 64 << 10) throws -> SourceImage {
        let memory = directory.file("\(name).mem")
        try Data(bytes).write(to: URL(fileURLWithPath: memory))
        let store = ImageStore(root: directory.file("store-a"))
        var options = ImageCreateOptions()
        options.chunkSize = chunkSize
        _ = try store.createImage(named: name, fromFile: memory, options: options)
        return SourceImage(store: store, name: name, memory: memory)
    }

    var digest: Digest { get throws { try store.manifestDescriptor(named: name).digest } }
}

/// Exports `name` from `store` and compares it with the file `memory`.
func exportMatches(_ store: ImageStore, _ name: String, _ memory: String, in directory: TemporaryDirectory) throws -> Bool {
    let out = directory.file("export-\(name)-\(UInt32.random(in: 0...UInt32.max))")
    try store.open(name).export(to: out)
    defer { unlink(out) }
    return try Data(contentsOf: URL(fileURLWithPath: out)) == Data(contentsOf: URL(fileURLWithPath: memory))
}
