import CatalyzerImage
import CatalyzerKernel
import Glibc

public struct WorkingSetReport: Sendable, Codable {
    public var chunks: Int
    public var bytes: Int
}

/// Records an image's working set: the memory chunks its first invocation after a restore
/// touches. It restores the image through catalyzerfs, serves one request, and asks the kernel
/// which pages of the memory mapping are resident (`mincore`: pages read into the page cache or
/// copied on write). The list is stored in the image's config, and catalyzerfs pushes those
/// chunks into the page cache on every later restore, before the program asks for them.
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
        guard result.exit == .exited(status: 0), let chunks = result.residentChunks else {
            throw RuntimeError("image '\(image)' was created, but recording its working set failed: the function ended with \(result.exit) serving \(input); the image has no working set (run `catalyzer invoke \(image) --input '\(input)'` to see why)")
        }
        let chunkSize = try store.open(image).config.chunkSize
        try store.setWorkingSet(image, chunks: chunks)
        return WorkingSetReport(chunks: chunks.count, bytes: chunks.count * chunkSize)
    }
}
