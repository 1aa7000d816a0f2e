import CatalyzerServe
import Foundation
import Testing

/// The signature against AWS's published SigV4 test suite (credentials AKIDEXAMPLE, 20150830T123600Z,
/// us-east-1, service `service`), and the verifier's refusals.
@Suite("SigV4")
struct SigV4Tests {
    static let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    static let amzDate = "20150830T123600Z"

    static func suiteRequest(_ method: String, _ path: String, query: String = "") -> SigV4.Request {
        SigV4.Request(method: method, path: path, query: query,
                      headers: [("Host", "example.amazonaws.com"), ("X-Amz-Date", amzDate)], payloadHash: SigV4.emptyPayloadHash)
    }

    static func signature(_ request: SigV4.Request) -> String? {
        SigV4.signature(request, signedHeaders: ["host", "x-amz-date"], secret: secret, amzDate: amzDate, region: "us-east-1", service: "service")
    }

    @Test("published vectors: get-vanilla, post-vanilla, query order, empty query value, space in path")
    func vectors() {
        #expect(SigV4.canonicalRequest(Self.suiteRequest("GET", "/"), signedHeaders: ["host", "x-amz-date"])
                == "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\(SigV4.emptyPayloadHash)")
        #expect(Self.signature(Self.suiteRequest("GET", "/")) == "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        #expect(Self.signature(Self.suiteRequest("POST", "/")) == "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
        #expect(Self.signature(Self.suiteRequest("GET", "/", query: "Param2=value2&Param1=value1"))
                == "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
        #expect(Self.signature(Self.suiteRequest("POST", "/", query: "Param1=value1"))
                == "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11")
        #expect(Self.signature(Self.suiteRequest("GET", "/example space/"))
                == "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741")
        let authorization = SigV4.authorization(Self.suiteRequest("GET", "/"), accessKey: "AKIDEXAMPLE", secret: Self.secret,
                                                amzDate: Self.amzDate, region: "us-east-1", service: "service")
        #expect(authorization == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                + "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    }

    @Test("the canonical URI encodes the sent (already encoded) path once more, as for every service but S3")
    func doubleEncoding() {
        #expect(SigV4.canonicalURI("/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A1%3Afunction%3Ahello/invocations")
                == "/2015-03-31/functions/arn%253Aaws%253Alambda%253Aus-east-1%253A1%253Afunction%253Ahello/invocations")
        #expect(SigV4.canonicalURI("/2015-03-31/functions/") == "/2015-03-31/functions/")
        #expect(SigV4.canonicalURI("/a/./b/../c//d") == "/a/c/d")
        #expect(SigV4.canonicalQuery("Qualifier=%24LATEST&b=&a=x%20y") == "Qualifier=%24LATEST&a=x%20y&b=")
    }

    static func signedRequest(key: String = "AKID1", secret: String = "s3cret", date: Date = Date(), service: String = "lambda",
                              body: String = "{}") -> SigV4.Request {
        let amzDate = RequestAuthenticator.formatAmzDate(date)
        let hash = SigV4.sha256Hex(Array(body.utf8))
        var request = SigV4.Request(method: "POST", path: "/2015-03-31/functions/hello/invocations", query: "",
                                    headers: [("Host", "127.0.0.1:9001"), ("X-Amz-Date", amzDate), ("Content-Type", "application/json")],
                                    payloadHash: hash)
        let authorization = SigV4.authorization(request, accessKey: key, secret: secret, amzDate: amzDate, region: "eu-west-1", service: service)!
        request.headers.append(("Authorization", authorization))
        return request
    }

    @Test("the verifier accepts a good signature and refuses unknown keys, wrong secrets, tampering, skew and no header")
    func verifier() throws {
        let authenticator = RequestAuthenticator(keys: AccessKeys(["AKID1": "s3cret"]))
        #expect(try authenticator.verify(Self.signedRequest()) == "AKID1")
        #expect(throws: RequestAuthenticator.Failure.unknownKey("NOPE")) { try authenticator.verify(Self.signedRequest(key: "NOPE")) }
        #expect(throws: RequestAuthenticator.Failure.mismatch) { try authenticator.verify(Self.signedRequest(secret: "wrong")) }
        var tampered = Self.signedRequest()
        tampered.payloadHash = SigV4.sha256Hex(Array("{\"x\":1}".utf8))
        #expect(throws: RequestAuthenticator.Failure.mismatch) { try authenticator.verify(tampered) }
        #expect(throws: RequestAuthenticator.Failure.wrongService("s3")) { try authenticator.verify(Self.signedRequest(service: "s3")) }
        #expect(throws: RequestAuthenticator.Failure.missing) {
            try authenticator.verify(SigV4.Request(method: "GET", path: "/", query: "", headers: [("Host", "h")], payloadHash: SigV4.emptyPayloadHash))
        }
        let old = Self.signedRequest(date: Date().addingTimeInterval(-16 * 60))
        #expect {
            try authenticator.verify(old)
        } throws: { error in
            if case .skewed = error as? RequestAuthenticator.Failure { return true }
            return false
        }
        _ = try authenticator.verify(Self.signedRequest(date: Date().addingTimeInterval(14 * 60)))
        #expect(RequestAuthenticator.Failure.mismatch.lambdaError.type == "InvalidSignatureException")
        #expect(RequestAuthenticator.Failure.unknownKey("x").lambdaError.type == "UnrecognizedClientException")
        #expect(RequestAuthenticator.Failure.unknownKey("x").lambdaError.status == 403)
    }

    @Test("keys file: format, comments, errors, and a file others can read is refused")
    func keysFile() throws {
        let keys = try AccessKeys.parse("# comment\nAKID1 secret1\n\n  AKID2\tsecret2  # trailing\n", path: "k")
        #expect(keys.secrets == ["AKID1": "secret1", "AKID2": "secret2"])
        #expect(throws: AccessKeys.LoadError.malformed(path: "k", line: 1)) { try AccessKeys.parse("only-one-field\n", path: "k") }
        #expect(throws: AccessKeys.LoadError.duplicate(path: "k", line: 2, accessKey: "A")) { try AccessKeys.parse("A b\nA c\n", path: "k") }
        #expect(throws: AccessKeys.LoadError.empty(path: "k")) { try AccessKeys.parse("# nothing\n", path: "k") }
        let path = NSTemporaryDirectory() + "/catalyzer-keys-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try "AKID1 secret1\n".write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o644)
        #expect(throws: AccessKeys.LoadError.tooOpen(path: path, mode: 0o644)) { try AccessKeys.load(path: path) }
        #expect(AccessKeys.LoadError.tooOpen(path: path, mode: 0o644).description.contains("chmod 600"))
        chmod(path, 0o600)
        #expect(try AccessKeys.load(path: path).secrets == ["AKID1": "secret1"])
        #expect(throws: AccessKeys.LoadError.self) { try AccessKeys.load(path: path + ".missing") }
    }
}
