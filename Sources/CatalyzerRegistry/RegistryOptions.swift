/// How to reach a registry and how hard to try.
public struct RegistryOptions: Sendable {
    /// Speak plain HTTP instead of HTTPS.
    public var insecure = false
    /// A PEM file of CA certificates trusted in addition to the system's.
    public var caFile: String?
    /// Credentials for basic auth or the token flow; nil is anonymous.
    public var credentials: Credentials?
    /// Blob transfers running at once.
    public var parallelism = 4
    /// Tries per request (1 + retries) on 5xx, 429 and broken connections.
    public var attempts = 5
    /// The first retry's delay in seconds; it doubles per retry up to `maximumBackoff`.
    public var initialBackoff = 0.2
    public var maximumBackoff = 2.0
    /// Seconds to establish a connection.
    public var connectTimeout: Int64 = 5
    /// Seconds a response may stall (no bytes) before the request counts as failed.
    public var stallTimeout: Int64 = 30

    public init() {}

    /// The delay before retry number `retry` (1-based), with ±20% jitter so parallel transfers
    /// that failed together do not retry in lockstep.
    func backoff(_ retry: Int) -> Double {
        let base = min(maximumBackoff, initialBackoff * Double(1 << min(retry - 1, 16)))
        return base * Double.random(in: 0.8...1.2)
    }
}
