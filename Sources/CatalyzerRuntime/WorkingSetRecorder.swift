import CatalyzerImage
import CatalyzerKernel
import Glibc

public struct WorkingSetReport: Sendable, Codable {
    /// Chunks touched (what catalyzerfs prefetches) and their uncompressed bytes.
    public var chunks: Int
    public var bytes: Int
    /// Pages touched (what a restore installs) and the size of their blob as stored.
    public var pages: Int
    public var blobBytes: Int64
}

/// Records an image's working set: what its first invocation after a restore touches. It
/// restores the image through catalyzerfs (with no working set installed), serves one request,
/// and asks the host kernel:
/// - which chunks of the memory mapping are resident (`mincore`): stored in the config, and
///   catalyzerfs pushes them into the page cache on later restores (`prefetch=on`);
/// - which pages have a host page-table entry (`/proc/self/pagemap`): the pages KVM faulted in
///   for the guest or the monitor touched, plus fault-around neighbours; stored as the
///   working-set blob that every later restore installs before the guest runs.
public enum WorkingSetRecorder {
    public static func record(image: String, store: ImageStore, mount: String?, input: String) throws -> WorkingSetReport {
        let requests = try RequestPipe.holding(input)
        defer { close(requests) }
        let discard = open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer { close(discard) }
        var request = InvocationRequest(image: image, store: store)
        request.mount = mount
        request.standardStreams = [requests, discard, discard]
        request.recordResidentChunks = true
        let result = try Invocation.run(request)
        guard result.exit == .exited(status: 0), let chunks = result.residentChunks, let pages = result.touchedPages else {
            throw RuntimeError("image '\(image)' was created, but recording its working set failed: the function ended with \(result.exit) serving \(input); the image has no working set (run `catalyzer invoke \(image) --input '\(input)'` to see why)")
        }
        let chunkSize = try store.open(image).config.chunkSize
        try store.setWorkingSet(image, chunks: chunks, pages: pages)
        let blobBytes = try store.open(image).config.pageWorkingSet?.blob.size ?? 0
        return WorkingSetReport(chunks: chunks.count, bytes: chunks.count * chunkSize, pages: pages.count, blobBytes: blobBytes)
    }
}
