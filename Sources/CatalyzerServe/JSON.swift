import Foundation

/// JSON through Foundation: the event is re-serialized (not decoded into types) because it is
/// whatever the caller sent and goes to the handler as is, only put on one line.
enum JSON {
    /// Compact JSON of a JSONSerialization-compatible value; never fails (a value that cannot be
    /// serialized is a programming error in this module, so it falls back to `null`).
    static func encode(_ value: Any) -> [UInt8] {
        (try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .withoutEscapingSlashes, .sortedKeys]))
            .map(Array.init) ?? Array("null".utf8)
    }
}

/// The event a caller sent, as the one line of JSON a runner reads.
public enum EventPayload {
    public enum Failure: Error, Equatable {
        case notJSON(String)
    }

    /// `body` parsed and written back compactly: the runner reads one request per line, so a
    /// pretty-printed event (newlines) would become several requests. An empty body is `{}`, as
    /// Lambda treats an invocation without payload.
    /// A body already on one line (no CR or LF: inside strings they can only be escaped) that is
    /// valid JSON goes through unchanged, checked by `JSONSyntax` without building objects:
    /// Foundation's parse and re-serialization cost ~25 µs of a sub-millisecond request.
    public static func normalize(_ body: [UInt8]) throws(Failure) -> [UInt8] {
        if body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return Array("{}".utf8) }
        if !body.contains(where: { $0 == 0x0A || $0 == 0x0D }) && JSONSyntax.isValid(body) { return body }
        let value: Any
        do {
            value = try JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed])
        } catch {
            throw .notJSON("Could not parse request body into json: the payload is not valid JSON (\(body.count) bytes)")
        }
        guard let line = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .withoutEscapingSlashes]) else {
            throw .notJSON("Could not parse request body into json: the payload cannot be re-serialized")
        }
        return Array(line)
    }
}

/// Whether bytes are one JSON text (RFC 8259, any value at the top, as `.fragmentsAllowed`) in
/// valid UTF-8, checked in one pass without building anything. Nesting deeper than
/// `maximumDepth` is refused here (the caller falls back to Foundation, which decides).
enum JSONSyntax {
    static let maximumDepth = 512

    static func isValid(_ bytes: [UInt8]) -> Bool {
        guard String(validating: bytes, as: UTF8.self) != nil else { return false }
        return bytes.withUnsafeBufferPointer { buffer in
            var scanner = Scanner(bytes: buffer)
            scanner.skipSpace()
            guard scanner.value(depth: 0) else { return false }
            scanner.skipSpace()
            return scanner.index == buffer.count
        }
    }

    private struct Scanner {
        let bytes: UnsafeBufferPointer<UInt8>
        var index = 0

        init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        var current: UInt8? { index < bytes.count ? bytes[index] : nil }

        mutating func skipSpace() {
            while let byte = current, byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D { index += 1 }
        }

        mutating func literal(_ text: StaticString) -> Bool {
            let count = text.utf8CodeUnitCount
            guard index + count <= bytes.count else { return false }
            for offset in 0..<count where bytes[index + offset] != text.utf8Start[offset] { return false }
            index += count
            return true
        }

        mutating func value(depth: Int) -> Bool {
            guard depth < JSONSyntax.maximumDepth, let byte = current else { return false }
            switch byte {
            case UInt8(ascii: "{"): return container(close: UInt8(ascii: "}"), keyed: true, depth: depth)
            case UInt8(ascii: "["): return container(close: UInt8(ascii: "]"), keyed: false, depth: depth)
            case UInt8(ascii: "\""): return string()
            case UInt8(ascii: "t"): return literal("true")
            case UInt8(ascii: "f"): return literal("false")
            case UInt8(ascii: "n"): return literal("null")
            default: return number()
            }
        }

        mutating func container(close: UInt8, keyed: Bool, depth: Int) -> Bool {
            index += 1
            skipSpace()
            if current == close {
                index += 1
                return true
            }
            while true {
                if keyed {
                    guard current == UInt8(ascii: "\""), string() else { return false }
                    skipSpace()
                    guard current == UInt8(ascii: ":") else { return false }
                    index += 1
                    skipSpace()
                }
                guard value(depth: depth + 1) else { return false }
                skipSpace()
                guard let byte = current else { return false }
                index += 1
                if byte == close { return true }
                guard byte == UInt8(ascii: ",") else { return false }
                skipSpace()
            }
        }

        /// A string from its opening quote: no raw control characters, only JSON's escapes.
        mutating func string() -> Bool {
            index += 1
            while let byte = current {
                index += 1
                switch byte {
                case UInt8(ascii: "\""):
                    return true
                case UInt8(ascii: "\\"):
                    guard let escaped = current else { return false }
                    index += 1
                    switch escaped {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                         UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        continue
                    case UInt8(ascii: "u"):
                        for _ in 0..<4 {
                            guard let hex = current, (0x30...0x39).contains(hex) || (0x41...0x46).contains(hex) || (0x61...0x66).contains(hex) else {
                                return false
                            }
                            index += 1
                        }
                    default:
                        return false
                    }
                case 0..<0x20:
                    return false
                default:
                    continue
                }
            }
            return false
        }

        /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
        mutating func number() -> Bool {
            func isDigit(_ byte: UInt8?) -> Bool { byte.map { (0x30...0x39).contains($0) } ?? false }
            if current == UInt8(ascii: "-") { index += 1 }
            guard isDigit(current) else { return false }
            if current == UInt8(ascii: "0") {
                index += 1
            } else {
                while isDigit(current) { index += 1 }
            }
            if current == UInt8(ascii: ".") {
                index += 1
                guard isDigit(current) else { return false }
                while isDigit(current) { index += 1 }
            }
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                index += 1
                if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
                guard isDigit(current) else { return false }
                while isDigit(current) { index += 1 }
            }
            return true
        }
    }
}
