import ArgumentParser
import Foundation
import Glibc

/// Output helpers. Everything goes through `write(2)` on fds 1 and 2, never through buffered
/// globals, so lines from concurrent code are never interleaved or lost at exit.
enum Output {
    static func out(_ text: String) { write(STDOUT_FILENO, text + "\n") }
    static func err(_ text: String) { write(STDERR_FILENO, text + "\n") }

    private static func write(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            done += n
        }
        bytes.removeAll()
    }

    /// Prints `value` as pretty, key-sorted JSON on stdout.
    static func json<T: Encodable>(_ value: T) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        out(String(decoding: (try? encoder.encode(value)) ?? Data("null".utf8), as: UTF8.self))
    }

    /// Runs a command body; any error is printed as `catalyzer: error: ...` and exits 1.
    static func run(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch let error as ExitCode {
            throw error
        } catch {
            err("catalyzer: error: \(error)")
            throw ExitCode.failure
        }
    }

    /// `run` for async command bodies.
    static func runAsync(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as ExitCode {
            throw error
        } catch {
            err("catalyzer: error: \(error)")
            throw ExitCode.failure
        }
    }

    /// A table with left-aligned columns, as `docker images` prints.
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, cell in
                i == cells.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}
