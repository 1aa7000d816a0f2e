import CatalyzerRuntime
@testable import CatalyzerServe
import Foundation
import HTTPTypes
import NIOCore
import Testing

/// The pure pieces of the front end: events, names, addresses, error bodies.
@Suite("Lambda shapes")
struct ShapeTests {
    @Test("the event becomes one compact line of JSON; empty is {}; not JSON is refused")
    func events() throws {
        #expect(try EventPayload.normalize(Array("{\n  \"a\": [1, 2],\n  \"b\": \"x\\ny\"\n}".utf8)) == Array(#"{"a":[1,2],"b":"x\ny"}"#.utf8)
                || EventPayload.normalize(Array("{\n  \"a\": [1, 2],\n  \"b\": \"x\\ny\"\n}".utf8)) == Array(#"{"b":"x\ny","a":[1,2]}"#.utf8))
        #expect(try EventPayload.normalize([]) == Array("{}".utf8))
        #expect(try EventPayload.normalize(Array("  \n".utf8)) == Array("{}".utf8))
        #expect(try EventPayload.normalize(Array("42".utf8)) == Array("42".utf8))
        #expect(try EventPayload.normalize(Array("\"a/b\"".utf8)) == Array("\"a/b\"".utf8))
        #expect(throws: EventPayload.Failure.self) { try EventPayload.normalize(Array("{not json".utf8)) }
        #expect(!(try EventPayload.normalize(Array("[\"\\n\"]".utf8)).contains(0x0A)))
        // One-line valid JSON goes through unchanged (no Foundation round trip); anything else
        // is decided by Foundation as before.
        #expect(try EventPayload.normalize(Array(#"{"a": [1, 2.5e-3, -0, true, null], "b": "x\u00e9\"/"}"#.utf8))
                == Array(#"{"a": [1, 2.5e-3, -0, true, null], "b": "x\u00e9\"/"}"#.utf8))
        for valid in [#"{}"#, #"[]"#, #" 0 "#, #""é☃""#, #"{"k":{"k":[[[]]]}}"#, #"-1.5E+10"#, #""\\\/\b\f\n\r\t""#] {
            #expect(JSONSyntax.isValid(Array(valid.utf8)), "\(valid)")
        }
        for invalid in [#"{"a":1,}"#, #"[1,]"#, #"01"#, #"1."#, #".5"#, #"+1"#, #""\x""#, #""\u12g4""#, #"{"a" 1}"#, #"{1:2}"#,
                        #"tru"#, #"nul"#, #"[1 2]"#, #"{} {}"#, "\"a\u{01}b\"", #"""#, #"-"#, #"1e"#, ""] {
            #expect(!JSONSyntax.isValid(Array(invalid.utf8)), "\(invalid)")
            #expect(throws: EventPayload.Failure.self, "\(invalid)") { try EventPayload.normalize(Array(invalid.utf8) + [0x20, 0x78]) }
        }
        #expect(!JSONSyntax.isValid([0x22, 0xC3, 0x28, 0x22]), "invalid UTF-8")
        #expect(!JSONSyntax.isValid(Array(String(repeating: "[", count: 600).utf8) + Array(String(repeating: "]", count: 600).utf8)), "too deep")
        #expect(SigV4.hex([0x00, 0x0f, 0xa5, 0xff]) == "000fa5ff")
    }

    @Test("request ids are distinct lowercase version-4 UUIDs")
    func requestIds() {
        let ids = (0..<1000).map { _ in RequestID.make() }
        #expect(Set(ids).count == ids.count)
        for id in ids.prefix(50) {
            let parsed = UUID(uuidString: id)
            #expect(parsed != nil && id == id.lowercased() && id.count == 36, "\(id)")
            let bytes = parsed.map { withUnsafeBytes(of: $0.uuid) { Array($0) } } ?? []
            #expect(bytes.count == 16 && bytes[6] >> 4 == 4 && bytes[8] >> 6 == 2, "\(id): not version 4, RFC 4122 variant")
        }
    }

    @Test("an answer written straight to the socket is one well-formed HTTP/1.1 response; no field can split its head")
    func responseEncoding() {
        func text(_ status: HTTPResponse.Status, _ headers: HTTPFields, _ body: String, closing: Bool = false) -> String {
            let buffer = HTTP1ResponseEncoding.encode(status: status, headers: headers, body: Array(body.utf8), closing: closing,
                                                      allocator: ByteBufferAllocator())
            return String(buffer: buffer)
        }
        var headers: HTTPFields = [.contentType: "application/json", .amznRequestId: "id-1"]
        #expect(text(.ok, headers, #"{"a":1}"#)
                == "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-amzn-RequestId: id-1\r\nContent-Length: 7\r\n\r\n{\"a\":1}")
        // 204: no Content-Length (RFC 9110); a closing connection says so; stale framing fields are replaced.
        headers[.contentLength] = "99"
        headers[.connection] = "keep-alive"
        #expect(text(.noContent, headers, "", closing: true)
                == "HTTP/1.1 204 No Content\r\nContent-Type: application/json\r\nx-amzn-RequestId: id-1\r\nConnection: close\r\n\r\n")
        // A value with CR, LF or NUL (HTTPTypes replaces them with spaces) stays one field.
        headers = [.amzFunctionError: "Unhandled\r\nSet-Cookie: x=1\u{0}"]
        let injected = text(.ok, headers, "")
        #expect(injected.components(separatedBy: "\r\n").count == 5, "\(injected)")
        #expect(!injected.contains("\r\nSet-Cookie"), "\(injected)")
    }

