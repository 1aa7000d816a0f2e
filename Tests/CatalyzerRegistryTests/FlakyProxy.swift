import CatalyzerTestSupport
import Foundation
import Glibc

/// An HTTP proxy in front of a registry that answers the first request for every blob with
/// `503 Service Unavailable` (stdlib Python), to show that transfers retry 5xx with backoff.
final class FlakyProxy: @unchecked Sendable {
    let port: Int
    let directory: String
    private var process: Process?

    var address: String { "127.0.0.1:\(port)" }
    /// Requests answered 503, one per line.
    var refused: [String] {
        ((try? String(contentsOfFile: directory + "/refused.log", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    init(directory: String, upstream: String) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Self.script.write(toFile: directory + "/proxy.py", atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        process.arguments = ["-s", "KILL", "300", "python3", directory + "/proxy.py", upstream, directory + "/refused.log", directory + "/port"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        var port = 0
        let deadline = Date().addingTimeInterval(10)
        while port == 0 && Date() < deadline && process.isRunning {
            port = (try? String(contentsOfFile: directory + "/port", encoding: .utf8)).flatMap { Int($0) } ?? 0
            if port == 0 { usleep(20_000) }
        }
        self.port = port
        self.process = process
        guard port != 0 else {
            stop()
            throw CocoaError(.executableLoad, userInfo: [NSLocalizedDescriptionKey: "the flaky proxy did not start"])
        }
    }

    deinit { stop() }

    func stop() {
        guard let process else { return }
        killTree(process)
        self.process = nil
    }

    private static let script = #"""
        import http.client, http.server, os, sys, threading
        upstream, log_file, port_file = sys.argv[1:4]
        seen, lock = set(), threading.Lock()
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def forward(self):
                if "/blobs/sha256:" in self.path and "/uploads/" not in self.path:
                    with lock:
                        first = (self.command, self.path) not in seen
                        seen.add((self.command, self.path))
                    if first:
                        with open(log_file, "a") as log:
                            log.write(self.command + " " + self.path + "\n")
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                connection = http.client.HTTPConnection(upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value.replace("http://" + upstream, "http://" + self.headers["Host"]))
                self.send_header("Content-Length", str(len(data)) if self.command != "HEAD" else response.getheader("Content-Length", "0"))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()
            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = forward
            def log_message(self, *args):
                pass
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        with open(port_file + ".tmp", "w") as f:
            f.write(str(server.server_address[1]))
        os.rename(port_file + ".tmp", port_file)
        server.serve_forever()
        """#
}
