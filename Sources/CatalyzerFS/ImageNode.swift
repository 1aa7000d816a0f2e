import CatalyzerImage
import Glibc
import Synchronization

/// One image version as the filesystem serves it: the opened image, its inode numbers and the
/// statistics of its name.
final class ImageNode: Sendable {
    let image: Image
    /// Where its blobs come from: the store, or (pulled with --lazy) its registry via the cache.
    let source: BlobSource
    let slot: Int
    let statistics: ImageStatistics
    /// When the mount first saw this version: the files' mtime, constant so the kernel never
    /// drops the page cache because attributes changed.
    let firstSeen: timespec
    /// Set by the first open of `memory` that starts working-set prefetch.
    let prefetchStarted = Atomic<Bool>(false)
    /// The working-set blob once read and verified: every restore opens it, and reading and
    /// hashing megabytes per open would cost a warm restore more than its guest run.
    let workingSetBlob = Mutex<[UInt8]?>(nil)
    /// Whether the working set is in the memory file's page cache (`WorkingSetStore`); the lock
    /// also makes a second restore's open wait until the first one's store is done.
    let workingSetStored = Mutex<Bool>(false)
    /// The state blob once read and verified, for the same reason (tens of kilobytes).
    let stateBlob = Mutex<[UInt8]?>(nil)

    init(image: Image, source: BlobSource, slot: Int, statistics: ImageStatistics) {
        self.image = image
        self.source = source
        self.slot = slot
        self.statistics = statistics
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        firstSeen = now
    }

    var directoryInode: UInt64 { InodeNumber.directory(slot: slot) }

    func inode(_ file: ImageFile) -> UInt64 { directoryInode + file.inodeOffset }

    /// Size of `file` as `stat` reports it.
    func size(_ file: ImageFile) -> Int64 {
        switch file {
        case .memory: image.config.memorySize
        case .state: image.config.state.size
        case .manifest: Int64(image.manifestBytes.count)
        case .workingSet: image.config.pageWorkingSet?.blob.size ?? 0
        }
    }
}
