import CatalyzerRuntime
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging

/// The Lambda API over HTTP: routes, auth, payload checks, throttling, and the mapping from a
/// `FunctionService`'s outcomes to Lambda's responses. Routing is done here on the raw path
/// rather than by Hummingbird's router because a function name may be an ARN whose `:` arrive
/// percent-encoded, and SigV4 needs the path exactly as it was sent.
public struct LambdaResponder: HTTPResponder {
    public typealias Context = BasicRequestContext

    public let service: any FunctionService
    public let authenticator: RequestAuthenticator?
    public let gate: InvocationGate
    public let metrics: ServeMetrics
    public let documents: FunctionDocuments
    public let timeoutSeconds: Double
    public let logger: Logger

    /// Lambda's synchronous payload limit (6 MB).
    public static let payloadLimit = 6_291_456
    /// Bodies past the limit are still read (and hashed, so the signature can be checked before
    /// answering 413) up to this much; beyond it the connection is dropped instead.
    public static let drainLimit = 64 << 20
    /// The bytes of the instance's log `X-Amz-Log-Type: Tail` returns, as Lambda does.
    public static let logTailBytes = 4096

    public init(service: any FunctionService, authenticator: RequestAuthenticator?, gate: InvocationGate, metrics: ServeMetrics,
                documents: FunctionDocuments, timeoutSeconds: Double, logger: Logger) {
        self.service = service
        self.authenticator = authenticator
        self.gate = gate
        self.metrics = metrics
        self.documents = documents
        self.timeoutSeconds = timeoutSeconds
        self.logger = logger
    }

    enum Route {
        case health, metrics, list, get(String), invoke(String)
    }

