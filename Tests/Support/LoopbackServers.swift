import Foundation
import Glibc

/// Servers on the host's loopback for the network tests, in one host python3 process: an HTTP
/// server (GET answers `hello-from-host`, POST echoes its body), a TCP echo and a UDP echo, each
/// on a free port of 127.0.0.1, and a TCP echo on ::1. `stop()` (or the end of the test process) ends it: it exits when
/// its stdin closes.
public final class LoopbackServers: @unchecked Sendable {
    public let httpPort: Int
    public let tcpEchoPort: Int
    public let udpEchoPort: Int
    public let tcpEcho6Port: Int
    private let process: Process
    private let input: Pipe

    static let script = """
        import http.server, socket, socketserver, sys, threading
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"hello-from-host"
                self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
                self.wfile.write(body)
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
                self.wfile.write(body)
            def log_message(self, *args): pass
        class Echo(socketserver.BaseRequestHandler):
            def handle(self):
                while True:
                    data = self.request.recv(65536)
                    if not data: return
                    self.request.sendall(data)
        class Threaded(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 512
        http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        echo = Threaded(("127.0.0.1", 0), Echo)
        class Threaded6(Threaded):
            address_family = socket.AF_INET6
        echo6 = Threaded6(("::1", 0), Echo)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))
        def udp_echo():
            while True:
                data, peer = udp.recvfrom(65536)
                udp.sendto(data, peer)
        for target in (http_server.serve_forever, echo.serve_forever, echo6.serve_forever, udp_echo):
            threading.Thread(target=target, daemon=True).start()
        print(http_server.server_address[1], echo.server_address[1], udp.getsockname()[1], echo6.server_address[1], flush=True)
        sys.stdin.read()
        """

    public init() throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", Self.script]
        input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        let line = Self.readLine(output.fileHandleForReading)
        let ports = line.split(separator: " ").compactMap { Int($0) }
        guard ports.count == 4 else {
            process.terminate()
            throw LoopbackServerError(description: "the loopback servers did not start (they printed \(line.debugDescription))")
        }
        (httpPort, tcpEchoPort, udpEchoPort, tcpEcho6Port) = (ports[0], ports[1], ports[2], ports[3])
    }

    private static func readLine(_ handle: FileHandle) -> String {
        var bytes: [UInt8] = []
        while let byte = try? handle.read(upToCount: 1), let first = byte.first, first != 0x0A { bytes.append(first) }
        return String(decoding: bytes, as: UTF8.self)
    }

    public func stop() {
        try? input.fileHandleForWriting.close()
        process.terminate()
        process.waitUntilExit()
    }

    deinit { if process.isRunning { stop() } }
}

public struct LoopbackServerError: Error, CustomStringConvertible {
    public let description: String
}

/// dnsmasq on a free port of 127.0.0.1, answering `A` queries for names under `catalyzer.test`
/// with fixed documentation addresses (never connected to) and nothing else: no upstream, no
/// /etc/hosts, no daemon mode.
public final class StubResolver: @unchecked Sendable {
    public let port: Int
    private let pid: pid_t
    public static let answers = ["api.catalyzer.test": "192.0.2.10", "db.catalyzer.test": "198.51.100.7"]

    public init() throws {
        guard let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw LoopbackServerError(description: "REQUIREMENT MISSING: dnsmasq (apt-get install dnsmasq-base; Scripts/bootstrap.sh installs it)")
        }
        for _ in 0..<5 {
            let port = Int.random(in: 20000...30000)
            let arguments = [dnsmasq, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces",
                             "--listen-address=127.0.0.1", "--port=\(port)", "--user=root", "--pid-file=", "--log-facility=/dev/null"]
                + Self.answers.map { "--address=/\($0.key)/\($0.value)" }
            // Spawned directly: dnsmasq closes the fds it inherits, which Foundation's Process takes
            // for its exit and then waits for it, blocking every other Process of the test run.
            let pid = try Self.spawn(arguments)
            for _ in 0..<50 {
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid { break }  // exited: the port was taken
                if Self.answers(port: port) { self.port = port; self.pid = pid; return }
                usleep(20_000)
            }
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        throw LoopbackServerError(description: "dnsmasq did not start answering on a loopback port after 5 tries")
    }

    private static func spawn(_ arguments: [String]) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd in [Int32(0), 1, 2] { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0) }
        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let result = posix_spawn(&pid, arguments[0], &actions, nil, argv, environ)
        guard result == 0 else { throw LoopbackServerError(description: "cannot start dnsmasq: \(String(cString: strerror(result)))") }
        return pid
    }

    /// Whether something answers a DNS query on 127.0.0.1:`port` (a UDP probe).
    private static func answers(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        // A query for api.catalyzer.test, type A.
        let query: [UInt8] = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3] + Array("api".utf8) + [9] + Array("catalyzer".utf8)
            + [4] + Array("test".utf8) + [0, 0, 1, 0, 1]
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { name in
                query.withUnsafeBytes { bytes in
                    sendto(fd, bytes.baseAddress, bytes.count, 0, name, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        guard sent == query.count else { return false }
        var buffer = [UInt8](repeating: 0, count: 512)
        return recv(fd, &buffer, buffer.count, 0) > 12
    }

    private var stopped = false

    public func stop() {
        guard !stopped else { return }
        stopped = true
        kill(pid, SIGKILL)  // it holds nothing to clean up (and a spawned child inherits a blocked SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    deinit { stop() }
}