    @Test("function names: plain, qualified, partial and full ARNs")
    func names() {
        #expect(FunctionName(parsing: "hello") == FunctionName(name: "hello"))
        #expect(FunctionName(parsing: "hello:$LATEST") == FunctionName(name: "hello", qualifier: "$LATEST"))
        #expect(FunctionName(parsing: "123456789012:function:hello") == FunctionName(name: "hello"))
        #expect(FunctionName(parsing: "arn:aws:lambda:us-east-1:123456789012:function:hello") == FunctionName(name: "hello"))
        #expect(FunctionName(parsing: "arn:aws:lambda:us-east-1:123456789012:function:hello:v2") == FunctionName(name: "hello", qualifier: "v2"))
        #expect(FunctionName(parsing: "arn:aws:s3:::bucket") == nil)
        #expect(FunctionName(parsing: "") == nil)
        #expect(FunctionName(name: "hello", qualifier: "$LATEST").effectiveQualifier(query: "1") != "$LATEST")
        #expect(FunctionName(name: "hello").effectiveQualifier(query: "$LATEST") == "$LATEST")
    }

    @Test("--listen: IPv4, IPv6, localhost; loopback detection; bad input is a clear error")
    func listen() throws {
        #expect(try ListenAddress(parsing: "127.0.0.1:0") == ListenAddress(host: "127.0.0.1", port: 0))
        #expect(try ListenAddress(parsing: "[::1]:9001").isLoopback)
        #expect(try ListenAddress(parsing: "localhost:9001").isLoopback)
        #expect(try ListenAddress(parsing: "127.1.2.3:9001").isLoopback)
        #expect(!(try ListenAddress(parsing: "0.0.0.0:9001").isLoopback))
        #expect(throws: ListenAddress.ParseError.badPort("70000")) { try ListenAddress(parsing: "127.0.0.1:70000") }
        #expect(throws: ListenAddress.ParseError.malformed("9001")) { try ListenAddress(parsing: "9001") }
        #expect(throws: ListenAddress.ParseError.notAnAddress("example.com")) { try ListenAddress(parsing: "example.com:1") }
        let open = ServeConfiguration(listen: try ListenAddress(parsing: "0.0.0.0:9001"), maxInstances: nil, timeoutSeconds: 3, accessKeys: nil)
        #expect(throws: ServeConfiguration.Refusal.self) { try open.check() }
        #expect("\(ServeConfiguration.Refusal.unauthenticatedNonLoopback(open.listen))".contains("--auth-keys"))
    }

