import Crypto
import Foundation

/// AWS Signature Version 4, the parts a verifier needs: the canonical request, the string to
/// sign, the signing key and the signature. Written from AWS's description of the algorithm and
/// checked against its published test suite (`SigV4Tests`).
public enum SigV4 {
    public static let algorithm = "AWS4-HMAC-SHA256"
    /// SHA-256 of the empty payload.
    public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    /// What is signed of one HTTP request.
    public struct Request: Sendable {
        public var method: String
        /// The path as it was on the wire (still percent-encoded, without the query).
        public var path: String
        /// The query as it was on the wire (without `?`), or "".
        public var query: String
        /// Header names (any case) and values, repeated names allowed.
        public var headers: [(name: String, value: String)]
        /// Hex SHA-256 of the body (or `UNSIGNED-PAYLOAD`).
        public var payloadHash: String

        public init(method: String, path: String, query: String, headers: [(name: String, value: String)], payloadHash: String) {
            self.method = method
            self.path = path
            self.query = query
            self.headers = headers
            self.payloadHash = payloadHash
        }
    }

    /// RFC 3986 unreserved characters, the only ones SigV4 leaves unencoded.
    static func isUnreserved(_ byte: UInt8) -> Bool {
        (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39)
            || byte == 0x2D || byte == 0x2E || byte == 0x5F || byte == 0x7E
    }

    /// Percent-encodes every byte but the unreserved ones (and `/` when `keepSlash`), uppercase hex.
    public static func uriEncode(_ text: String, keepSlash: Bool = false) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            if isUnreserved(byte) || (keepSlash && byte == 0x2F) {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }

    /// Decodes `%XX` escapes; malformed escapes stay as they are (they are then encoded again,
    /// as the signer would have done with the same bytes).
    public static func percentDecode(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == 0x25, iterator.count >= 2,
               let high = hexValue(iterator[iterator.startIndex]), let low = hexValue(iterator[iterator.startIndex + 1]) {
                bytes.append(high << 4 | low)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: byte - 0x30
        case 0x41...0x46: byte - 0x41 + 10
        case 0x61...0x66: byte - 0x61 + 10
        default: nil
        }
    }

    /// The canonical URI for every service but S3: the path with `.`/`..` and empty segments
    /// removed, then URI-encoded once more. Clients sign the path they send, which they already
    /// percent-encoded, so the second encoding is what makes a function ARN's `%3A` become
    /// `%253A` in the canonical request, as botocore and the SDKs compute it.
    public static func canonicalURI(_ path: String) -> String {
        var segments: [Substring] = []
        for segment in path.split(separator: "/", omittingEmptySubsequences: true) {
            if segment == "." { continue }
            if segment == ".." { _ = segments.popLast(); continue }
            segments.append(segment)
        }
        var normalized = "/" + segments.joined(separator: "/")
        if path.hasSuffix("/"), normalized != "/" { normalized += "/" }
        return uriEncode(normalized, keepSlash: true)
    }

    /// Parameters decoded, each name and value encoded strictly, sorted by name then value.
    public static func canonicalQuery(_ query: String) -> String {
        guard !query.isEmpty else { return "" }
        let pairs: [(String, String)] = query.split(separator: "&", omittingEmptySubsequences: true).map { item in
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = uriEncode(percentDecode(parts[0]))
            let value = parts.count > 1 ? uriEncode(percentDecode(parts[1])) : ""
            return (name, value)
        }
        return pairs.sorted { $0.0 == $1.0 ? $0.1 < $1.1 : $0.0 < $1.0 }.map { "\($0.0)=\($0.1)" }.joined(separator: "&")
    }

    /// `name:value\n` for each signed header, in the order of `signedHeaders` (already sorted,
    /// lowercase): values trimmed, inner runs of spaces collapsed, repeated headers joined by `,`.
    /// Nil when a signed header is absent from the request.
    public static func canonicalHeaders(_ headers: [(name: String, value: String)], signedHeaders: [String]) -> String? {
        var values: [String: [String]] = [:]
        for (name, value) in headers {
            let trimmed = value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
                .trimmingCharacters(in: .whitespaces)
            values[name.lowercased(), default: []].append(trimmed)
        }
        var out = ""
        for name in signedHeaders {
            guard let present = values[name] else { return nil }
            out += name + ":" + present.joined(separator: ",") + "\n"
        }
        return out
    }

    /// The canonical request; nil when a signed header is missing.
    public static func canonicalRequest(_ request: Request, signedHeaders: [String]) -> String? {
        guard let headers = canonicalHeaders(request.headers, signedHeaders: signedHeaders) else { return nil }
        return [request.method.uppercased(), canonicalURI(request.path), canonicalQuery(request.query), headers,
                signedHeaders.joined(separator: ";"), request.payloadHash].joined(separator: "\n")
    }

    /// Lowercase hex. By table: `String(format:)` per byte cost ~40 µs per digest, on the
    /// request path of every invocation.
    public static func hex<D: Sequence>(_ bytes: D) -> String where D.Element == UInt8 {
        var digits: [UInt8] = []
        digits.reserveCapacity(bytes.underestimatedCount * 2)
        for byte in bytes {
            digits.append(hexDigits[Int(byte >> 4)])
            digits.append(hexDigits[Int(byte & 0x0F)])
        }
        return String(decoding: digits, as: UTF8.self)
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    public static func sha256Hex(_ bytes: some DataProtocol) -> String { hex(SHA256.hash(data: bytes)) }

    /// `date/region/service/aws4_request`.
    public static func scope(date: String, region: String, service: String) -> String {
        "\(date)/\(region)/\(service)/aws4_request"
    }

    public static func stringToSign(amzDate: String, scope: String, canonicalRequest: String) -> String {
        [algorithm, amzDate, scope, sha256Hex(Array(canonicalRequest.utf8))].joined(separator: "\n")
    }

    /// HMAC chain `AWS4`+secret → date → region → service → `aws4_request`.
    public static func signingKey(secret: String, date: String, region: String, service: String) -> SymmetricKey {
        var key = SymmetricKey(data: Array(("AWS4" + secret).utf8))
        for part in [date, region, service, "aws4_request"] {
            key = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
        }
        return key
    }

    /// The hex signature of `request`; nil when a signed header is missing from it.
    public static func signature(_ request: Request, signedHeaders: [String], secret: String, amzDate: String,
                                 region: String, service: String) -> String? {
        guard let canonical = canonicalRequest(request, signedHeaders: signedHeaders) else { return nil }
        let date = String(amzDate.prefix(8))
        let toSign = stringToSign(amzDate: amzDate, scope: scope(date: date, region: region, service: service), canonicalRequest: canonical)
        let key = signingKey(secret: secret, date: date, region: region, service: service)
        return hex(HMAC<SHA256>.authenticationCode(for: Array(toSign.utf8), using: key))
    }

    /// The `Authorization` header value a client would send (for tests and tools).
    public static func authorization(_ request: Request, accessKey: String, secret: String, amzDate: String,
                                     region: String, service: String) -> String? {
        let signed = Array(Set(request.headers.map { $0.name.lowercased() })).sorted()
        guard let signature = signature(request, signedHeaders: signed, secret: secret, amzDate: amzDate, region: region, service: service) else {
            return nil
        }
        let scope = scope(date: String(amzDate.prefix(8)), region: region, service: service)
        return "\(algorithm) Credential=\(accessKey)/\(scope), SignedHeaders=\(signed.joined(separator: ";")), Signature=\(signature)"
    }
}
