import CatalyzerImage

/// Everything that can go wrong talking to a registry. Callers branch on the case; every message
/// says what failed, where (registry, repository, blob) and what to do.
public enum RegistryError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The text is not an image reference.
    case invalidReference(String, why: String)
    /// No connection could be made or kept (refused, reset, closed, timed out), even after retries.
    case unreachable(registry: String, attempts: Int, detail: String)
    /// The TLS handshake failed: an untrusted or mismatched certificate, or a plain-HTTP server.
    case tls(registry: String, detail: String)
    /// The registry wants credentials we do not have, or refused the ones we sent.
    case unauthorized(registry: String, repository: String, hadCredentials: Bool, detail: String)
    /// Authenticated, but not allowed to do this to the repository.
    case denied(registry: String, repository: String, detail: String)
    /// The manifest (tag or digest) is not in the repository.
    case manifestNotFound(ImageReference)
    /// The manifest is not a Catalyzer image (another artifact, a container image, an index).
    case notACatalyzerImage(ImageReference, detail: String)
    /// The registry served bytes that do not hash to the digest they were asked for.
    case digestMismatch(registry: String, repository: String, digest: Digest, role: String, actual: Digest?, expectedSize: Int64, actualSize: Int64)
    /// The registry answered with a status this operation does not expect (5xx after retries included).
    case unexpectedResponse(registry: String, operation: String, status: Int, detail: String)
    /// A credentials source is unusable (a docker config.json that does not parse, an empty password).
    case credentials(String)
    /// The local image store failed.
    case store(ImageError)

    public var description: String {
        switch self {
        case let .invalidReference(text, why):
            return "'\(text)' is not an image reference: \(why)"
        case let .unreachable(registry, attempts, detail):
            return "cannot reach the registry at \(registry) (\(detail)) after \(attempts) attempt\(attempts == 1 ? "" : "s"); check that it runs and that the address is right"
        case let .tls(registry, detail):
            return "TLS with the registry at \(registry) failed: \(detail); trust its CA with --ca-file FILE, or pass --insecure if it serves plain HTTP"
        case let .unauthorized(registry, repository, hadCredentials, detail):
            return hadCredentials
                ? "the registry at \(registry) refused the credentials for \(repository) (\(detail)); check the user name and password (--username with --password-stdin, or `auths` in ~/.docker/config.json)"
                : "the registry at \(registry) requires credentials for \(repository) (\(detail)); pass --username and --password-stdin, or log in with `docker login`/`skopeo login` (read from ~/.docker/config.json)"
        case let .denied(registry, repository, detail):
            return "the registry at \(registry) denied access to \(repository) (\(detail)); the account lacks the permission for this operation"
        case let .manifestNotFound(reference):
            return "\(reference) does not exist in the registry; check the repository and tag (`skopeo list-tags docker://\(reference.registry)/\(reference.repository)`)"
        case let .notACatalyzerImage(reference, detail):
            return "\(reference) is not a catalyzer image: \(detail)"
        case let .digestMismatch(registry, repository, digest, role, actual, expectedSize, actualSize):
            let what = actual.map { "bytes hashing to \($0)" } ?? "\(actualSize) bytes, not \(expectedSize)"
            return "the registry at \(registry) served \(what) for \(role) blob \(digest) of \(repository); the blob was refused and nothing was published; the registry's copy is damaged: push the image to it again"
        case let .unexpectedResponse(registry, operation, status, detail):
            return "the registry at \(registry) answered \(operation) with HTTP \(status)\(detail.isEmpty ? "" : ": " + detail)"
                + (status >= 500 ? " (still failing after retries; the registry is unwell, see its log)" : "")
        case let .credentials(detail):
            return detail
        case let .store(error):
            return error.description
        }
    }
}
