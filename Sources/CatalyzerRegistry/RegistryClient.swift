import AsyncHTTPClient
import CatalyzerImage
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// One registry, spoken to over the OCI distribution API with AsyncHTTPClient: authentication
/// (basic, or the bearer-token flow with tokens cached per scope), retries with backoff on 5xx,
/// 429 and broken connections, and the blob and manifest endpoints push and pull need.
///
/// Every request has a deadline and connections a connect and a stall timeout, so no call can
/// hang. `shutdown()` must be awaited before the client is dropped.
public final class RegistryClient: Sendable {
    /// `host[:port]`.
    public let registry: String
    public let options: RegistryOptions
    let baseURL: String
    let http: HTTPClient
    let events: @Sendable (TransferEvent) -> Void

    private struct AuthState {
        /// What the registry asked for the last time it said 401.
        var challenge: AuthChallenge?
        /// Bearer tokens by the scope they were granted for.
        var tokens: [String: String] = [:]
    }
    private let auth = Mutex(AuthState())

    public init(registry: String, options: RegistryOptions, events: @escaping @Sendable (TransferEvent) -> Void = { _ in }) throws(RegistryError) {
        self.registry = registry
        self.options = options
        self.events = events
        baseURL = (options.insecure ? "http://" : "https://") + registry
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(options.connectTimeout), read: .seconds(options.stallTimeout))
        // Our own retries (with backoff and an event) replace the pool's silent reconnecting,
        // which would otherwise keep a request waiting for a registry that is down.
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = max(options.parallelism, 1) + 1
        configuration.httpVersion = .http1Only
        if !options.insecure {
            var tls = TLSConfiguration.makeClientConfiguration()
            if let caFile = options.caFile {
                guard FileManager.default.isReadableFile(atPath: caFile) else {
                    throw .tls(registry: registry, detail: "the CA file \(caFile) does not exist or cannot be read")
                }
                do {
                    _ = try NIOSSLCertificate.fromPEMFile(caFile)
                } catch {
                    throw .tls(registry: registry, detail: "the CA file \(caFile) holds no PEM certificate (\(error))")
                }
                tls.additionalTrustRoots = [.file(caFile)]
            }
            configuration.tlsConfiguration = tls
        }
        http = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: configuration)
    }

    public func shutdown() async {
        try? await http.shutdown()
    }

    /// `shutdown` for synchronous owners, waiting for it; never call it on an event loop thread.
    public func shutdownWaiting() {
        try? http.syncShutdown()
    }

    // MARK: Requests

    /// A response whose body has been read (small responses: manifests, errors, tokens).
    struct Reply: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: ByteBuffer
        var bytes: [UInt8] { Array(body.readableBytesView) }
    }

    /// Why an attempt failed in a way worth retrying.
    struct Transient: Error {
        var detail: String
        var status: Int?
    }

    /// Runs `body` up to `options.attempts` times while it fails transiently (a `Transient`, or a
    /// connection that could not be made or broke), waiting with exponential backoff between.
    /// Anything else (a 4xx, a digest mismatch, TLS) fails at once.
    func withRetries<T: Sendable>(_ operation: String, _ body: () async throws -> T) async throws -> T {
        var attempt = 1
        while true {
            do {
                return try await body()
            } catch {
                let transient: Transient
                switch classify(error) {
                case let .transient(failure): transient = failure
                case let .fatal(failure): throw failure
                }
                guard attempt < options.attempts, !Task.isCancelled else {
                    if let status = transient.status {
                        throw RegistryError.unexpectedResponse(registry: registry, operation: operation, status: status, detail: transient.detail)
                    }
                    throw RegistryError.unreachable(registry: registry, attempts: attempt, detail: transient.detail)
                }
                let delay = options.backoff(attempt)
                events(.retry(operation: operation, attempt: attempt, delay: delay, reason: transient.detail))
                try await Task.sleep(nanoseconds: UInt64(delay * 1e9))
                attempt += 1
            }
        }
    }

    enum Classified {
        case transient(Transient)
        case fatal(Error)
    }

    func classify(_ error: Error) -> Classified {
        switch error {
        case let error as Transient:
            return .transient(error)
        case is RegistryError, is CancellationError, is ImageError, is BlobWriter.Mismatch:
            return .fatal(error)
        case is NIOSSLError, is BoringSSLError, is NIOSSLExtraError:
            return .fatal(RegistryError.tls(registry: registry, detail: String(describing: error)))
        case let error as HTTPClientError:
            switch error {
            case .invalidURL, .emptyHost, .emptyScheme, .alreadyShutdown, .cancelled, .redirectLimitReached, .redirectCycleDetected:
                return .fatal(RegistryError.unexpectedResponse(registry: registry, operation: "request", status: 0, detail: String(describing: error)))
            default:
                return .transient(Transient(detail: Self.describe(error)))
            }
        default:
            // Connection refused or reset, a closed channel, DNS: the network, worth another try.
            return .transient(Transient(detail: Self.describe(error)))
        }
    }

    static func describe(_ error: Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .remoteConnectionClosed: return "the connection was closed"
            case .connectTimeout: return "connecting timed out"
            case .readTimeout: return "the response stalled"
            case .deadlineExceeded: return "the request took too long"
            default: return String(describing: error)
            }
        }
        if let error = error as? NIOConnectionError {
            if let first = error.connectionErrors.first { return describe(first.error) }
            if let dns = error.dnsAAAAError ?? error.dnsAError { return "cannot resolve \(error.host): \(dns)" }
        }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        return String(describing: error)
    }

    /// Sends a request with the authorization `scopes` need, answering one 401 challenge
    /// (basic or bearer) and resending. A 5xx or 429 is thrown as `Transient`. The caller reads
    /// the body of what is returned.
    func send(_ method: HTTPMethod, _ url: String, headers: HTTPHeaders = [:], body: ByteBuffer? = nil,
              scopes: [String], repository: String, timeout: Int64 = 60) async throws -> HTTPClientResponse {
        var challenged = false
        while true {
            var request = HTTPClientRequest(url: url)
            request.method = method
            request.headers = headers
            if let authorization = try await authorization(scopes: scopes, repository: repository) {
                request.headers.replaceOrAdd(name: "Authorization", value: authorization)
            }
            if let body {
                request.body = .bytes(body)
            } else if method == .PUT || method == .POST || method == .PATCH {
                request.headers.replaceOrAdd(name: "Content-Length", value: "0")
            }
            let response = try await http.execute(request, deadline: .now() + .seconds(timeout))
            let status = Int(response.status.code)
            if status == 401 && !challenged {
                let header = response.headers.first(name: "WWW-Authenticate") ?? ""
                _ = try? await response.body.collect(upTo: 1 << 20)
                guard let challenge = AuthChallenge(header: header), challenge.isBasic || challenge.isBearer else {
                    throw RegistryError.unauthorized(registry: registry, repository: repository, hadCredentials: options.credentials != nil,
                                                     detail: "HTTP 401 with an authentication scheme catalyzer does not speak: '\(header)'")
                }
                // A token we sent was refused (expired, or granted for less): fetch a fresh one.
                auth.withLock {
                    $0.challenge = challenge
                    $0.tokens[scopes.joined(separator: " ")] = nil
                }
                challenged = true
                continue
            }
            if status == 401 || status == 403 {
                let detail = Self.errorDetail(try? await response.body.collect(upTo: 1 << 20))
                if status == 403 {
                    throw RegistryError.denied(registry: registry, repository: repository, detail: detail.isEmpty ? "HTTP 403" : detail)
                }
                throw RegistryError.unauthorized(registry: registry, repository: repository, hadCredentials: options.credentials != nil,
                                                 detail: detail.isEmpty ? "HTTP 401" : detail)
            }
            if status >= 500 || status == 429 {
                let detail = Self.errorDetail(try? await response.body.collect(upTo: 1 << 20))
                throw Transient(detail: "HTTP \(status)\(detail.isEmpty ? "" : ": " + detail)", status: status)
            }
            return response
        }
    }

    /// Sends a request and reads the whole (bounded) body.
    func exchange(_ method: HTTPMethod, _ url: String, headers: HTTPHeaders = [:], body: ByteBuffer? = nil,
                  scopes: [String], repository: String, limit: Int = 8 << 20) async throws -> Reply {
        let response = try await send(method, url, headers: headers, body: body, scopes: scopes, repository: repository)
        let bytes = method == .HEAD ? ByteBuffer() : try await response.body.collect(upTo: limit)
        return Reply(status: Int(response.status.code), headers: response.headers, body: bytes)
    }

    /// The `Authorization` header for a request needing `scopes`: nothing until the registry has
    /// challenged; then basic credentials, or a bearer token fetched (once per scope) from the
    /// realm the challenge names.
    private func authorization(scopes: [String], repository: String) async throws -> String? {
        let (challenge, cached) = auth.withLock { ($0.challenge, $0.tokens[scopes.joined(separator: " ")]) }
        guard let challenge else { return nil }
        if challenge.isBasic {
            guard let credentials = options.credentials else {
                throw RegistryError.unauthorized(registry: registry, repository: repository, hadCredentials: false, detail: "HTTP 401, basic authentication")
            }
            return credentials.basicAuthorization
        }
        if let cached { return "Bearer " + cached }
        let token = try await fetchToken(challenge: challenge, scopes: scopes, repository: repository)
        auth.withLock { $0.tokens[scopes.joined(separator: " ")] = token }
        return "Bearer " + token
    }

    /// The token flow: GET the realm with the service and scopes, with basic credentials when we
    /// have them (anonymous otherwise), and take `token` or `access_token` from the JSON answer.
    private func fetchToken(challenge: AuthChallenge, scopes: [String], repository: String) async throws -> String {
        guard let realm = challenge.parameters["realm"], var components = URLComponents(string: realm),
              components.scheme == "https" || components.scheme == "http" else {
            throw RegistryError.unauthorized(registry: registry, repository: repository, hadCredentials: options.credentials != nil,
                                             detail: "the bearer challenge names no usable token realm")
        }
        var query = components.queryItems ?? []
        if let service = challenge.parameters["service"] { query.append(URLQueryItem(name: "service", value: service)) }
        for scope in scopes { query.append(URLQueryItem(name: "scope", value: scope)) }
        components.queryItems = query
        guard let url = components.string else {
            throw RegistryError.unauthorized(registry: registry, repository: repository, hadCredentials: options.credentials != nil, detail: "bad token realm '\(realm)'")
        }
        return try await withRetries("token request to \(realm)") {
            var request = HTTPClientRequest(url: url)
            if let credentials = options.credentials {
                request.headers.add(name: "Authorization", value: credentials.basicAuthorization)
            }
            let response = try await http.execute(request, deadline: .now() + .seconds(60))
            let body = try await response.body.collect(upTo: 1 << 20)
            let status = Int(response.status.code)
            if status >= 500 || status == 429 { throw Transient(detail: "token server: HTTP \(status)", status: status) }
            guard status == 200 else {
                throw RegistryError.unauthorized(registry: registry, repository: repository, hadCredentials: options.credentials != nil,
                                                 detail: "the token server \(realm) answered HTTP \(status)")
            }
            struct Token: Decodable { var token: String?; var access_token: String? }
            guard let decoded = try? JSONDecoder().decode(Token.self, from: Data(body.readableBytesView)),
                  let token = decoded.token ?? decoded.access_token, !token.isEmpty else {
                throw RegistryError.unauthorized(registry: registry, repository: repository, hadCredentials: options.credentials != nil,
                                                 detail: "the token server \(realm) sent no token")
            }
            return token
        }
    }

    /// The registry's error document (`{"errors":[{"code","message","detail"}]}`) as a sentence,
    /// or the start of the body when it is something else.
    static func errorDetail(_ body: ByteBuffer?) -> String {
        guard let body, body.readableBytes > 0 else { return "" }
        struct Document: Decodable {
            struct Entry: Decodable { var code: String?; var message: String? }
            var errors: [Entry]
        }
        if let document = try? JSONDecoder().decode(Document.self, from: Data(body.readableBytesView)), !document.errors.isEmpty {
            return document.errors.map { [$0.code, $0.message].compactMap { $0 }.joined(separator: ": ") }.joined(separator: "; ")
        }
        return String(String(decoding: body.readableBytesView.prefix(200), as: UTF8.self).split(separator: "\n").first ?? "")
    }

    // MARK: Endpoints

    func url(_ repository: String, _ tail: String) -> String { baseURL + "/v2/" + repository + "/" + tail }

    static func pullScope(_ repository: String) -> String { "repository:\(repository):pull" }
    static func pushScope(_ repository: String) -> String { "repository:\(repository):pull,push" }

    /// Whether the repository has the blob (HEAD).
    func blobExists(_ repository: String, _ digest: Digest, scopes: [String]) async throws -> Bool {
        let reply = try await exchange(.HEAD, url(repository, "blobs/\(digest)"), scopes: scopes, repository: repository)
        switch reply.status {
        case 200: return true
        case 404: return false
        default: throw RegistryError.unexpectedResponse(registry: registry, operation: "HEAD blob \(digest)", status: reply.status, detail: "")
        }
    }

    /// The manifest `reference` names, exactly as served, with the media type the registry gave.
    func fetchManifest(_ reference: ImageReference) async throws -> (bytes: [UInt8], mediaType: String) {
        let repository = reference.repository
        var headers = HTTPHeaders()
        headers.add(name: "Accept", value: [MediaType.ociManifest, MediaType.ociIndex,
                                            "application/vnd.docker.distribution.manifest.v2+json",
                                            "application/vnd.docker.distribution.manifest.list.v2+json"].joined(separator: ", "))
        let reply = try await withRetries("GET manifest \(reference)") {
            try await exchange(.GET, url(repository, "manifests/\(reference.reference.pathComponent)"), headers: headers,
                               scopes: [Self.pullScope(repository)], repository: repository, limit: Int(4 << 20))
        }
        switch reply.status {
        case 200:
            return (reply.bytes, reply.headers.first(name: "Content-Type") ?? "")
        case 404:
            throw RegistryError.manifestNotFound(reference)
        default:
            throw RegistryError.unexpectedResponse(registry: registry, operation: "GET manifest \(reference)", status: reply.status, detail: Self.errorDetail(reply.body))
        }
    }

    /// Stores a manifest under a tag or its digest; returns the digest the registry reports.
    func putManifest(_ bytes: [UInt8], mediaType: String, to reference: ImageReference) async throws {
        let repository = reference.repository
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: mediaType)
        let reply = try await withRetries("PUT manifest \(reference)") {
            try await exchange(.PUT, url(repository, "manifests/\(reference.reference.pathComponent)"), headers: headers,
                               body: ByteBuffer(bytes: bytes), scopes: [Self.pushScope(repository)], repository: repository)
        }
        guard reply.status == 201 || reply.status == 200 else {
            throw RegistryError.unexpectedResponse(registry: registry, operation: "PUT manifest \(reference)", status: reply.status, detail: Self.errorDetail(reply.body))
        }
    }

    /// What `uploadBlob` did.
    public enum UploadOutcome: String, Sendable, Codable {
        case existing, mounted, uploaded
    }

    /// Makes the repository hold blob `digest`: nothing if it has it already (HEAD), a mount from
    /// `mountFrom` if that repository has it, else a monolithic upload (POST, then PUT with the
    /// digest). `bytes` is asked for only when an upload is needed.
    func uploadBlob(_ repository: String, _ digest: Digest, size: Int64, mountFrom: String?,
                    bytes: @Sendable () throws -> [UInt8]) async throws -> UploadOutcome {
        let scopes = [Self.pushScope(repository)] + (mountFrom.map { [Self.pullScope($0)] } ?? [])
        return try await withRetries("upload of blob \(digest)") {
            if try await blobExists(repository, digest, scopes: scopes) { return .existing }
            var start = url(repository, "blobs/uploads/")
            if let mountFrom { start += "?mount=\(digest)&from=\(mountFrom)" }
            let session = try await exchange(.POST, start, scopes: scopes, repository: repository)
            if session.status == 201 && mountFrom != nil { return .mounted }
            guard session.status == 202, let location = session.headers.first(name: "Location") else {
                throw RegistryError.unexpectedResponse(registry: registry, operation: "POST blob upload", status: session.status, detail: Self.errorDetail(session.body))
            }
            let content = try bytes()
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/octet-stream")
            let target = resolve(location) + (location.contains("?") ? "&" : "?") + "digest=" + digest.description.replacingOccurrences(of: ":", with: "%3A")
            let put = try await exchange(.PUT, target, headers: headers, body: ByteBuffer(bytes: content),
                                         scopes: scopes, repository: repository, limit: 1 << 20)
            guard put.status == 201 else {
                throw RegistryError.unexpectedResponse(registry: registry, operation: "PUT blob \(digest)", status: put.status, detail: Self.errorDetail(put.body))
            }
            return .uploaded
        }
    }

    /// Blob `digest` whole, in memory (chunks of lazily pulled images; the caller verifies it).
    /// More than `size` bytes is refused as soon as it arrives.
    func fetchBlob(_ repository: String, _ digest: Digest, size: Int64, role: String) async throws -> [UInt8] {
        try await withRetries("GET \(role) blob \(digest)") {
            let response = try await send(.GET, url(repository, "blobs/\(digest)"), scopes: [Self.pullScope(repository)],
                                          repository: repository, timeout: max(60, size / (1 << 20)))
            let status = Int(response.status.code)
            guard status == 200 else {
                let detail = Self.errorDetail(try? await response.body.collect(upTo: 1 << 20))
                throw RegistryError.unexpectedResponse(registry: registry, operation: "GET \(role) blob \(digest) of \(repository)", status: status, detail: detail)
            }
            do {
                return Array(try await response.body.collect(upTo: Int(size)).readableBytesView)
            } catch is NIOTooManyBytesError {
                throw RegistryError.digestMismatch(registry: registry, repository: repository, digest: digest, role: role,
                                                   actual: nil, expectedSize: size, actualSize: size + 1)
            }
        }
    }

    /// An upload `Location` made absolute.
    func resolve(_ location: String) -> String {
        if location.hasPrefix("http://") || location.hasPrefix("https://") { return location }
        return baseURL + (location.hasPrefix("/") ? "" : "/") + location
    }

    /// Streams blob `digest` into `makeWriter()`'s writer, which verifies it; retried from the
    /// start (with a fresh writer) when the connection breaks. A blob whose bytes do not match is
    /// `RegistryError.digestMismatch`, never stored.
    func downloadBlob(_ repository: String, _ digest: Digest, size: Int64, role: String,
                      makeWriter: @Sendable () throws -> BlobWriter, progress: @Sendable (Int) -> Void) async throws -> BlobWriter.Outcome {
        try await withRetries("download of blob \(digest)") {
            let writer = try makeWriter()
            defer { writer.abandon() }
            let timeout = max(300, size / (1 << 20))
            let response = try await send(.GET, url(repository, "blobs/\(digest)"), scopes: [Self.pullScope(repository)],
                                          repository: repository, timeout: timeout)
            let status = Int(response.status.code)
            guard status == 200 else {
                let detail = Self.errorDetail(try? await response.body.collect(upTo: 1 << 20))
                if status == 404 {
                    throw RegistryError.unexpectedResponse(registry: registry, operation: "GET \(role) blob \(digest) of \(repository)", status: 404,
                                                           detail: "the registry does not have it (\(detail)); the image in the registry is incomplete: push it again")
                }
                throw RegistryError.unexpectedResponse(registry: registry, operation: "GET blob \(digest)", status: status, detail: detail)
            }
            do {
                for try await buffer in response.body {
                    try buffer.withUnsafeReadableBytes { raw in try writer.write(raw) }
                    progress(buffer.readableBytes)
                }
                return try writer.finish()
            } catch let mismatch as BlobWriter.Mismatch {
                throw RegistryError.digestMismatch(registry: registry, repository: repository, digest: digest, role: role,
                                                   actual: mismatch.actual, expectedSize: mismatch.expectedSize, actualSize: mismatch.actualSize)
            } catch ImageError.blobSizeMismatch(_, _, _, let expected, let actual) {
                throw RegistryError.digestMismatch(registry: registry, repository: repository, digest: digest, role: role,
                                                   actual: nil, expectedSize: expected, actualSize: actual)
            }
        }
    }
}
