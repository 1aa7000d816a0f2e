import CatalyzerTestSupport
import Foundation
import Testing
@testable import CatalyzerImage

/// Seeded mutation fuzzing of what the image layer decodes from untrusted bytes: the config
/// (JSON, with its chunk table) and the chunk blobs (zstd, lz4, raw). Each loop runs a fixed
/// number of iterations from a fixed seed, so a failure reproduces, and stops early at its time
/// budget, so CI time stays bounded. Inputs that once crashed are kept below as plain tests.
@Suite struct DecoderFuzzTests {
    static let iterations = 4000
    static let budgetSeconds = 8.0

    /// A small deterministic generator (xorshift), so a failing iteration can be replayed.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
        mutating func next() -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state
        }
    }

    /// Numbers at the edges of every range a reader checks.
    static let interesting: [String] = [
        "0", "-1", "1", "4095", "4096", "4097", "65535", "65536", "262144", "67108864", "134217729",
        "2147483647", "-2147483648", "4294967296", "1099511627776", "1099511627777",
        "1152921504606846976", "4611686018427387904", "9223372036854775807", "-9223372036854775808",
        "18446744073709551615", "1e300", "0.5", "null", "\"x\"", "[]", "{}",
    ]

    /// One mutation of a JSON document: a byte flipped, a number replaced by an interesting one,
    /// a range deleted or duplicated, or the end cut off.
    static func mutate(_ input: [UInt8], using generator: inout Generator) -> [UInt8] {
        var bytes = input
        guard !bytes.isEmpty else { return Array(interesting.randomElement(using: &generator)!.utf8) }
        switch Int.random(in: 0..<6, using: &generator) {
        case 0:
            bytes[Int.random(in: 0..<bytes.count, using: &generator)] ^= UInt8.random(in: 1...255, using: &generator)
        case 1, 2:
            // Replace the digits of a number found at a random place (half the mutations: the
            // numbers are what the checks are about).
            let digits = bytes.indices.filter { (48...57).contains(bytes[$0]) }
            guard let at = digits.randomElement(using: &generator) else { break }
            var start = at, end = at
            while start > 0 && ((48...57).contains(bytes[start - 1]) || bytes[start - 1] == 45) { start -= 1 }
            while end < bytes.count && (48...57).contains(bytes[end]) { end += 1 }
            bytes.replaceSubrange(start..<end, with: Array(interesting.randomElement(using: &generator)!.utf8))
        case 3:
            let start = Int.random(in: 0..<bytes.count, using: &generator)
            bytes.removeSubrange(start..<min(bytes.count, start + Int.random(in: 1...16, using: &generator)))
        case 4:
            let start = Int.random(in: 0..<bytes.count, using: &generator)
            let slice = bytes[start..<min(bytes.count, start + Int.random(in: 1...64, using: &generator))]
            bytes.insert(contentsOf: slice, at: Int.random(in: 0...bytes.count, using: &generator))
        default:
            bytes.removeSubrange(Int.random(in: 0..<bytes.count, using: &generator)...)
        }
        return bytes
    }

    /// The config of a real image (40 chunk positions, some all-zero) and its manifest.
    static func seedConfig() throws -> (config: [UInt8], manifest: OCIManifest, dir: TemporaryDirectory) {
        let dir = try TemporaryDirectory("fuzz-config")
        var options = ImageCreateOptions()
        options.chunkSize = 4096
        options.workingSet = [3, 1, 0]
        options.state = Array("state".utf8)
        var memory = try Fixtures.zeroHeavy(40 * 4096 + 123)
        for page in stride(from: 0, to: 40, by: 3) { memory[page * 4096] = 1 }
        try Fixtures.write(memory, to: dir.file("m"))
        let store = ImageStore(root: dir.file("store"))
        _ = try store.createImage(named: "seed", fromFile: dir.file("m"), options: options)
        let image = try store.open("seed")
        return (try image.readConfigBytes(), image.manifest, dir)
    }

    /// What a reader relies on once a config is accepted; checked for every accepted mutation.
    static func expectInvariants(_ config: ImageConfig, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(config.memorySize > 0 && config.memorySize <= ImageConfig.maximumMemorySize, sourceLocation: sourceLocation)
        #expect(ChunkSize.isValid(config.chunkSize), sourceLocation: sourceLocation)
        let count = config.chunkCount
        #expect(count > 0 && Int64(count - 1) * Int64(config.chunkSize) < config.memorySize, sourceLocation: sourceLocation)
        for (position, entry) in config.chunks.enumerated() {
            #expect(entry.index >= 0 && entry.index < count, sourceLocation: sourceLocation)
            #expect(config.entryPosition(ofChunk: entry.index) == position, sourceLocation: sourceLocation)
            let length = config.chunkLength(entry.index)
            #expect(length > 0 && length <= config.chunkSize, sourceLocation: sourceLocation)
        }
        #expect(config.chunkLength(count) == 0 && config.chunkLength(-1) == 0, sourceLocation: sourceLocation)
        #expect(config.state.size >= 0 && config.state.size <= ImageConfig.maximumStateSize(memorySize: config.memorySize),
                sourceLocation: sourceLocation)
        #expect(config.storedChunkBytes >= 0, sourceLocation: sourceLocation)
        #expect((config.workingSet ?? []).allSatisfy { $0 >= 0 && $0 < count }, sourceLocation: sourceLocation)
    }

    @Test("config decoder: mutated configs are accepted with every invariant, or refused with an error")
    func fuzzConfigDecoder() throws {
        let (seed, manifest, dir) = try Self.seedConfig()
        defer { dir.remove() }
        var generator = Generator(seed: 0xC0FF1E)
        let started = Date()
        var accepted = 0, refused = 0
        var input = seed
        for iteration in 0..<Self.iterations {
            if Date().timeIntervalSince(started) > Self.budgetSeconds { break }
            // Mostly one or two mutations of the seed; sometimes stack on the last input.
            if iteration % 4 != 0 { input = seed }
            for _ in 0..<Int.random(in: 1...2, using: &generator) { input = Self.mutate(input, using: &generator) }
            do {
                let config = try Image.checkedConfig(input, manifest: manifest, image: "fuzz")
                Self.expectInvariants(config)
                accepted += 1
            } catch {
                #expect(error.description.hasPrefix("image 'fuzz': "), "\(error)")
                refused += 1
            }
        }
        #expect(accepted > 0 && refused > 0, "accepted \(accepted), refused \(refused): the mutations should do both")
    }

    @Test("chunk decoder: mutated zstd, lz4 and raw blobs decode to exactly one chunk or fail with an error")
    func fuzzChunkDecoder() throws {
        var generator = Generator(seed: 0xC4A2C)
        let chunk = try Fixtures.zeroHeavy(64 << 10)
        let blobs: [(Codec, [UInt8])] = try Codec.allCases.map { codec in
            (codec, try chunk.withUnsafeBytes { try codec.compress($0) })
        }
        let output = UnsafeMutableRawBufferPointer.allocate(byteCount: 128 << 10, alignment: 4096)
        defer { output.deallocate() }
        let started = Date()
        var decoded = 0
        for iteration in 0..<Self.iterations {
            if Date().timeIntervalSince(started) > Self.budgetSeconds { break }
            let (codec, original) = blobs[iteration % blobs.count]
            var blob = original
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                guard !blob.isEmpty else { break }
                switch Int.random(in: 0..<4, using: &generator) {
                case 0: blob[Int.random(in: 0..<blob.count, using: &generator)] ^= UInt8.random(in: 1...255, using: &generator)
                case 1: blob.removeSubrange(Int.random(in: 0..<blob.count, using: &generator)...)
                case 2: blob += (0..<Int.random(in: 1...64, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
                default:
                    // The frame header's sizes: the first bytes of a zstd or lz4 frame.
                    let at = Int.random(in: 0..<min(blob.count, 16), using: &generator)
                    blob[at] = [0x00, 0xFF, 0x7F, 0x80].randomElement(using: &generator)!
                }
            }
            let length = [64 << 10, 64 << 10, (64 << 10) - 1, 4096, 128 << 10].randomElement(using: &generator)!
            let target = UnsafeMutableRawBufferPointer(rebasing: output[0..<length])
            let entry = ChunkEntry(index: 0, digest: Digest(of: blob), codec: codec, size: Int64(blob.count))
            do {
                try Image.decode(blob, entry: entry, into: target, image: "fuzz")
                decoded += 1
            } catch {
                guard case .chunkUndecodable(let image, _, _, _) = error else {
                    Issue.record("unexpected error \(error)")
                    continue
                }
                #expect(image == "fuzz")
            }
        }
        #expect(decoded > 0, "unmutated-equivalent inputs should still decode sometimes")
    }

    // MARK: Inputs that crashed before, kept as tests

    /// A valid config of 5 chunks of 64 KiB and a state, as JSON, with `edit` applied.
    static func config(_ edit: (inout [String: Any]) -> Void) throws -> (bytes: [UInt8], manifest: OCIManifest) {
        let state = Descriptor(mediaType: MediaType.state, digest: Digest(of: Array("s".utf8)), size: 1)
        let chunk = ChunkEntry(index: 4, digest: Digest(of: Array("c".utf8)), codec: .zstd, size: 100)
        let config = ImageConfig(memorySize: 5 * 65536, chunkSize: 65536, codec: .zstd, compressionLevel: 3,
                                 chunks: [chunk], state: state, created: "now", creator: "test")
        var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config)) as! [String: Any]
        edit(&json)
        let manifest = OCIManifest(artifactType: nil, config: state, layers: [state, Descriptor(mediaType: MediaType.chunk(.zstd), digest: chunk.digest, size: 100)])
        return (Array(try JSONSerialization.data(withJSONObject: json)), manifest)
    }

    static func expectRefused(_ edit: (inout [String: Any]) -> Void, saying fragment: String,
                              sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (bytes, manifest) = try config(edit)
        do {
            let accepted = try Image.checkedConfig(bytes, manifest: manifest, image: "crafted")
            Issue.record("accepted \(accepted)", sourceLocation: sourceLocation)
        } catch {
            #expect(error.description.contains(fragment), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("crash inputs: huge chunk indices, memory and state sizes are refused, not overflowed")
    func craftedNumbers() throws {
        // The unmodified config is accepted.
        let (bytes, manifest) = try Self.config { _ in }
        Self.expectInvariants(try Image.checkedConfig(bytes, manifest: manifest, image: "crafted"))

        func chunkIndex(_ index: Int) -> (inout [String: Any]) -> Void {
            { config in
                var chunks = config["chunks"] as! [[String: Any]]
                chunks[0]["index"] = index
                config["chunks"] = chunks
            }
        }
        try Self.expectRefused(chunkIndex(1 << 62), saying: "names chunk 4611686018427387904, past the memory size")
        try Self.expectRefused(chunkIndex(Int.max), saying: "past the memory size")
        try Self.expectRefused(chunkIndex(-1), saying: "names chunk -1, a negative position")
        try Self.expectRefused({ $0["memorySize"] = 1 << 60 }, saying: "memory size 1152921504606846976 is more than")
        try Self.expectRefused({ $0["memorySize"] = Int64.max }, saying: "is more than")
        try Self.expectRefused({ $0["memorySize"] = Int64.min }, saying: "must be positive")
        try Self.expectRefused({ $0["chunkSize"] = Int.min }, saying: "is not a power of two")
        try Self.expectRefused({ $0["workingSet"] = [Int.max] }, saying: "working set names chunk")
        try Self.expectRefused({ config in
            var state = config["state"] as! [String: Any]
            state["size"] = Int64.max
            config["state"] = state
        }, saying: "state blob size 9223372036854775807 is implausible")
    }

    @Test("derived sizes of an unchecked config never trap")
    func derivedSizesOfExtremeConfigs() throws {
        let state = Descriptor(mediaType: MediaType.state, digest: Digest(of: []), size: 0)
        for (memory, chunk) in [(Int64.max, 4096), (Int64.min, 4096), (1 << 60, 0), (1, Int.min), (Int64.max, Int.max)] {
            let config = ImageConfig(memorySize: memory, chunkSize: chunk, codec: .zstd, compressionLevel: nil,
                                     chunks: [], state: state, created: "", creator: "")
            #expect(config.chunkCount >= 0)
            #expect(config.chunkLength(Int.max) == 0 && config.chunkLength(Int.min) == 0)
            #expect(config.validationProblem() != nil)
        }
    }
}