    /// `/healthz`: answered before the body is read or auth is checked, so a load balancer or
    /// an orchestrator's probe needs no keys.
    static var healthy: Response {
        Response(status: .ok, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "ok")))
    }

    static func route(method: HTTPRequest.Method, path: String) -> Route? {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map { SigV4.percentDecode($0) }
        switch (method, segments.count) {
        case (.get, 1) where segments[0] == "healthz": return .health
        case (.get, 1) where segments[0] == "metrics": return .metrics
        case (.get, 2) where segments[0] == "2015-03-31" && segments[1] == "functions": return .list
        case (.get, 3) where segments[0] == "2015-03-31" && segments[1] == "functions":
            return segments[2].isEmpty ? .list : .get(segments[2])
        case (.post, 4) where segments[0] == "2015-03-31" && segments[1] == "functions" && segments[3] == "invocations"
            && !segments[2].isEmpty:
            return .invoke(segments[2])
        default: return nil
        }
    }

    /// The body, read whole: kept up to `payloadLimit` bytes, hashed to the end when a signature
    /// will be checked (`--auth-keys`; nothing else needs the hash). Read the same way by the
    /// async responder and by `InvokeFastPath`.
    struct Body {
        var bytes: [UInt8] = []
        var size = 0
        var hash = ""
        private var hasher: SHA256?

        init(hashing: Bool) { hasher = hashing ? SHA256() : nil }

        /// Adds a piece; false once past `drainLimit`, where reading on is not worth it.
        mutating func append(_ buffer: ByteBuffer) -> Bool {
            size += buffer.readableBytes
            guard size <= LambdaResponder.drainLimit else { return false }
            if hasher != nil { buffer.withUnsafeReadableBytes { hasher!.update(bufferPointer: $0) } }
            if size <= LambdaResponder.payloadLimit { bytes += buffer.readableBytesView }
            return true
        }

        /// The whole body is in.
        mutating func finish() {
            if let hasher { hash = SigV4.hex(hasher.finalize()) }
        }
    }

    enum BodyError: Error { case tooLarge }

    func read(_ body: RequestBody) async throws -> Body {
        var result = Body(hashing: authenticator != nil)
        for try await buffer in body {
            guard result.append(buffer) else { throw BodyError.tooLarge }
        }
        result.finish()
        return result
    }

    public func respond(to request: Request, context: Context) async throws -> Response {
        let requestId = RequestID.make()
        let (pathOnly, query) = Self.split(request.head.path ?? "/")
        guard let route = Self.route(method: request.method, path: pathOnly) else {
            return error(.notFound(method: request.method.rawValue, path: pathOnly), requestId: requestId)
        }
        if case .health = route { return Self.healthy }
        let body: Body
        do {
            body = try await read(request.body)
        } catch BodyError.tooLarge {
            // Not worth reading further: drop the connection rather than take more bytes.
            logger.warning("request body over \(Self.drainLimit) bytes; connection dropped", metadata: ["requestId": "\(requestId)"])
            throw BodyError.tooLarge
        }
        if let refusal = authenticationFailure(request.head, pathOnly: pathOnly, query: query, body: body, requestId: requestId) {
            return refusal.response
        }
        let queryItems = Self.queryItems(query)
        switch route {
        case .health: return Self.healthy
        case .metrics:
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                            body: .init(byteBuffer: ByteBuffer(bytes: metrics.exposition(service: service))))
        case .list:
            do {
                return json(documents.list(try service.functions()), requestId: requestId)
            } catch let failure {
                return error(LambdaError(failure, arn: "*"), requestId: requestId)
            }
        case .get(let text):
            switch resolve(text, qualifier: queryItems["Qualifier"]) {
            case .failure(let failure): return error(failure, requestId: requestId)
            case .success(let function): return json(documents.get(function), requestId: requestId)
            }
        case .invoke(let text):
            return await invoke(text, query: queryItems, headers: request.headers, body: body, requestId: requestId)
        }
    }

    /// The function a path names, or the 404 for it.
    func resolve(_ text: String, qualifier: String?) -> Result<FunctionDescription, LambdaError> {
        guard let name = FunctionName(parsing: text) else {
            return .failure(.resourceNotFound("Function not found: \(text)"))
        }
        if let qualifier = name.effectiveQualifier(query: qualifier), qualifier != FunctionName.latest {
            return .failure(.resourceNotFound("Function not found: \(documents.arn(name.name)):\(qualifier) (only \(FunctionName.latest) exists)"))
        }
        do {
            return .success(try service.function(named: name.name))
        } catch {
            return .failure(LambdaError(error, arn: documents.arn(name.name)))
        }
    }

    /// With `--auth-keys`: the refusal of a request whose SigV4 signature does not check out for
    /// a listed key (nil when it does, or without keys).
    func authenticationFailure(_ head: HTTPRequest, pathOnly: String, query: String, body: Body, requestId: String) -> Answer? {
        guard let authenticator else { return nil }
        var headers = head.headerFields.map { (name: $0.name.canonicalName, value: $0.value) }
        // HTTP/1's Host header arrives as the request's authority, not among its fields.
        if let authority = head.authority, !headers.contains(where: { $0.name == "host" }) {
            headers.append((name: "host", value: authority))
        }
        let claimed = head.headerFields[.amzContentSHA256]
        let payloadHash = claimed == "UNSIGNED-PAYLOAD" ? "UNSIGNED-PAYLOAD" : body.hash
        let signed = SigV4.Request(method: head.method.rawValue, path: pathOnly, query: query, headers: headers, payloadHash: payloadHash)
        do {
            _ = try authenticator.verify(signed)
            if let claimed, claimed != "UNSIGNED-PAYLOAD", claimed.lowercased() != body.hash { throw RequestAuthenticator.Failure.mismatch }
            return nil
        } catch let failure as RequestAuthenticator.Failure {
            logger.info("request refused: \(failure)", metadata: ["requestId": "\(requestId)"])
            return errorAnswer(failure.lambdaError, requestId: requestId)
        } catch {
            logger.info("request refused: \(error)", metadata: ["requestId": "\(requestId)"])
            return errorAnswer(RequestAuthenticator.Failure.mismatch.lambdaError, requestId: requestId)
        }
    }

    /// The path without its query, and the query.
    static func split(_ rawPath: String) -> (path: String, query: String) {
        (String(rawPath.prefix { $0 != "?" }), rawPath.firstIndex(of: "?").map { String(rawPath[rawPath.index(after: $0)...]) } ?? "")
    }

    enum InvocationType: String {
        case requestResponse = "RequestResponse", event = "Event", dryRun = "DryRun"
    }

    /// A response ready to send, in the form both the async responder and the event loop's fast
    /// path (`InvokeFastPath`) write.
    struct Answer: Sendable {
        var status: HTTPResponse.Status
        var headers: HTTPFields
        var body: [UInt8]

        var response: Response {
            body.isEmpty ? Response(status: status, headers: headers)
                : Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
        }
    }

    /// An invocation let through the gate: what answering it needs once the service is done.
    struct PendingInvocation: Sendable {
        let function: String
        let requestId: String
        let wantsTail: Bool
        let started: ContinuousClock.Instant
    }

    enum InvokeAdmission {
        case answer(Answer)
        /// Run the request, then `complete`: it holds a slot of the gate until then.
        case run(FunctionRequest, PendingInvocation)
        /// An Event invocation: answered 202 now, run in the background in its slot.
        case event(FunctionRequest, PendingInvocation)
    }

    /// Everything an invocation goes through before it runs: its type, the function, the payload
    /// limit and JSON, DryRun, the gate (`--max-instances`, draining) and the metrics.
    func admitInvoke(_ text: String, query: [String: String], headers: HTTPFields, body: Body, requestId: String) -> InvokeAdmission {
        let started = ContinuousClock.now
        guard let type = InvocationType(rawValue: headers[.amzInvocationType] ?? "RequestResponse") else {
            return .answer(errorAnswer(.invalidRequestContent("X-Amz-Invocation-Type must be RequestResponse, Event or DryRun"), requestId: requestId))
        }
        let function: FunctionDescription
        switch resolve(text, qualifier: query["Qualifier"]) {
        case .failure(let failure): return .answer(errorAnswer(failure, requestId: requestId))
        case .success(let found): function = found
        }
        guard body.size <= Self.payloadLimit else {
            return .answer(errorAnswer(.requestTooLarge(size: body.size, limit: Self.payloadLimit), requestId: requestId))
        }
        let event: [UInt8]
        do {
            event = try EventPayload.normalize(body.bytes)
        } catch {
            switch error {
            case .notJSON(let why): return .answer(errorAnswer(.invalidRequestContent(why), requestId: requestId))
            }
        }
        if type == .dryRun {
            return .answer(Answer(status: .noContent, headers: baseHeaders(requestId: requestId), body: []))
        }
        do {
            try gate.enter()
        } catch {
            switch error {
            case .draining:
                return .answer(errorAnswer(.shuttingDown, requestId: requestId))
            case .full(let limit):
                metrics.throttled(function: function.name)
                return .answer(errorAnswer(.tooManyRequests("Rate Exceeded: all \(limit) instances (--max-instances) are busy"), requestId: requestId))
            }
        }
        metrics.invoked(function: function.name)
        // A function made by `function create` has its own timeout; other images the daemon's.
        let request = FunctionRequest(function: function.name, event: event, timeoutSeconds: function.timeoutSeconds ?? timeoutSeconds)
        let pending = PendingInvocation(function: function.name, requestId: requestId,
                                        wantsTail: headers[.amzLogType] == "Tail", started: started)
        return type == .event ? .event(request, pending) : .run(request, pending)
    }

    func invoke(_ text: String, query: [String: String], headers: HTTPFields, body: Body, requestId: String) async -> Response {
        switch admitInvoke(text, query: query, headers: headers, body: body, requestId: requestId) {
        case .answer(let answer):
            return answer.response
        case .event(let request, let pending):
            // Lambda queues Event invocations; here it runs now, in the background, and holds its
            // slot in the gate so shutdown waits for it.
            let service = service, metrics = metrics, gate = gate, logger = logger
            Task.detached {
                defer { gate.leave() }
                do {
                    let response = try await service.invoke(request)
                    metrics.instanceTimings(function: request.function, firstInstruction: response.firstInstructionNanoseconds,
                                            response: response.responseNanoseconds)
                    let kind = Self.errorKind(response.outcome)
                    if let kind { metrics.failed(function: request.function, kind: kind) }
                    // Nobody waits for an Event invocation's answer: the log is where it ends.
                    logger.info("Event invocation of \(request.function) finished: \(kind.map { "error (\($0))" } ?? "ok")",
                                metadata: ["requestId": "\(pending.requestId)"])
                } catch {
                    metrics.failed(function: request.function, kind: "service")
                    logger.error("Event invocation of \(request.function) failed: \(error)", metadata: ["requestId": "\(pending.requestId)"])
                }
            }
            return Response(status: .accepted, headers: baseHeaders(requestId: pending.requestId))
        case .run(let request, let pending):
            let result: Result<FunctionResponse, FunctionServiceError>
            do { result = .success(try await service.invoke(request)) } catch { result = .failure(error) }
            return complete(result, pending).response
        }
    }

    /// Gives back the invocation's slot of the gate and turns the service's outcome into Lambda's
    /// answer: the result, or a function error (Unhandled), or the service's error.
    func complete(_ result: Result<FunctionResponse, FunctionServiceError>, _ pending: PendingInvocation) -> Answer {
        gate.leave()
        let requestId = pending.requestId
        let response: FunctionResponse
        switch result {
        case .failure(let error):
            metrics.failed(function: pending.function, kind: "service")
            if case .cannotStart = error { logger.error("\(error)", metadata: ["requestId": "\(requestId)"]) }
            if case .tooManyInstances = error { metrics.throttled(function: pending.function) }
            return errorAnswer(LambdaError(error, arn: documents.arn(pending.function)), requestId: requestId)
        case .success(let value):
            response = value
        }
        let elapsed = ContinuousClock.now - pending.started
        metrics.requestDuration(function: pending.function, elapsed)
        metrics.instanceTimings(function: pending.function, firstInstruction: response.firstInstructionNanoseconds,
                                response: response.responseNanoseconds)
        var responseHeaders = baseHeaders(requestId: requestId)
        if pending.wantsTail {
            responseHeaders[.amzLogResult] = Data(response.logTail.suffix(Self.logTailBytes)).base64EncodedString()
        }
        let payload: [UInt8]
        switch response.outcome {
        case .result(let bytes):
            payload = bytes
        case .handlerError(let type, let message, let stackTrace):
            payload = FunctionErrorBody.handler(type: type, message: message, stackTrace: stackTrace)
        case .timedOut:
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            payload = FunctionErrorBody.timeout(requestId: requestId, elapsedSeconds: seconds)
        case .failed(let reason):
            payload = FunctionErrorBody.failed(requestId: requestId, reason: reason)
        }
        if let kind = Self.errorKind(response.outcome) {
            metrics.failed(function: pending.function, kind: kind)
            // Lambda reports every runtime-side failure as Unhandled (Handled was for Node's
            // callback errors and is gone).
            responseHeaders[.amzFunctionError] = "Unhandled"
        }
        return Answer(status: .ok, headers: responseHeaders, body: payload)
    }

    static func errorKind(_ outcome: FunctionResponse.Outcome) -> String? {
        switch outcome {
        case .result: nil
        case .handlerError: "handler"
        case .timedOut: "timeout"
        case .failed: "failed"
        }
    }

    static func queryItems(_ query: String) -> [String: String] {
        var items: [String: String] = [:]
        for item in query.split(separator: "&") {
            let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            items[SigV4.percentDecode(pair[0])] = pair.count > 1 ? SigV4.percentDecode(pair[1]) : ""
        }
        return items
    }

    func baseHeaders(requestId: String) -> HTTPFields {
        [.contentType: "application/json",
         .amznRequestId: requestId,
         .amzExecutedVersion: FunctionName.latest]
    }

    func json(_ bytes: [UInt8], requestId: String) -> Response {
        var headers = baseHeaders(requestId: requestId)
        headers[.amzExecutedVersion] = nil
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    func error(_ error: LambdaError, requestId: String) -> Response {
        errorAnswer(error, requestId: requestId).response
    }

    func errorAnswer(_ error: LambdaError, requestId: String) -> Answer {
        metrics.rejected(type: error.type)
        var headers: HTTPFields = [.contentType: "application/json", .amznRequestId: requestId,
                                   .amznErrorType: error.type]
        if case .tooManyRequests = error { headers[.retryAfter] = "1" }
        return Answer(status: .init(code: error.status), headers: headers, body: error.body)
    }
}
