import CatalyzerBench
import CatalyzerTestSupport
import Foundation
@testable import CatalyzerImage

/// Memory contents for image tests, written to files in a temporary directory.
enum Fixtures {
    /// `count` bytes from the kernel's random generator: incompressible, no zero chunks.
    static func random(_ count: Int) throws -> [UInt8] { try MemoryFixtures.random(count) }

    /// Mostly zeros, like a fresh guest (see `MemoryFixtures.zeroHeavy`).
    static func zeroHeavy(_ count: Int) throws -> [UInt8] { try MemoryFixtures.zeroHeavy(count) }

    /// The memory of a live python3 process, read through /proc/PID/mem; cached per test run.
    static func pythonMemory(in directory: TemporaryDirectory) throws -> String {
        let path = directory.file("python.mem")
        _ = try ProcessMemory.dumpPython(to: path)
        return path
    }

    static func write(_ bytes: [UInt8], to path: String) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    static func read(_ path: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }
}
