import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Testing

/// A second registry with htpasswd (bcrypt) basic auth and TLS from a CA made at test time.
@Suite("registry auth and TLS", .serialized)
struct AuthTLSTests {
    @Test func basicAuthOverTLSWithFlagsAndDockerConfig() throws {
        let dir = try TemporaryDirectory("registry-auth")
        defer { dir.remove() }
        let files = try TestCredentials.make(in: dir.path)
        let registry = try RegistryServer(directory: dir.file("registry"),
                                          tls: .init(certificate: files.certificate, key: files.key), htpasswd: files.htpasswd)
        defer { registry.remove() }
        let source = try SourceImage.make(in: dir, bytes: try MemoryFixtures.zeroHeavy(2 << 20))
        let target = "\(registry.address)/private/fn:v1"
        let password = Data((TestCredentials.password + "\n").utf8)

        // The system CAs do not know the test CA.
        let untrusted = try CLI.run(["push", "fn", target, "--username", TestCredentials.username, "--password-stdin",
                                     "--store", source.store.root], stdin: password)
        #expect(untrusted.status == 1)
        #expect(untrusted.stderr.contains("TLS") && untrusted.stderr.contains("--ca-file"), "\(untrusted)")

        // Trusted, but anonymous: told to log in.
        let anonymous = try CLI.run(["push", "fn", target, "--ca-file", files.caCertificate, "--store", source.store.root])
        #expect(anonymous.status == 1)
        #expect(anonymous.stderr.contains("requires credentials") && anonymous.stderr.contains("--password-stdin"), "\(anonymous)")

        // A wrong password is named as such.
        let wrong = try CLI.run(["push", "fn", target, "--ca-file", files.caCertificate, "--username", TestCredentials.username,
                                 "--password-stdin", "--store", source.store.root], stdin: Data("nope\n".utf8))
        #expect(wrong.status == 1)
        #expect(wrong.stderr.contains("refused the credentials"), "\(wrong)")

        let pushed = try CLI.run(["push", "fn", target, "--ca-file", files.caCertificate, "--username", TestCredentials.username,
                                  "--password-stdin", "--quiet", "--store", source.store.root], stdin: password)
        #expect(pushed.status == 0, "\(pushed)")
        #expect(pushed.stdout == (try source.digest.description) + "\n")

        // Credentials from a docker config file (what `docker login` / `skopeo login` write).
        let dockerConfig = dir.file("docker")
        try FileManager.default.createDirectory(atPath: dockerConfig, withIntermediateDirectories: true)
        let auth = Data("\(TestCredentials.username):\(TestCredentials.password)".utf8).base64EncodedString()
        try #"{"auths": {"https://\#(registry.address)": {"auth": "\#(auth)"}}}"#.write(toFile: dockerConfig + "/config.json", atomically: true, encoding: .utf8)
        let storeB = ImageStore(root: dir.file("store-b"))
        let pulled = try CLI.run(["pull", target, "--ca-file", files.caCertificate, "--store", storeB.root, "--quiet"],
                                 environment: ["DOCKER_CONFIG": dockerConfig])
        #expect(pulled.status == 0, "\(pulled)")
        #expect(try CLI.run(["image", "verify", "fn-v1", "--store", storeB.root]).status == 0)
        #expect(try exportMatches(storeB, "fn-v1", source.memory, in: dir))

        // skopeo reads it with the same credentials and CA.
        let certs = dir.file("certs")
        try FileManager.default.createDirectory(atPath: certs, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: files.caCertificate, toPath: certs + "/ca.crt")
        let inspected = try Command.bounded(60, "skopeo", ["inspect", "--raw", "--cert-dir", certs,
                                                            "--creds", "\(TestCredentials.username):\(TestCredentials.password)", "docker://\(target)"])
        #expect(inspected.status == 0, "\(inspected)")
        #expect(Digest(of: Array(inspected.stdout.utf8)) == (try source.digest))
    }

    @Test func bearerTokenFlow() throws {
        let dir = try TemporaryDirectory("registry-token")
        defer { dir.remove() }
        let tokens = try TokenServer(directory: dir.file("tokens"), username: TestCredentials.username, password: TestCredentials.password,
                                     repositories: ["tok/fn", "tok/other"])
        defer { tokens.stop() }
        let registry = try RegistryServer(directory: dir.file("registry"), token: .init(
            realm: tokens.realm, service: TokenServer.service, issuer: TokenServer.issuer, certificate: tokens.certificate))
        defer { registry.remove() }
        let source = try SourceImage.make(in: dir, bytes: try MemoryFixtures.zeroHeavy(2 << 20))
        let password = Data((TestCredentials.password + "\n").utf8)

        // Anonymous: the token service refuses, and the user is told to log in.
        let anonymous = try CLI.run(["push", "fn", "\(registry.address)/tok/fn:v1", "--insecure", "--store", source.store.root])
        #expect(anonymous.status == 1)
        #expect(anonymous.stderr.contains("token server") && anonymous.stderr.contains("--password-stdin"), "\(anonymous)")

        let pushed = try CLI.run(["push", "fn", "\(registry.address)/tok/fn:v1", "--insecure", "--username", TestCredentials.username,
                                  "--password-stdin", "--json", "--store", source.store.root], stdin: password)
        #expect(pushed.status == 0, "\(pushed)")
        #expect(tokens.requests.contains("OK service=\(TokenServer.service)&scope=repository:tok/fn:pull,push"), "\(tokens.requests)")
        // A second repository: its blobs are mounted, with a token for both scopes.
        let mounted = try CLI.run(["push", "fn", "\(registry.address)/tok/other:v1", "--insecure", "--username", TestCredentials.username,
                                   "--password-stdin", "--json", "--store", source.store.root], stdin: password)
        #expect(mounted.status == 0, "\(mounted)")
        #expect(Events(mounted.stdout).blobs("mounted").count == Events(mounted.stdout).plannedBlobs)
        #expect(tokens.requests.contains("OK service=\(TokenServer.service)&scope=repository:tok/other:pull,push&scope=repository:tok/fn:pull"), "\(tokens.requests)")

        let storeB = ImageStore(root: dir.file("store-b"))
        let pulled = try CLI.run(["pull", "\(registry.address)/tok/other:v1", "--name", "fn", "--insecure", "--username", TestCredentials.username,
                                  "--password-stdin", "--quiet", "--store", storeB.root], stdin: password)
        #expect(pulled.status == 0, "\(pulled)")
        #expect(try exportMatches(storeB, "fn", source.memory, in: dir))
    }
}
