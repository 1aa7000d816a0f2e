import Foundation

/// Memory contents for image tests (shared by the image and registry tests).
public enum MemoryFixtures {
    /// `count` bytes from the kernel's random generator: incompressible, no zero chunks.
    public static func random(_ count: Int) throws -> [UInt8] {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
        defer { try? handle.close() }
        return Array(try handle.read(upToCount: count) ?? Data())
    }

    /// Mostly zeros, like a fresh guest: a random page every 97 pages, a repeated text pattern
    /// in one region, and a length that is not a multiple of any chunk size.
    public static func zeroHeavy(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let noise = try random(count / 97 + 4096)
        var page = 0
        while page * 4096 + 4096 <= count {
            if page % 97 == 3 {
                let start = page * 4096
                let source = (page / 97) * 4096 % max(1, noise.count - 4096)
                bytes.replaceSubrange(start..<start + 4096, with: noise[source..<source + 4096])
            }
            page += 1
        }
        let pattern = Array("catalyzer restores memory on first touch. ".utf8)
        for i in 0..<min(count / 4, 1 << 20) { bytes[count / 2 + i] = pattern[i % pattern.count] }
        return bytes
    }
}
