@testable import CatalyzerImage
import Testing

/// The working-set blob's header is read on every restore from bytes anyone with write access
/// to a store or registry could have crafted.
@Suite struct PageWorkingSetTests {
    static let memory: Int64 = 1 << 20  // 256 pages

    static func blob(_ set: PageWorkingSet, data: Int) -> [UInt8] {
        set.encodedHeader() + [UInt8](repeating: 7, count: data)
    }

    static func decode(_ bytes: [UInt8]) -> Result<PageWorkingSet, PageWorkingSetError> {
        bytes.withUnsafeBytes { PageWorkingSet.decode($0, memorySize: memory) }
    }

    static let valid = PageWorkingSet(codec: .lz4,
                                      runs: [.init(firstPage: 0, count: 3), .init(firstPage: 10, count: 5)],
                                      frames: [.init(offset: 0, size: 100, pages: 4), .init(offset: 100, size: 50, pages: 4)])

    @Test("a header round-trips, and frames split runs where the page counts say")
    func roundTrip() throws {
        let decoded = try Self.decode(Self.blob(Self.valid, data: 150)).get()
        #expect(decoded == Self.valid)
        #expect(decoded.pageCount == 8)
        #expect(decoded.segments(ofFrame: 0) == [.init(firstPage: 0, count: 3, pageInFrame: 0), .init(firstPage: 10, count: 1, pageInFrame: 3)])
        #expect(decoded.segments(ofFrame: 1) == [.init(firstPage: 11, count: 4, pageInFrame: 0)])
    }

    @Test("pages become sorted runs; duplicates are dropped; gaps are bridged only when asked")
    func runs() {
        #expect(PageWorkingSet.runs(ofPages: [5, 1, 2, 2, 9]) == [.init(firstPage: 1, count: 2), .init(firstPage: 5, count: 1), .init(firstPage: 9, count: 1)])
        #expect(PageWorkingSet.runs(ofPages: [1, 2, 5, 9], bridgingGapsOf: 2) == [.init(firstPage: 1, count: 5), .init(firstPage: 9, count: 1)])
    }

    @Test("hostile headers are refused with a sentence, never trusted")
    func hostile() {
        func refused(_ bytes: [UInt8], _ words: String) {
            guard case let .failure(problem) = Self.decode(bytes) else {
                Issue.record("accepted a bad working set (expected: \(words))")
                return
            }
            #expect(problem.description.contains(words), "\(problem)")
        }
        refused([], "does not start with a working-set header")
        refused(Array("CTZWSET2".utf8) + [UInt8](repeating: 0, count: 40), "does not start with a working-set header")
        var header = Self.blob(Self.valid, data: 150)
        header[8] = 9
        refused(header, "codec 9")
        // Counts larger than the blob could hold: refused before anything is sized by them.
        header = Self.blob(Self.valid, data: 150)
        header[12] = 0xFF; header[13] = 0xFF; header[14] = 0xFF; header[15] = 0x7F
        refused(header, "more than its")
        var set = Self.valid
        set.runs[1].firstPage = 254  // 254 + 5 > 256 pages
        refused(Self.blob(set, data: 150), "outside the memory")
        set = Self.valid
        set.runs[1].firstPage = 2  // overlaps run 0
        refused(Self.blob(set, data: 150), "overlaps")
        set = Self.valid
        set.frames[1].pages = 5
        refused(Self.blob(set, data: 150), "frames hold 9 pages")
        refused(Self.blob(Self.valid, data: 149), "frames add up to 150")
        set = Self.valid
        set.frames[0].size = 1 << 40
        refused(Self.blob(set, data: 150), "implausible size")
        set = Self.valid
        set.runs[0].count = -1
        refused(Self.blob(set, data: 150), "out of range")
    }

    @Test("a config's record of the blob is checked like every other field")
    func record() {
        let digest = Digest(of: [UInt8]())
        let good = PageWorkingSetRecord(blob: Descriptor(mediaType: MediaType.pageWorkingSet(.lz4), digest: digest, size: 1000), pages: 10)
        #expect(good.validationProblem(memorySize: Self.memory) == nil)
        var bad = good
        bad.blob.mediaType = "application/octet-stream"
        #expect(bad.validationProblem(memorySize: Self.memory)?.contains("media type") == true)
        bad = good
        bad.pages = 1000
        #expect(bad.validationProblem(memorySize: Self.memory)?.contains("1000 pages") == true)
        bad = good
        bad.blob.size = 1 << 40
        #expect(bad.validationProblem(memorySize: Self.memory)?.contains("implausible") == true)
    }
}
