import CatalyzerTestSupport
import Crypto
import Foundation
import Glibc

/// The token service of the distribution token-auth flow, for a registry configured with
/// `auth: token`: a small stdlib-Python HTTP server that checks basic credentials and hands out
/// a JWT minted here (ES256, signed with a key whose self-signed certificate the registry trusts
/// as `rootcertbundle`, carried in the `x5c` header). It logs each request's query, so a test can
/// see which scopes were asked for.
final class TokenServer: @unchecked Sendable {
    static let service = "catalyzer-test-registry"
    static let issuer = "catalyzer-test-issuer"

    let directory: String
    let port: Int
    let certificate: String
    private var process: Process?

    var realm: String { "http://127.0.0.1:\(port)/token" }
    var requestLog: String { directory + "/requests.log" }

    /// Makes the signing key and certificate, mints a token granting `actions` on `repositories`
    /// to `username`, and starts the server.
    init(directory: String, username: String, password: String, repositories: [String], actions: [String] = ["pull", "push"]) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let keyPath = directory + "/token.key"
        certificate = directory + "/token.pem"
        let made = try Command.bounded(30, "openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                                                       "-keyout", keyPath, "-out", certificate, "-days", "2", "-subj", "/CN=catalyzer token signer"])
        guard made.status == 0 else { throw CocoaError(.executableLoad, userInfo: [NSLocalizedDescriptionKey: "openssl: \(made)"]) }
        let key = try P256.Signing.PrivateKey(pemRepresentation: String(contentsOfFile: keyPath, encoding: .utf8))
        let pem = try String(contentsOfFile: certificate, encoding: .utf8)
        let der = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()

        func base64URL(_ data: Data) -> String {
            data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                .replacingOccurrences(of: "=", with: "")
        }
        let now = Int(Date().timeIntervalSince1970)
        let header: [String: Any] = ["alg": "ES256", "typ": "JWT", "x5c": [der]]
        let claims: [String: Any] = [
            "iss": Self.issuer, "sub": username, "aud": Self.service, "exp": now + 3600, "nbf": now - 60, "iat": now - 60,
            "jti": UUID().uuidString,
            "access": repositories.map { ["type": "repository", "name": $0, "actions": actions] },
        ]
        let input = base64URL(try JSONSerialization.data(withJSONObject: header)) + "." + base64URL(try JSONSerialization.data(withJSONObject: claims))
        let signature = try key.signature(for: Data(input.utf8)).rawRepresentation
        let token = input + "." + base64URL(signature)
        try #"{"token": "\#(token)", "expires_in": 3600}"#.write(toFile: directory + "/token.json", atomically: true, encoding: .utf8)

        let expected = "Basic " + Data("\(username):\(password)".utf8).base64EncodedString()
        try Self.script.write(toFile: directory + "/server.py", atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        process.arguments = ["-s", "KILL", "600", "python3", directory + "/server.py", directory + "/token.json", directory + "/requests.log",
                             expected, directory + "/port"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        var port = 0
        let deadline = Date().addingTimeInterval(10)
        while port == 0 && Date() < deadline && process.isRunning {
            port = (try? String(contentsOfFile: directory + "/port", encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
            if port == 0 { usleep(20_000) }
        }
        self.port = port
        self.process = process
        guard port != 0 else {
            stop()
            throw CocoaError(.executableLoad, userInfo: [NSLocalizedDescriptionKey: "the token server did not start"])
        }
    }

    deinit { stop() }

    func stop() {
        guard let process else { return }
        killTree(process)
        self.process = nil
    }

    /// The queries of the token requests served, one per line (`OK ...` or `DENIED ...`).
    var requests: [String] {
        ((try? String(contentsOfFile: requestLog, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    private static let script = #"""
        import sys, http.server, urllib.parse
        token_file, log_file, expected, port_file = sys.argv[1:5]
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                query = urllib.parse.urlsplit(self.path).query
                ok = self.headers.get("Authorization") == expected
                with open(log_file, "a") as log:
                    log.write(("OK " if ok else "DENIED ") + urllib.parse.unquote(query) + "\n")
                if not ok:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = open(token_file, "rb").read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *args):
                pass
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        with open(port_file + ".tmp", "w") as f:
            f.write(str(server.server_address[1]))
        import os
        os.rename(port_file + ".tmp", port_file)
        server.serve_forever()
        """#
}
