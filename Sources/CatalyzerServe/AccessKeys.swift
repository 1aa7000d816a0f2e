import Foundation
import Glibc

/// The keys `--auth-keys FILE` lists: one `ACCESS_KEY_ID SECRET_ACCESS_KEY` per line (spaces or
/// tabs between), blank lines and `#` comments ignored. The file holds secrets, so a file that its
/// group or other users can read is refused, as ssh refuses a readable private key.
public struct AccessKeys: Sendable {
    public private(set) var secrets: [String: String]

    public init(_ secrets: [String: String]) {
        self.secrets = secrets
    }

    public enum LoadError: Error, Equatable, CustomStringConvertible {
        case unreadable(path: String, reason: String)
        case tooOpen(path: String, mode: UInt32)
        case malformed(path: String, line: Int)
        case duplicate(path: String, line: Int, accessKey: String)
        case empty(path: String)

        public var description: String {
            switch self {
            case .unreadable(let path, let reason): "cannot read the --auth-keys file \(path): \(reason)"
            case .tooOpen(let path, let mode):
                "the --auth-keys file \(path) holds secret keys but its mode is \(String(mode, radix: 8)), readable by its group or others; run `chmod 600 \(path)`"
            case .malformed(let path, let line):
                "\(path):\(line): expected `ACCESS_KEY_ID SECRET_ACCESS_KEY` (two fields; `#` starts a comment)"
            case .duplicate(let path, let line, let accessKey): "\(path):\(line): access key \(accessKey) is listed twice"
            case .empty(let path): "the --auth-keys file \(path) lists no keys; every request would be refused"
            }
        }
    }

    /// Reads and checks the file at `path`.
    public static func load(path: String) throws(LoadError) -> AccessKeys {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        guard descriptor >= 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        guard status.st_mode & S_IFMT == S_IFREG else { throw .unreadable(path: path, reason: "not a regular file") }
        guard status.st_mode & 0o077 == 0 else { throw .tooOpen(path: path, mode: UInt32(status.st_mode & 0o7777)) }
        guard status.st_size <= 1 << 20 else { throw .unreadable(path: path, reason: "larger than 1 MiB") }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(descriptor, &buffer, buffer.count)
            if count < 0 {
                if errno == EINTR { continue }
                throw .unreadable(path: path, reason: String(cString: strerror(errno)))
            }
            if count == 0 { break }
            bytes += buffer[0..<count]
        }
        return try parse(String(decoding: bytes, as: UTF8.self), path: path)
    }

    public static func parse(_ text: String, path: String) throws(LoadError) -> AccessKeys {
        var secrets: [String: String] = [:]
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            if fields.isEmpty { continue }
            guard fields.count == 2 else { throw .malformed(path: path, line: index + 1) }
            let key = String(fields[0])
            guard secrets[key] == nil else { throw .duplicate(path: path, line: index + 1, accessKey: key) }
            secrets[key] = String(fields[1])
        }
        guard !secrets.isEmpty else { throw .empty(path: path) }
        return AccessKeys(secrets)
    }
}
