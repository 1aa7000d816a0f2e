import Crypto

/// A content digest in OCI form, `sha256:<64 lowercase hex>`.
///
/// Digests arrive from manifests on disk and from registries, and they become file names under
/// `blobs/sha256/`, so the initializer accepts nothing but the exact canonical form: a digest
/// like `sha256:../../etc/passwd` is rejected before it can ever become a path.
public struct Digest: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    /// The 64 lowercase hex characters after `sha256:`.
    public let hex: String

    public init?(_ string: String) {
        guard string.hasPrefix("sha256:") else { return nil }
        let hex = string.dropFirst("sha256:".count)
        guard hex.utf8.count == 64,
              hex.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) })
        else { return nil }
        self.hex = String(hex)
    }

    /// The SHA-256 digest of `bytes`.
    public init(of bytes: UnsafeRawBufferPointer) {
        hex = Self.hexString(SHA256.hash(data: bytes))
    }

    public init(of bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { Digest(of: $0) }
    }

    /// The digest a running SHA-256 hash of a stream has reached.
    public init(finalizing hasher: SHA256) {
        hex = Self.hexString(hasher.finalize())
    }

    public var description: String { "sha256:" + hex }

    /// The first 12 hex characters, for tables meant for people.
    public var short: String { String(hex.prefix(12)) }

    public static func < (lhs: Digest, rhs: Digest) -> Bool { lhs.hex < rhs.hex }

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        let string = try container.decode(String.self)
        guard let digest = Digest(string) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "'\(string)' is not a sha256 digest (sha256:<64 hex>)")
        }
        self = digest
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    private static func hexString(_ digest: SHA256.Digest) -> String {
        let table = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(64)
        for byte in digest {
            out.append(table[Int(byte >> 4)])
            out.append(table[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
