import CatalyzerImage
import Dispatch
import Foundation
import Synchronization

/// Fetches the blobs of a lazily pulled image from the repository it came from, for catalyzerfs
/// (whose FUSE worker threads call it synchronously). The client connects on first use, so the
/// fetcher can be made before the daemon detaches. A fetch is bounded in time: the retries of
/// `RegistryOptions` (4 tries, backoff up to 2 s), and at most `deadline` seconds in all.
public final class RegistryBlobFetcher: RemoteBlobFetcher {
    public let location: String
    let reference: ImageReference
    let options: RegistryOptions
    let deadline: Double
    private let client = Mutex<RegistryClient?>(nil)

    /// AsyncHTTPClient requires its client shut down before it goes (a debug build traps
    /// otherwise): catalyzerfs drops its fetchers on its main thread as it exits, never on an
    /// event loop, so waiting here is safe.
    deinit {
        client.withLock { $0?.shutdownWaiting() }
    }

    public init(reference: ImageReference, options: RegistryOptions, deadline: Double = 30) {
        location = "\(reference.registry)/\(reference.repository)"
        self.reference = reference
        self.options = options
        self.deadline = deadline
    }

    /// The fetcher for `image`'s origin (`dev.catalyzer.origin`, `.insecure`, `.ca-file`
    /// annotations written by `pull --lazy`), with credentials from the docker config file.
    @Sendable public static func forImage(_ image: Image) throws -> RemoteBlobFetcher? {
        let annotations = image.manifestDescriptor.annotations ?? [:]
        guard let origin = annotations[ImageStore.originAnnotation] else { return nil }
        let reference = try ImageReference(parsing: origin)
        var options = RegistryOptions()
        options.insecure = annotations[ImageStore.originInsecureAnnotation] == "true"
        options.caFile = annotations[ImageStore.originCAFileAnnotation]
        options.credentials = try Credentials.fromDockerConfig(registry: reference.registry)
        options.attempts = 4
        options.connectTimeout = 3
        options.stallTimeout = 10
        return RegistryBlobFetcher(reference: reference, options: options)
    }

    public func fetch(_ digest: Digest, size: Int64, role: String) throws -> [UInt8] {
        let client = try self.client.withLock { client throws(RegistryError) -> RegistryClient in
            if let client { return client }
            let made = try RegistryClient(registry: reference.registry, options: options)
            client = made
            return made
        }
        let outcome = Mutex<Result<[UInt8], Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let repository = reference.repository
        let task = Task.detached {
            let result: Result<[UInt8], Error>
            do { result = .success(try await client.fetchBlob(repository, digest, size: size, role: role)) } catch { result = .failure(error) }
            outcome.withLock { $0 = result }
            done.signal()
        }
        if done.wait(timeout: .now() + deadline) == .timedOut {
            task.cancel()
            throw RegistryError.unreachable(registry: reference.registry, attempts: options.attempts, detail: "no answer within \(Int(deadline)) s")
        }
        return try outcome.withLock { $0! }.get()
    }
}