    @Test("error bodies: Lambda's error shape, the timeout message, function errors")
    func bodies() throws {
        let notFound = LambdaError(FunctionServiceError.unknownFunction("nope"), arn: "arn:aws:lambda:local:000000000000:function:nope")
        #expect(notFound.status == 404 && notFound.type == "ResourceNotFoundException")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(notFound.body)) as? [String: String])
        #expect(object == ["Type": "User", "Message": "Function not found: arn:aws:lambda:local:000000000000:function:nope"])
        #expect(LambdaError(FunctionServiceError.shuttingDown, arn: "").status == 503)
        #expect(LambdaError(FunctionServiceError.cannotStart(function: "f", reason: "r"), arn: "").status == 500)
        #expect(LambdaError(FunctionServiceError.tooManyInstances(limit: 2), arn: "").status == 429)
        let timeout = try #require(try JSONSerialization.jsonObject(with: Data(FunctionErrorBody.timeout(
            requestId: "2cfef79a-2b94-11e6-9fba-07cd6747ff2e", elapsedSeconds: 1.004,
            at: Date(timeIntervalSince1970: 1_465_182_619.163)))) as? [String: String])
        #expect(timeout["errorMessage"] == "2016-06-06T03:10:19.163Z 2cfef79a-2b94-11e6-9fba-07cd6747ff2e Task timed out after 1.00 seconds")
        #expect(timeout["errorType"] == "Sandbox.Timedout")

        let traceback = ["Traceback (most recent call last):", "  File \"/opt/catalyzer/runner.py\", line 82, in serve",
                         "    respond(module.handler(event))", "  File \"/functions/f.py\", line 3, in handler",
                         "    raise ValueError(\"x\")", "    ^^^^^", "ValueError: x"]
        let handler = try #require(try JSONSerialization.jsonObject(with: Data(FunctionErrorBody.handler(
            type: "ValueError", message: "x", stackTrace: traceback))) as? [String: Any])
        #expect(handler["stackTrace"] as? [String] == ["  File \"/functions/f.py\", line 3, in handler\n    raise ValueError(\"x\")\n    ^^^^^\n"])
        #expect(handler["errorType"] as? String == "ValueError" && handler["errorMessage"] as? String == "x")
        let other = try #require(try JSONSerialization.jsonObject(with: Data(FunctionErrorBody.handler(
            type: "E", message: "m", stackTrace: ["not python"]))) as? [String: Any])
        #expect(other["stackTrace"] as? [String] == ["not python"])
    }
}

/// The hook a service uses to add gauges to /metrics. `ReportingService` is a stand-in with no
/// functions: what is under test is the exposition of its gauges, not a service.
@Suite("metrics hook")
struct MetricsHookTests {
    struct ReportingService: FunctionService, FunctionServiceMetrics {
        func functions() throws(FunctionServiceError) -> [FunctionDescription] { [] }
        func function(named name: String) throws(FunctionServiceError) -> FunctionDescription { throw .unknownFunction(name) }
        func invoke(_ request: FunctionRequest) async throws(FunctionServiceError) -> FunctionResponse { throw .shuttingDown }
        func gauges() -> [ServiceGauge] {
            [ServiceGauge(name: "pool_instances", help: "Instances parked", labels: ["function": "hello \"x\""], value: 3),
             ServiceGauge(name: "pool_instances", help: "Instances parked", labels: ["function": "heavy"], value: 1),
             ServiceGauge(name: "templates-parked", help: "Templates", value: 2)]
        }
    }

    @Test("service gauges are appended in Prometheus text format, names and label values made safe")
    func gauges() {
        let metrics = ServeMetrics()
        metrics.invoked(function: "hello")
        let text = String(decoding: metrics.exposition(service: ReportingService()), as: UTF8.self)
        #expect(text.contains(#"catalyzer_invocations_total{function="hello"} 1"#))
        #expect(text.contains("# TYPE catalyzer_service_pool_instances gauge\n"))
        #expect(text.components(separatedBy: "# TYPE catalyzer_service_pool_instances").count == 2)
        #expect(text.contains(#"catalyzer_service_pool_instances{function="hello \"x\""} 3.0"#))
        #expect(text.contains(#"catalyzer_service_pool_instances{function="heavy"} 1.0"#))
        #expect(text.contains("catalyzer_service_templates_parked 2.0"))
    }
}
