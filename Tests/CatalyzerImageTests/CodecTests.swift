import Testing
@testable import CatalyzerImage

@Suite struct CodecTests {
    @Test(arguments: Codec.allCases)
    func roundTripsRandomAndRepetitiveData(codec: Codec) throws {
        for input in [try Fixtures.random(100_000), [UInt8](repeating: 7, count: 65536), Array("abc".utf8)] {
            let blob = try input.withUnsafeBytes { try codec.compress($0) }
            var output = [UInt8](repeating: 0xAA, count: input.count)
            try blob.withUnsafeBytes { raw in try output.withUnsafeMutableBytes { try codec.decompress(raw, into: $0) } }
            #expect(output == input)
        }
    }

    @Test func compressesRepetitiveData() throws {
        let input = [UInt8](repeating: 1, count: 262_144)
        for codec in [Codec.zstd, .lz4] {
            let blob = try input.withUnsafeBytes { try codec.compress($0) }
            #expect(blob.count < input.count / 50, "\(codec) left \(blob.count) bytes")
        }
    }

    @Test(arguments: Codec.allCases)
    func rejectsGarbageAndWrongSizes(codec: Codec) throws {
        let input = try Fixtures.random(4096) + [UInt8](repeating: 0, count: 4096)
        let blob = try input.withUnsafeBytes { try codec.compress($0) }
        // One byte short of the real size, and one byte more: both must fail, never truncate or pad.
        for size in [input.count - 1, input.count + 1] {
            var output = [UInt8](repeating: 0, count: size)
            #expect(throws: CodecError.self) {
                try blob.withUnsafeBytes { raw in try output.withUnsafeMutableBytes { try codec.decompress(raw, into: $0) } }
            }
        }
        if codec != .none {
            let garbage = try Fixtures.random(blob.count)
            var output = [UInt8](repeating: 0, count: input.count)
            #expect(throws: CodecError.self) {
                try garbage.withUnsafeBytes { raw in try output.withUnsafeMutableBytes { try codec.decompress(raw, into: $0) } }
            }
        }
    }
}

@Suite struct DigestAndSizeTests {
    @Test func digestAcceptsOnlyCanonicalSHA256() {
        let good = "sha256:" + String(repeating: "ab", count: 32)
        #expect(Digest(good)?.description == good)
        #expect(Digest("sha256:" + String(repeating: "AB", count: 32)) == nil)
        #expect(Digest("sha256:../../../../etc/passwd") == nil)
        #expect(Digest("sha512:" + String(repeating: "ab", count: 32)) == nil)
        #expect(Digest(good + "0") == nil)
    }

    @Test func digestOfKnownInput() {
        #expect(Digest(of: Array("abc".utf8)).hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func parsesAndFormatsByteCounts() {
        #expect(ByteCount.parse("4096") == 4096)
        #expect(ByteCount.parse("256K") == 262_144)
        #expect(ByteCount.parse("256KiB") == 262_144)
        #expect(ByteCount.parse("1m") == 1_048_576)
        #expect(ByteCount.parse("2G") == 2_147_483_648)
        #expect(ByteCount.parse("12Q") == nil)
        #expect(ByteCount.parse("") == nil)
        #expect(ByteCount.parse("99999999999T") == nil)
        #expect(ByteCount.format(262_144) == "256 KiB")
        #expect(ByteCount.format(1_572_864) == "1.5 MiB")
        #expect(ByteCount.format(100) == "100 B")
    }

    @Test func chunkSizesArePowersOfTwoInRange() {
        #expect(ChunkSize.isValid(ChunkSize.default))
        #expect(ChunkSize.isValid(4096))
        #expect(!ChunkSize.isValid(4095))
        #expect(!ChunkSize.isValid(3 * 4096))
        #expect(!ChunkSize.isValid(128 << 20))
    }

    @Test func imageNamesCannotEscapeTheirDirectory() {
        #expect(ImageStore.isValidName("python-heavy_v1.2"))
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", String(repeating: "x", count: 129), "naïve"] {
            #expect(!ImageStore.isValidName(bad), "\(bad) was accepted")
        }
    }
}
