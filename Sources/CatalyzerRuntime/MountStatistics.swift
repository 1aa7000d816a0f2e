import CatalyzerImage
import Foundation

/// What catalyzer reads from a catalyzerfs mount's `/.stats`: each image's FUSE counters and the
/// image versions whose memory files are open (running sandboxes).
struct MountStatistics: Decodable {
    struct ImageCounters: Decodable {
        var readsServed: UInt64
        var bytesFetched: UInt64

        static let zero = ImageCounters(readsServed: 0, bytesFetched: 0)
    }

    var images: [String: ImageCounters]
    var inUse: [Digest]

    /// The mount's statistics now; nil when the mount does not answer (a dead daemon).
    static func read(mountpoint: String) -> MountStatistics? {
        guard let data = FileManager.default.contents(atPath: mountpoint + "/.stats") else { return nil }
        return try? JSONDecoder().decode(MountStatistics.self, from: data)
    }
}
