/// The binary encoding of checkpoint state: little-endian fixed-width integers, and byte strings
/// and arrays prefixed with their length. A hand-written format rather than JSON because a
/// restore decodes it on every invocation, where microseconds count; a version number in the
/// blob's header (see `KernelSnapshot.formatVersion`) guards changes.
public struct SnapshotWriter {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func write<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    public mutating func write(_ value: Bool) { write(UInt8(value ? 1 : 0)) }

    public mutating func write(_ value: [UInt8]) {
        write(UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    public mutating func write(_ value: String) { write(Array(value.utf8)) }

    public mutating func write<Element>(_ values: [Element], _ each: (inout SnapshotWriter, Element) -> Void) {
        write(UInt64(values.count))
        for value in values { each(&self, value) }
    }
}

/// Why a state blob could not be decoded: where in it, and what was expected there.
public struct SnapshotDecodingError: Error, CustomStringConvertible {
    public let offset: Int
    public let detail: String
    public var description: String { "\(detail) (at byte \(offset) of the state blob)" }
}

/// Reads what `SnapshotWriter` wrote; every read checks bounds, so a truncated or corrupted blob
/// is an error naming the field, never a crash.
public struct SnapshotReader {
    private let bytes: [UInt8]
    public private(set) var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var isAtEnd: Bool { offset == bytes.count }

    public func failure(_ detail: String) -> SnapshotDecodingError { SnapshotDecodingError(offset: offset, detail: detail) }

    public mutating func read<T: FixedWidthInteger>(_ type: T.Type, _ field: String) throws(SnapshotDecodingError) -> T {
        let size = MemoryLayout<T>.size
        guard bytes.count - offset >= size else { throw failure("state ends inside \(field)") }
        let value = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
        offset += size
        return T(littleEndian: value)
    }

    /// An unsigned 64-bit field that becomes an `Int` (a size, an index): one above `Int.max` is
    /// an error here rather than a trap in the conversion, since the blob is untrusted input.
    public mutating func readInt(_ field: String) throws(SnapshotDecodingError) -> Int {
        let value = try read(UInt64.self, field)
        guard value <= UInt64(Int.max) else { throw failure("\(field) \(value) is out of range") }
        return Int(value)
    }

    public mutating func readBool(_ field: String) throws(SnapshotDecodingError) -> Bool {
        switch try read(UInt8.self, field) {
        case 0: return false
        case 1: return true
        case let other: throw failure("\(field) is \(other), not a boolean")
        }
    }

    /// A count of items that each take at least `minimumSize` bytes: bounded by what is left,
    /// so a corrupted count cannot make the decoder allocate without limit.
    public mutating func readCount(_ field: String, minimumSize: Int = 1) throws(SnapshotDecodingError) -> Int {
        let count = try read(UInt64.self, field)
        guard count <= UInt64((bytes.count - offset) / max(1, minimumSize)) else {
            throw failure("\(field) claims \(count) items, more than the state holds")
        }
        return Int(count)
    }

    public mutating func readBytes(_ field: String) throws(SnapshotDecodingError) -> [UInt8] {
        let count = try readCount(field)
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    public mutating func readString(_ field: String) throws(SnapshotDecodingError) -> String {
        let raw = try readBytes(field)
        guard let text = String(validating: raw, as: UTF8.self) else { throw failure("\(field) is not UTF-8") }
        return text
    }

    public mutating func readArray<Element>(_ field: String, minimumSize: Int = 1,
                                            _ each: (inout SnapshotReader) throws(SnapshotDecodingError) -> Element) throws(SnapshotDecodingError) -> [Element] {
        let count = try readCount(field, minimumSize: minimumSize)
        var values: [Element] = []
        values.reserveCapacity(count)
        for _ in 0..<count { values.append(try each(&self)) }
        return values
    }
}
