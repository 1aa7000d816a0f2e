import Foundation
import Glibc

/// The global flags of the OCI runtime command line, as runc takes them (before the command):
/// `--root DIR`, `--log FILE`, `--log-format text|json`, and `--systemd-cgroup`, `--debug`,
/// `--rootless VALUE`, accepted and without effect (a sandbox has no cgroup of the host's to
/// manage, and logs at one level).
struct RuntimeGlobals: Sendable {
    nonisolated(unsafe) static var current = RuntimeGlobals()

    var root = "/run/catalyzer-runtime"
    var logFile: String?
    var logFormat = "text"

    struct UsageError: Error, CustomStringConvertible {
        let description: String
    }

    /// Takes the global flags from the front of `arguments`; returns the rest.
    mutating func take(from arguments: [String]) throws -> [String] {
        var rest = arguments[...]
        while let first = rest.first, first.hasPrefix("-"), first != "-", first != "--" {
            let (name, inline) = first.contains("=")
                ? (String(first.prefix { $0 != "=" }), String(first.drop { $0 != "=" }.dropFirst()))
                : (first, nil as String?)
            func value() throws -> String {
                if let inline { return inline }
                rest = rest.dropFirst()
                guard let next = rest.first else { throw UsageError(description: "\(name) needs a value") }
                return next
            }
            switch name {
            case "--root": root = try value()
            case "--log": logFile = try value()
            case "--log-format":
                logFormat = try value()
                guard ["text", "json"].contains(logFormat) else { throw UsageError(description: "--log-format is text or json, not \(logFormat)") }
            case "--systemd-cgroup", "--debug": break
            case "--rootless", "--criu": _ = try value()
            case "-h", "--help", "--version", "-v": return Array(rest)
            default: throw UsageError(description: "unknown global flag \(name)")
            }
            rest = rest.dropFirst()
        }
        return Array(rest)
    }
}

/// Errors and warnings: to stderr, and to `--log` in its format (podman reads the JSON log).
enum RuntimeLog {
    static func write(_ level: String, _ message: String, globals: RuntimeGlobals = RuntimeGlobals.current) {
        FileHandle.standardError.write(Data("catalyzer-runtime: \(message)\n".utf8))
        guard let path = globals.logFile else { return }
        let time = ISO8601DateFormatter().string(from: Date())
        let line: String
        if globals.logFormat == "json" {
            let object = ["level": level, "msg": message, "time": time]
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            line = String(decoding: data, as: UTF8.self) + "\n"
        } else {
            line = "\(time) \(level): \(message)\n"
        }
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        _ = line.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
    }

    static func fail(_ message: String, globals: RuntimeGlobals = RuntimeGlobals.current) -> Never {
        write("error", message, globals: globals)
        exit(1)
    }
}
