import CatalyzerImage
import Synchronization

/// Makes the fetcher for a lazily pulled image (from its origin annotations); nil when the image
/// names no usable origin. Must not start threads when called (the daemon may not have detached
/// yet): fetchers connect on first use.
public typealias RemoteFetcherFactory = @Sendable (_ image: Image) throws -> RemoteBlobFetcher?

/// Chooses each image's blob source: the store, or for an image pulled with `--lazy` its
/// registry behind the node-wide cache (`cache_dir`, `cache_limit`), which every lazy image of
/// the mount shares. The cache directory is made on first need, so a mount of a store without
/// lazy images writes nothing.
final class BlobSources: Sendable {
    let store: ImageStore
    let cacheDirectory: String
    let cacheLimit: Int64
    let remote: RemoteFetcherFactory?
    let log: Log?
    private let cache = Mutex<BlobCache?>(nil)
    private let fetchers = Mutex<[String: RemoteBlobFetcher]>([:])

    init(store: ImageStore, options: MountOptions, remote: RemoteFetcherFactory?, log: Log?) {
        self.store = store
        cacheDirectory = options.cacheDirectory ?? store.defaultBlobCacheDirectory
        cacheLimit = options.cacheLimit
        self.remote = remote
        self.log = log
    }

    func source(for image: Image) -> BlobSource {
        let annotations = image.manifestDescriptor.annotations ?? [:]
        guard annotations[ImageStore.lazyAnnotation] == "true", let origin = annotations[ImageStore.originAnnotation] else {
            return LocalBlobSource(store: store)
        }
        guard let remote else {
            log?.write("image '\(image.name)' was pulled with --lazy from \(origin), but this catalyzerfs cannot fetch from registries; only the blobs in the store are served")
            return LocalBlobSource(store: store)
        }
        do {
            let fetcher: RemoteBlobFetcher
            if let known = fetchers.withLock({ $0[origin] }) {
                fetcher = known
            } else {
                guard let made = try remote(image) else { return LocalBlobSource(store: store) }
                fetcher = fetchers.withLock { $0[origin, default: made] }
            }
            let cache = try self.cache.withLock { cache throws(ImageError) -> BlobCache in
                if let cache { return cache }
                let made = try BlobCache(directory: cacheDirectory, limit: cacheLimit)
                cache = made
                return made
            }
            return LazyBlobSource(store: store, cache: cache, remote: fetcher)
        } catch {
            log?.write("image '\(image.name)' (pulled with --lazy from \(origin)): cannot fetch from its registry: \(error); only the blobs in the store are served")
            return LocalBlobSource(store: store)
        }
    }
}
