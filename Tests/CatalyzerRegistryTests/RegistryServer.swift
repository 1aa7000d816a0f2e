import CatalyzerTestSupport
import CatalyzerImage
import Foundation
import Glibc

/// Debian's `docker-registry` (the CNCF distribution registry) run by a test: its own config file,
/// a loopback port and a storage directory under `directory`. It runs under `timeout -s KILL`,
/// so it cannot outlive a crashed test run by long; `stop()` ends it, `crash()` kills it with
/// SIGKILL (as a machine failure would) and `start()` brings it back on the same port and storage.
final class RegistryServer: @unchecked Sendable {
    struct TLS {
        var certificate: String
        var key: String
    }

    let directory: String
    let port: Int
    let tls: TLS?
    let htpasswd: String?
    let token: TokenAuth?
    private var process: Process?

    /// `auth: token` settings: the token service's realm and the certificate its tokens are signed with.
    struct TokenAuth {
        var realm: String
        var service: String
        var issuer: String
        var certificate: String
    }

    var storage: String { directory + "/storage" }
    var configPath: String { directory + "/config.yml" }
    var logPath: String { directory + "/registry.log" }
    var address: String { "127.0.0.1:\(port)" }

    init(directory: String, tls: TLS? = nil, htpasswd: String? = nil, token: TokenAuth? = nil) throws {
        self.directory = directory
        self.tls = tls
        self.htpasswd = htpasswd
        self.token = token
        port = try Self.freePort()
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        var config = """
            version: 0.1
            log:
              level: warn
              accesslog:
                disabled: true
            storage:
              filesystem:
                rootdirectory: \(storage)
              delete:
                enabled: true
            http:
              addr: 127.0.0.1:\(port)
              secret: catalyzer-test-secret

            """
        if let tls {
            config += "  tls:\n    certificate: \(tls.certificate)\n    key: \(tls.key)\n"
        }
        if let htpasswd {
            config += "auth:\n  htpasswd:\n    realm: catalyzer-test\n    path: \(htpasswd)\n"
        }
        if let token {
            config += "auth:\n  token:\n    realm: \(token.realm)\n    service: \(token.service)\n    issuer: \(token.issuer)\n    rootcertbundle: \(token.certificate)\n"
        }
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        try start()
    }

    deinit { stop() }

    /// Starts the registry and waits (at most 10 s) until it accepts connections.
    func start() throws {
        precondition(process == nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        process.arguments = ["-s", "KILL", "600", "/usr/bin/docker-registry", "serve", configPath]
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if Self.accepts(port: port) { return }
            guard process.isRunning else { break }
            usleep(20_000)
        }
        let output = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        stop()
        throw CocoaError(.executableLoad, userInfo: [NSLocalizedDescriptionKey: "docker-registry did not start on \(address):\n\(output)"])
    }

    /// Kills the registry process itself with SIGKILL, mid-request if need be (as a machine
    /// failure would), and `timeout` above it.
    func crash() {
        guard let process else { return }
        killTree(process)
        self.process = nil
        // The kernel may take a moment to release the port.
        let deadline = Date().addingTimeInterval(5)
        while Self.accepts(port: port) && Date() < deadline { usleep(10_000) }
    }

    /// Stops the registry. SIGKILL, not SIGTERM: children of the test process may inherit a
    /// blocked SIGTERM, and nothing of the registry's state needs a clean exit.
    func stop() { crash() }

    func remove() {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The file holding blob `hex` in the registry's storage.
    func blobDataPath(_ hex: String) -> String {
        storage + "/docker/registry/v2/blobs/sha256/\(hex.prefix(2))/\(hex)/data"
    }

    private static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// A port the kernel just handed out for an ephemeral bind (then released for the registry).
    private static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "no free port"]) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// SIGKILLs a process started under `timeout` and the command `timeout` runs, and reaps it.
func killTree(_ process: Process) {
    let pid = process.processIdentifier
    let text = FileIO.readToEnd("/proc/\(pid)/task/\(pid)/children") ?? ""
    for child in text.split(separator: " ").compactMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
        kill(child, SIGKILL)
    }
    kill(pid, SIGKILL)
    process.waitUntilExit()
}

/// A CA and a server certificate for 127.0.0.1 made with openssl, and an htpasswd file made with
/// `htpasswd -B` (bcrypt, what the registry accepts).
enum TestCredentials {
    static let username = "catalyzer"
    static let password = "s3cret-Pa55"

    struct Files {
        var caCertificate: String
        var certificate: String
        var key: String
        var htpasswd: String
    }

    static func make(in directory: String) throws -> Files {
        func run(_ arguments: [String]) throws {
            let result = try Command.bounded(30, arguments[0], Array(arguments.dropFirst()))
            guard result.status == 0 else {
                throw CocoaError(.executableLoad, userInfo: [NSLocalizedDescriptionKey: "\(arguments.joined(separator: " ")) failed: \(result)"])
            }
        }
        let ca = directory + "/ca.pem", caKey = directory + "/ca.key"
        let key = directory + "/server.key", request = directory + "/server.csr", certificate = directory + "/server.pem"
        let extensions = directory + "/server.ext"
        try run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", caKey, "-out", ca, "-days", "2", "-subj", "/CN=catalyzer test CA"])
        try run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"])
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
            .write(toFile: extensions, atomically: true, encoding: .utf8)
        try run(["openssl", "x509", "-req", "-in", request, "-CA", ca, "-CAkey", caKey, "-CAcreateserial",
                 "-out", certificate, "-days", "2", "-extfile", extensions])
        let htpasswd = directory + "/htpasswd"
        let made = try Command.bounded(30, "htpasswd", ["-Bbn", username, password])
        guard made.status == 0 else { throw CocoaError(.executableLoad, userInfo: [NSLocalizedDescriptionKey: "htpasswd failed: \(made)"]) }
        try made.stdout.write(toFile: htpasswd, atomically: true, encoding: .utf8)
        return Files(caCertificate: ca, certificate: certificate, key: key, htpasswd: htpasswd)
    }
}
