import CatalyzerImage
import Synchronization

/// The image versions whose memory files are open: each is a running sandbox, whose pages may
/// still be fetched from the version's blobs. `/.stats` lists their manifest digests (`inUse`) so
/// that `catalyzer image gc` keeps the blobs of a version that was replaced or removed while a
/// sandbox still runs from it.
final class ImageLeases: Sendable {
    private let openCounts = Mutex<[Digest: Int]>([:])

    /// Counts an open of `image`'s memory file until the returned lease is released.
    func lease(_ image: Image) -> Lease {
        let digest = image.manifestDescriptor.digest
        openCounts.withLock { $0[digest, default: 0] += 1 }
        return Lease(digest: digest, leases: self)
    }

    /// The manifest digests of image versions with open memory files, sorted.
    var manifestsInUse: [Digest] {
        openCounts.withLock { $0.keys.sorted() }
    }

    fileprivate func release(_ digest: Digest) {
        openCounts.withLock { counts in
            guard let count = counts[digest] else { return }
            counts[digest] = count > 1 ? count - 1 : nil
        }
    }

    /// One open memory file; released when the file handle goes (FUSE `release`, which comes
    /// only once no process has the file open or mapped).
    final class Lease: Sendable {
        private let digest: Digest
        private let leases: ImageLeases

        fileprivate init(digest: Digest, leases: ImageLeases) {
            self.digest = digest
            self.leases = leases
        }

        deinit { leases.release(digest) }
    }
}
