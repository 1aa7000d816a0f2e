import Crypto
import Foundation

/// Checks a request's SigV4 `Authorization` header against the listed access keys.
public struct RequestAuthenticator: Sendable {
    public let keys: AccessKeys
    /// How far `X-Amz-Date` may be from this machine's clock, either way (AWS allows 15 minutes).
    public let allowedSkew: Duration
    /// The SigV4 service name clients sign for.
    public let service = "lambda"

    public init(keys: AccessKeys, allowedSkew: Duration = .seconds(15 * 60)) {
        self.keys = keys
        self.allowedSkew = allowedSkew
    }

    /// Why a request is refused; `LambdaError` is the answer.
    public enum Failure: Error, Equatable {
        case missing
        case malformed(String)
        case unknownKey(String)
        case wrongService(String)
        case skewed(amzDate: String, now: String)
        case mismatch

        public var lambdaError: LambdaError {
            switch self {
            case .missing: .invalidSignature("Missing Authentication Token: this server requires AWS Signature Version 4 (an Authorization header)")
            case .malformed(let why): .invalidSignature("Authorization header requires a valid AWS Signature Version 4: \(why)")
            case .unknownKey: .unrecognizedClient
            case .wrongService(let service): .invalidSignature("Credential should be scoped to correct service: 'lambda', not '\(service)'")
            case .skewed(let amzDate, let now):
                .invalidSignature("Signature expired: \(amzDate) is more than 15 minutes away from the server's time \(now)")
            case .mismatch:
                .invalidSignature("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
            }
        }
    }

    /// The parts of `AWS4-HMAC-SHA256 Credential=AK/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex`.
    struct Authorization {
        var accessKey: String
        var date: String
        var region: String
        var service: String
        var signedHeaders: [String]
        var signature: String

        init(parsing header: String) throws(Failure) {
            guard header.hasPrefix(SigV4.algorithm + " ") else {
                throw .malformed("the algorithm must be \(SigV4.algorithm)")
            }
            var fields: [String: String] = [:]
            for item in header.dropFirst(SigV4.algorithm.count + 1).split(separator: ",") {
                let pair = item.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
                guard pair.count == 2 else { throw .malformed("'\(item)' is not NAME=VALUE") }
                fields[String(pair[0])] = String(pair[1])
            }
            guard let credential = fields["Credential"], let signed = fields["SignedHeaders"], let signature = fields["Signature"] else {
                throw .malformed("Credential, SignedHeaders and Signature are required")
            }
            let scope = credential.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard scope.count == 5, scope[4] == "aws4_request", scope[1].count == 8, !scope[0].isEmpty else {
                throw .malformed("Credential must be ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request")
            }
            let names = signed.split(separator: ";").map(String.init)
            guard !names.isEmpty, names == names.map({ $0.lowercased() }).sorted() else {
                throw .malformed("SignedHeaders must be lowercase and sorted")
            }
            guard signature.count == 64, signature.allSatisfy(\.isHexDigit) else { throw .malformed("Signature must be 64 hex digits") }
            self.accessKey = scope[0]
            self.date = scope[1]
            self.region = scope[2]
            self.service = scope[3]
            self.signedHeaders = names
            self.signature = signature.lowercased()
        }
    }

    /// Verifies `request`: the key is listed, the date is close to `now`, and the signature is
    /// the one its secret gives. Returns the access key id.
    public func verify(_ request: SigV4.Request, now: Date = Date()) throws(Failure) -> String {
        let authorizationHeaders = request.headers.filter { $0.name.lowercased() == "authorization" }
        guard let header = authorizationHeaders.first?.value else { throw .missing }
        guard authorizationHeaders.count == 1 else { throw .malformed("more than one Authorization header") }
        let authorization = try Authorization(parsing: header)
        guard let secret = keys.secrets[authorization.accessKey] else { throw .unknownKey(authorization.accessKey) }
        guard authorization.service == service else { throw .wrongService(authorization.service) }
        guard authorization.signedHeaders.contains("host") else { throw .malformed("the host header must be signed") }
        guard let amzDate = request.headers.first(where: { $0.name.lowercased() == "x-amz-date" })?.value,
              authorization.signedHeaders.contains("x-amz-date") else {
            throw .malformed("a signed X-Amz-Date header is required")
        }
        guard let date = Self.parseAmzDate(amzDate) else { throw .malformed("X-Amz-Date must be YYYYMMDD'T'HHMMSS'Z'") }
        guard amzDate.hasPrefix(authorization.date) else { throw .malformed("the Credential date does not match X-Amz-Date") }
        let skew = abs(date.timeIntervalSince(now))
        guard skew <= Double(allowedSkew.components.seconds) else {
            throw .skewed(amzDate: amzDate, now: Self.formatAmzDate(now))
        }
        guard let expected = SigV4.signature(request, signedHeaders: authorization.signedHeaders, secret: secret, amzDate: amzDate,
                                             region: authorization.region, service: authorization.service) else {
            throw .malformed("a header named in SignedHeaders is missing from the request")
        }
        // Compared in constant time, so the time to refuse tells nothing about how close a
        // forged signature came.
        guard Self.constantTimeEqual(Array(expected.utf8), Array(authorization.signature.utf8)) else { throw .mismatch }
        return authorization.accessKey
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }

    static func parseAmzDate(_ text: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        guard text.count == 16 else { return nil }
        return formatter.date(from: text)
    }

    public static func formatAmzDate(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return formatter.string(from: date)
    }
}
