import CatalyzerImage
import CatalyzerTestSupport
import Foundation
import Testing
@testable import CatalyzerRegistry

@Suite("references, challenges, credentials")
struct ReferenceTests {
    @Test func referencesParse() throws {
        let tagged = try ImageReference(parsing: "localhost:5000/functions/hello:v1")
        #expect(tagged.registry == "localhost:5000" && tagged.repository == "functions/hello" && tagged.reference == .tag("v1"))
        #expect(tagged.defaultImageName == "hello-v1")
        let latest = try ImageReference(parsing: "registry.example.com/a/b")
        #expect(latest.reference == .tag("latest") && latest.defaultImageName == "b")
        let hex = String(repeating: "ab", count: 32)
        let pinned = try ImageReference(parsing: "127.0.0.1:5000/x@sha256:\(hex)")
        #expect(pinned.reference == .digest(Digest("sha256:" + hex)!))
        #expect(pinned.description == "127.0.0.1:5000/x@sha256:\(hex)")
        #expect(try ImageReference(parsing: "docker://[::1]:5000/x:y").registry == "[::1]:5000")

        for bad in ["hello", "localhost:5000/Upper", "localhost:5000/x:bad tag", "localhost:5000/x@sha256:zz",
                    "localhost:99999/x", "localhost:5000/a//b", "localhost:5000/-a", "/x"] {
            #expect(throws: RegistryError.self, "\(bad)") { try ImageReference(parsing: bad) }
        }
    }

    @Test func challengesParse() {
        let bearer = AuthChallenge(header: #"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#)
        #expect(bearer?.isBearer == true)
        #expect(bearer?.parameters == ["realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:a/b:pull,push"])
        let basic = AuthChallenge(header: #"Basic realm="catalyzer \"test\"""#)
        #expect(basic?.isBasic == true && basic?.parameters["realm"] == #"catalyzer "test""#)
        #expect(AuthChallenge(header: "") == nil)
    }

    @Test func dockerConfigCredentials() throws {
        let dir = try TemporaryDirectory("docker-config")
        defer { dir.remove() }
        let path = dir.file("config.json")
        let auth = Data("ann:pa:ss".utf8).base64EncodedString()
        try #"{"auths": {"https://reg.example:5000/v1/": {"auth": "\#(auth)"}, "other.example": {"username": "bob", "password": "pw"}}}"#
            .write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try Credentials.fromDockerConfig(registry: "reg.example:5000", path: path) == Credentials(username: "ann", password: "pa:ss"))
        #expect(try Credentials.fromDockerConfig(registry: "other.example", path: path) == Credentials(username: "bob", password: "pw"))
        #expect(try Credentials.fromDockerConfig(registry: "unknown.example", path: path) == nil)
        #expect(try Credentials.fromDockerConfig(registry: "x", path: dir.file("missing.json")) == nil)
        try "{not json".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: RegistryError.self) { try Credentials.fromDockerConfig(registry: "x", path: path) }
    }
}
