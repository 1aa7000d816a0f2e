import CatalyzerTestSupport
import Foundation
import Glibc
import Testing

/// `catalyzer serve` driven by real clients: boto3, the AWS CLI and raw HTTP, against restored
/// instances of hello, heavy and sleepy. Serialized: the machine has two cores, and a daemon per
/// test keeps each test's flags its own.
@Suite("catalyzer serve", .serialized)
struct ServeTests {
    @Test("boto3: invoke hello and heavy as catalyzer invoke answers; handler errors; unknown function; list and get; ARNs, qualifiers, DryRun, Event, Tail")
    func boto3() throws {
        let scene = try ServeScene.get()
        let daemon = try scene.daemon()
        defer { #expect(daemon.stop() == 0) }
        #expect(daemon.stderr.contains("unauthenticated"))
        let arn = "arn:aws:lambda:us-east-1:123456789012:function:hello"
        let results = try LambdaClient.run(daemon.endpoint, [
            ["op": "invoke", "function": "hello", "payload": #"{"name": "Ada"}"#],
            ["op": "invoke", "function": "heavy", "payload": #"{"customer": "customer-42"}"#],
            ["op": "invoke", "function": "hello", "payload": #"{"raise": "boom"}"#],
            ["op": "invoke", "function": "nope", "payload": "{}"],
            ["op": "list"],
            ["op": "get", "function": "heavy"],
            ["op": "invoke", "function": arn, "payload": #"{"name": "Arn"}"#, "qualifier": "$LATEST"],
            ["op": "invoke", "function": "hello", "payload": "{}", "qualifier": "7"],
            ["op": "invoke", "function": "hello", "payload": "{}", "type": "DryRun"],
            ["op": "invoke", "function": "hello", "payload": "{}", "type": "Event"],
            ["op": "invoke", "function": "sleepy", "payload": #"{"log": "a line for the tail"}"#, "log": "Tail"],
            ["op": "invoke", "function": "hello", "payload": "{\n  \"name\": \"Pretty\"\n}"],
            ["op": "invoke", "function": "sleepy", "payload": #"{"exit": 3}"#],
            ["op": "invoke", "function": "broken", "payload": "{}"],
            ["op": "invoke", "function": "hello", "payload": #"{"name": "Still"}"#],
        ])
        #expect(results[0]["status"] as? Int == 200 && results[0]["functionError"] is NSNull && results[0]["version"] as? String == "$LATEST")
        #expect(LambdaClient.value(results[0]["payload"] as? String) == (try scene.invokeResult("hello", #"{"name": "Ada"}"#)))
        #expect(LambdaClient.value(results[1]["payload"] as? String) == (try scene.invokeResult("heavy", #"{"customer": "customer-42"}"#)))
        #expect(results[2]["status"] as? Int == 200 && results[2]["functionError"] as? String == "Unhandled")
        let raised = try #require(LambdaClient.value(results[2]["payload"] as? String) as? [String: Any])
        #expect(raised["errorType"] as? String == "ValueError")
        #expect(raised["errorMessage"] as? String == "asked to fail: boom")
        // One entry per frame, the handler's own; not the runner's, not the header.
        let trace = try #require(raised["stackTrace"] as? [String])
        #expect(trace.count == 1 && trace[0].hasPrefix("  File \"/functions/hello.py\", line ") && trace[0].contains("raise ValueError"), "\(trace)")
        #expect(results[3]["error"] as? String == "ResourceNotFoundException" && results[3]["httpStatus"] as? Int == 404)
        #expect((results[3]["message"] as? String)?.contains("function:nope") == true)
        let listed = try #require(results[4]["functions"] as? [[String: Any]])
        #expect(listed.compactMap { $0["FunctionName"] as? String } == ["broken", "heavy", "hello", "sleepy"])
        #expect(listed.allSatisfy { $0["MemorySize"] as? Int == 128 && $0["Version"] as? String == "$LATEST" && $0["PackageType"] as? String == "Image" })
        let configuration = try #require(results[5]["configuration"] as? [String: Any])
        #expect(configuration["FunctionName"] as? String == "heavy" && configuration["Runtime"] as? String == "python3.11")
        #expect((configuration["FunctionArn"] as? String)?.hasSuffix(":function:heavy") == true)
        #expect((results[5]["code"] as? [String: Any])?["ImageUri"] as? String != nil)
        #expect(LambdaClient.value(results[6]["payload"] as? String) == LambdaClient.value(#"{"greeting": "Hello, Arn!", "length": 3}"#))
        #expect(results[7]["error"] as? String == "ResourceNotFoundException")
        #expect(results[8]["status"] as? Int == 204)
        #expect(results[9]["status"] as? Int == 202)
        #expect(results[10]["status"] as? Int == 200)
        #expect((results[10]["log"] as? String)?.contains("a line for the tail") == true, "\(results[10])")
        #expect(LambdaClient.value(results[11]["payload"] as? String) == LambdaClient.value(#"{"greeting": "Hello, Pretty!", "length": 6}"#))
        // An instance that dies is a function error; an image that cannot start is the
        // service's 500; neither stops the daemon.
        #expect(results[12]["status"] as? Int == 200 && results[12]["functionError"] as? String == "Unhandled", "\(results[12])")
        let died = try #require(LambdaClient.value(results[12]["payload"] as? String) as? [String: String])
        #expect(died["errorType"] == "Runtime.ExitError" && died["errorMessage"]?.contains("exited with status 3") == true, "\(died)")
        #expect(results[13]["error"] as? String == "ServiceException" && results[13]["httpStatus"] as? Int == 500, "\(results[13])")
        #expect((results[13]["message"] as? String)?.contains("broken") == true)
        #expect(LambdaClient.value(results[14]["payload"] as? String) == LambdaClient.value(#"{"greeting": "Hello, Still!", "length": 5}"#))
        let ids = results.compactMap { $0["requestId"] as? String }
        #expect(Set(ids).count == ids.count && ids.allSatisfy { UUID(uuidString: $0) != nil })
    }

    @Test("raw HTTP: 413 over 6 MB, 400 for malformed JSON, 404 for unknown routes, /healthz, /metrics")
    func rawHTTP() throws {
        let scene = try ServeScene.get()
        // Parked VMs idle for 300 ms are trimmed; the last /metrics shows it.
        let daemon = try scene.daemon(["--trim-after", "300ms"])
        defer { #expect(daemon.stop() == 0) }
        let results = try LambdaClient.run(daemon.endpoint, [
            ["op": "http", "method": "POST", "path": "/2015-03-31/functions/hello/invocations", "size": 6_291_457],
            ["op": "http", "method": "POST", "path": "/2015-03-31/functions/hello/invocations", "size": 6_291_456],
            ["op": "http", "method": "POST", "path": "/2015-03-31/functions/hello/invocations", "body": "{not json"],
            ["op": "http", "method": "POST", "path": "/2015-03-31/functions/hello/invocations", "body": ""],
            ["op": "http", "path": "/nothing/here"],
            ["op": "http", "path": "/healthz"],
            ["op": "invoke", "function": "hello", "payload": "{not json"],
            ["op": "http", "path": "/metrics"],
            // Longer than a pipe holds: the request reaches the fork through a file.
            ["op": "http", "method": "POST", "path": "/2015-03-31/functions/hello/invocations",
             "body": #"{"name": ""# + String(repeating: "a", count: 100_000) + #""}"#],
            // Pipelined on one connection: invokes answered from the event loop and requests
            // Hummingbird answers, interleaved, come back in order.
            ["op": "pipelined", "requests": [
                ["path": "/2015-03-31/functions/hello/invocations", "body": #"{"name": "one"}"#],
                ["method": "GET", "path": "/healthz"],
                ["path": "/2015-03-31/functions/hello/invocations", "body": #"{"name": "three"}"#],
                ["path": "/2015-03-31/functions/hello/invocations", "body": "{}", "headers": ["X-Amz-Invocation-Type": "DryRun"]],
                ["path": "/2015-03-31/functions/hello/invocations", "body": #"{"name": "five"}"#],
            ] as [[String: Any]]],
        ])
        func header(_ result: [String: Any], _ name: String) -> String? {
            (result["headers"] as? [String: String])?.first { $0.key.lowercased() == name.lowercased() }?.value
        }
        #expect(results[0]["status"] as? Int == 413 && header(results[0], "x-amzn-ErrorType") == "RequestTooLargeException")
        #expect(results[1]["status"] as? Int == 200, "exactly 6 MB is allowed: \(results[1]["status"] ?? "")")
        #expect(results[2]["status"] as? Int == 400 && header(results[2], "x-amzn-ErrorType") == "InvalidRequestContentException")
        let body = try #require(LambdaClient.value(results[2]["body"] as? String) as? [String: String])
        #expect(body["Type"] == "User" && body["Message"]?.isEmpty == false)
        #expect(results[3]["status"] as? Int == 200 && LambdaClient.value(results[3]["body"] as? String) == LambdaClient.value(#"{"greeting": "Hello, world!", "length": 5}"#))
        #expect(header(results[3], "x-amzn-RequestId").flatMap(UUID.init(uuidString:)) != nil)
        #expect(header(results[3], "X-Amz-Executed-Version") == "$LATEST" && header(results[3], "Content-Type") == "application/json")
        #expect(results[4]["status"] as? Int == 404)
        #expect(results[5]["status"] as? Int == 200 && results[5]["body"] as? String == "ok")
        #expect(results[6]["error"] as? String == "InvalidRequestContentException")
        let metrics = try #require(results[7]["body"] as? String)
        #expect(metrics.contains(#"catalyzer_invocations_total{function="hello"} 2"#), "\(metrics)")
        #expect(metrics.contains(#"catalyzer_request_errors_total{type="RequestTooLargeException"} 1"#))
        #expect(metrics.contains("catalyzer_invocations_in_flight 0"))
        #expect(metrics.contains(#"catalyzer_invocation_duration_seconds_count{function="hello"} 2"#))
        #expect(metrics.contains(#"catalyzer_instance_first_instruction_seconds_count{function="hello"}"#))
        let long = try #require(LambdaClient.value(results[8]["body"] as? String) as? [String: Any], "\(results[8])")
        #expect(results[8]["status"] as? Int == 200 && long["length"] as? Int == 100_000, "\(results[8]["status"] ?? "")")
        let pipelined = try #require(results[9]["answers"] as? [[String: Any]], "\(results[9])")
        #expect(pipelined.map { $0["status"] as? Int } == [200, 200, 200, 204, 200], "\(pipelined)")
        #expect(pipelined.count == 5 && (pipelined[1]["body"] as? String) == "ok")
        for (index, name) in [(0, "one"), (2, "three"), (4, "five")] where pipelined.count == 5 {
            let answer = LambdaClient.value(pipelined[index]["body"] as? String) as? [String: Any]
            #expect(answer?["greeting"] as? String == "Hello, \(name)!", "\(pipelined[index])")
        }
        usleep(1_000_000)
        let idle = try #require(try LambdaClient.one(daemon.endpoint, ["op": "http", "path": "/metrics"])["body"] as? String)
        let trimmed = idle.split(separator: "\n").first { $0.hasPrefix(#"catalyzer_service_pool_trimmed_vms_total{function="hello"} "#) }
        #expect(trimmed.flatMap { Double($0.split(separator: " ").last ?? "") }.map { $0 >= 1 } == true, "\(idle)")
    }

    @Test("SigV4: boto3 and the AWS CLI with a listed key; a wrong secret and an unknown key get 403; /healthz stays open")
    func authentication() throws {
        let scene = try ServeScene.get()
        let keys = try scene.keysFile([("AKIDSERVE1", "secret-one/+x"), ("AKIDSERVE2", "secret-two")])
        let daemon = try scene.daemon(["--auth-keys", keys])
        defer { #expect(daemon.stop() == 0) }
        #expect(daemon.stderr.contains("SigV4, 2 access key(s)"))
        let good = try LambdaClient.run(daemon.endpoint, [
            ["op": "invoke", "function": "hello", "payload": #"{"name": "Signed"}"#],
            ["op": "invoke", "function": "arn:aws:lambda:eu-west-1:123456789012:function:hello", "payload": "{}", "qualifier": "$LATEST"],
            ["op": "list"],
        ], key: "AKIDSERVE1", secret: "secret-one/+x")
        #expect(LambdaClient.value(good[0]["payload"] as? String) == LambdaClient.value(#"{"greeting": "Hello, Signed!", "length": 6}"#), "\(good[0])")
        #expect(good[1]["status"] as? Int == 200, "\(good[1])")
        #expect((good[2]["functions"] as? [Any])?.count == 4)
        let wrong = try LambdaClient.one(daemon.endpoint, ["op": "invoke", "function": "hello", "payload": "{}"], key: "AKIDSERVE2", secret: "not-it")
        #expect(wrong["error"] as? String == "InvalidSignatureException" && wrong["httpStatus"] as? Int == 403, "\(wrong)")
        let unknown = try LambdaClient.one(daemon.endpoint, ["op": "list"], key: "AKIDNOBODY", secret: "x")
        #expect(unknown["error"] as? String == "UnrecognizedClientException" && unknown["httpStatus"] as? Int == 403, "\(unknown)")
        let open = try LambdaClient.run(daemon.endpoint, [
            ["op": "http", "path": "/healthz"],
            ["op": "http", "method": "POST", "path": "/2015-03-31/functions/hello/invocations", "body": "{}"],
            ["op": "http", "path": "/metrics"],
            // Longer than a pipe holds: the request reaches the fork through a file.
            ["op": "http", "method": "POST", "path": "/2015-03-31/functions/hello/invocations",
             "body": #"{"name": ""# + String(repeating: "a", count: 100_000) + #""}"#],
        ])
        #expect(open[0]["status"] as? Int == 200)
        #expect(open[1]["status"] as? Int == 403 && (open[1]["headers"] as? [String: String])?["x-amzn-ErrorType"] == "InvalidSignatureException")
        #expect(open[2]["status"] as? Int == 403)

        // Debian's AWS CLI v2: the payload is base64 by default there, hence raw-in-base64-out.
        let directory = try TemporaryDirectory("serve-cli")
        defer { directory.remove() }
        let environment = ["AWS_ACCESS_KEY_ID": "AKIDSERVE2", "AWS_SECRET_ACCESS_KEY": "secret-two", "AWS_DEFAULT_REGION": "us-west-2",
                           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_PAGER": ""]
        let out = directory.file("out.json")
        let cli = try Command.bounded(120, "/usr/bin/aws", ["lambda", "invoke", "--endpoint-url", daemon.endpoint, "--function-name", "hello",
                                                            "--payload", #"{"name": "CLI"}"#, "--cli-binary-format", "raw-in-base64-out", out],
                                      environment: environment)
        #expect(cli.status == 0, "\(cli)")
        #expect(cli.stdout.contains("\"StatusCode\": 200"), "\(cli)")
        let written = try String(contentsOfFile: out, encoding: .utf8)
        #expect(LambdaClient.value(written) == LambdaClient.value(#"{"greeting": "Hello, CLI!", "length": 3}"#))
        let cliList = try Command.bounded(120, "/usr/bin/aws", ["lambda", "list-functions", "--endpoint-url", daemon.endpoint, "--output", "json"],
                                          environment: environment)
        #expect(cliList.status == 0 && cliList.stdout.contains("\"FunctionName\": \"sleepy\""), "\(cliList)")
        var wrongEnvironment = environment
        wrongEnvironment["AWS_SECRET_ACCESS_KEY"] = "nope"
        let refused = try Command.bounded(120, "/usr/bin/aws", ["lambda", "invoke", "--endpoint-url", daemon.endpoint, "--function-name", "hello",
                                                                "--payload", "{}", "--cli-binary-format", "raw-in-base64-out", out],
                                          environment: wrongEnvironment)
        #expect(refused.status != 0 && refused.stderr.contains("InvalidSignatureException"), "\(refused)")
    }

    @Test("refusals at start: no --auth-keys off loopback, a keys file others can read, bad flags; SIGINT exits 0")
    func startRefusals() throws {
        let scene = try ServeScene.get()
        let open = try serveRefusal(["--listen", "0.0.0.0:0"], environment: scene.environment)
        #expect(open.status != 0 && open.stderr.contains("--auth-keys"), "\(open)")
        let readable = try scene.keysFile([("AKID", "secret")], mode: 0o644)
        let loose = try serveRefusal(["--listen", "127.0.0.1:0", "--auth-keys", readable], environment: scene.environment)
        #expect(loose.status != 0 && loose.stderr.contains("chmod 600"), "\(loose)")
        // SIGINT (^C) drains like SIGTERM.
        let daemon = try scene.daemon()
        kill(daemon.process.processIdentifier, SIGINT)
        #expect(daemon.waitForExit(60) == 0, "\(daemon.stderr)")
        for flags in [["--pool", "-1"], ["--reuse", "0"], ["--max-instances", "0"], ["--listen", "nowhere"], ["--timeout", "soon"],
                      ["--trim-after", "0s"]] {
            let bad = try serveRefusal(flags, environment: scene.environment)
            #expect(bad.status != 0 && bad.stderr.lowercased().contains("error"), "\(flags): \(bad)")
        }
    }

    @Test("16 concurrent invocations each get their own answer; --max-instances 2 throttles the excess with 429")
    func concurrency() throws {
        let scene = try ServeScene.get()
        do {
            let daemon = try scene.daemon()
            defer { #expect(daemon.stop() == 0) }
            let calls: [[String: Any]] = (0..<16).map { ["op": "invoke", "function": "hello", "payload": #"{"name": "caller-\#($0)"}"#] }
            let results = try LambdaClient.run(daemon.endpoint, calls, parallel: true)
            for (index, result) in results.enumerated() {
                let name = "caller-\(index)"
                #expect(LambdaClient.value(result["payload"] as? String) == LambdaClient.value(#"{"greeting": "Hello, \#(name)!", "length": \#(name.count)}"#),
                        "\(index): \(result)")
            }
        }
        let daemon = try scene.daemon(["--max-instances", "2"])
        defer { #expect(daemon.stop() == 0) }
        let calls: [[String: Any]] = (0..<8).map { ["op": "invoke", "function": "sleepy", "payload": #"{"sleep": 1.5, "tag": \#($0)}"#] }
        let results = try LambdaClient.run(daemon.endpoint, calls, parallel: true)
        let throttled = results.filter { $0["error"] as? String == "TooManyRequestsException" }
        let answered = results.enumerated().filter { $0.element["status"] as? Int == 200 }
        #expect(throttled.count >= 1 && throttled.allSatisfy { $0["httpStatus"] as? Int == 429 }, "\(results)")
        #expect(answered.count >= 2 && answered.count + throttled.count == 8, "\(results)")
        for (index, result) in answered {
            #expect(LambdaClient.value(result["payload"] as? String) == LambdaClient.value(#"{"slept": 1.5, "tag": \#(index)}"#), "\(result)")
        }
        let metrics = try LambdaClient.one(daemon.endpoint, ["op": "http", "path": "/metrics"])
        #expect((metrics["body"] as? String)?.contains(#"catalyzer_throttles_total{function="sleepy"} \#(throttled.count)"#) == true)
    }

    @Test("--timeout 1s: a sleeping handler gets Lambda's timeout error while another invocation succeeds")
    func timeout() throws {
        let scene = try ServeScene.get()
        let daemon = try scene.daemon(["--timeout", "1s"])
        defer { #expect(daemon.stop() == 0) }
        let results = try LambdaClient.run(daemon.endpoint, [
            ["op": "invoke", "function": "sleepy", "payload": #"{"sleep": 5}"#],
            ["op": "invoke", "function": "hello", "payload": #"{"name": "Quick"}"#],
        ], parallel: true)
        #expect(results[0]["status"] as? Int == 200 && results[0]["functionError"] as? String == "Unhandled", "\(results[0])")
        let body = try #require(LambdaClient.value(results[0]["payload"] as? String) as? [String: String])
        #expect(body["errorType"] == "Sandbox.Timedout")
        let message = body["errorMessage"] ?? ""
        let requestId = results[0]["requestId"] as? String ?? "?"
        // Lambda reports the time the invocation took, at least the timeout (more when restore
        // or a loaded machine added to it).
        let pattern = #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "# + requestId + #" Task timed out after \d+\.\d\d seconds$"#
        #expect(message.range(of: pattern, options: .regularExpression) != nil, "\(message)")
        let seconds = Double(message.split(separator: " ").dropLast().last ?? "") ?? 0
        #expect(seconds >= 1.0 && seconds < 20.0, "\(message)")
        #expect(LambdaClient.value(results[1]["payload"] as? String) == LambdaClient.value(#"{"greeting": "Hello, Quick!", "length": 5}"#))
    }

    @Test("SIGTERM with invocations in flight: every one is answered 200, the Event one finishes, the daemon exits 0")
    func gracefulShutdown() throws {
        let scene = try ServeScene.get()
        let daemon = try scene.daemon()
        defer { daemon.stop() }
        let event = try LambdaClient.one(daemon.endpoint, ["op": "invoke", "function": "sleepy", "payload": #"{"sleep": 8}"#, "type": "Event"])
        #expect(event["status"] as? Int == 202)
        let box = ResultBox()
        let clients = Thread {
            box.set(Result { try LambdaClient.run(daemon.endpoint, (0..<4).map { ["op": "invoke", "function": "sleepy", "payload": #"{"sleep": 1.5, "tag": \#($0)}"#] },
                                                  parallel: true) })
        }
        clients.start()
        // Wait until all five are in flight, then SIGTERM.
        let deadline = Date().addingTimeInterval(60)
        var inFlight = 0
        while Date() < deadline {
            let metrics = try LambdaClient.one(daemon.endpoint, ["op": "http", "path": "/metrics"])
            let line = (metrics["body"] as? String)?.split(separator: "\n").first { $0.hasPrefix("catalyzer_invocations_in_flight ") }
            inFlight = line.flatMap { Double($0.split(separator: " ").last ?? "") }.map(Int.init) ?? 0
            if inFlight == 5 { break }
            usleep(50_000)
        }
        #expect(inFlight == 5)
        kill(daemon.process.processIdentifier, SIGTERM)
        let status = daemon.waitForExit(60)
        #expect(status == 0, "\(daemon.stderr)")
        let results = try box.wait().get()
        for (index, result) in results.enumerated() {
            #expect(result["status"] as? Int == 200 && LambdaClient.value(result["payload"] as? String) == LambdaClient.value(#"{"slept": 1.5, "tag": \#(index)}"#),
                    "\(result)")
        }
        // The synchronous ones were answered before the server stopped; the Event one (8 s) was
        // still running then, and the exit waited for it to finish.
        let log = daemon.stderr
        #expect(log.range(of: #"waiting for \d invocation\(s\) in flight"#, options: .regularExpression) != nil, "\(log)")
        let finished = try #require(log.range(of: "Event invocation of sleepy finished: ok"), "\(log)")
        let stopped = try #require(log.range(of: "stopped"), "\(log)")
        #expect(finished.upperBound <= stopped.lowerBound)
    }
}

/// A value handed from a thread to the test.
final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private let done = DispatchSemaphore(value: 0)
    private var value: Result<[[String: Any]], any Error>?

    func set(_ result: Result<[[String: Any]], any Error>) {
        lock.withLock { value = result }
        done.signal()
    }

    func wait() -> Result<[[String: Any]], any Error> {
        done.wait()
        return lock.withLock { value! }
    }
}
