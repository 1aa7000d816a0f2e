import CatalyzerRuntime
import Foundation

/// ListFunctions and GetFunction bodies: the fields of Lambda's `FunctionConfiguration` that
/// mean something here, as boto3's `list_functions` / `get_function` parse them.
public struct FunctionDocuments: Sendable {
    /// The region and account put in ARNs: a single node has neither, but clients expect ARNs.
    public var region: String
    public var account: String
    public var timeoutSeconds: Double

    public init(region: String = "local", account: String = "000000000000", timeoutSeconds: Double) {
        self.region = region
        self.account = account
        self.timeoutSeconds = timeoutSeconds
    }

    public func arn(_ name: String) -> String { "arn:aws:lambda:\(region):\(account):function:\(name)" }

    func configuration(_ function: FunctionDescription) -> [String: Any] {
        let hex = function.imageDigest.hasPrefix("sha256:") ? String(function.imageDigest.dropFirst(7)) : function.imageDigest
        return [
            "FunctionName": function.name,
            "FunctionArn": arn(function.name),
            "Runtime": "python3.11",
            "Handler": function.handler ?? "\(function.name).handler",
            "Role": "arn:aws:iam::\(account):role/catalyzer",
            "CodeSize": 0,
            "Description": "Catalyzer image \(function.name) (\(function.imageDigest))",
            // Lambda's Timeout is whole seconds.
            "Timeout": Int((function.timeoutSeconds ?? timeoutSeconds).rounded(.up)),
            "MemorySize": Int(function.memoryBytes >> 20),
            "LastModified": Self.lambdaTimestamp(function.created),
            "CodeSha256": hex,
            "Version": FunctionName.latest,
            "PackageType": "Image",
            "Architectures": ["x86_64"],
            "State": "Active",
            "LastUpdateStatus": "Successful",
        ]
    }

    public func list(_ functions: [FunctionDescription]) -> [UInt8] {
        JSON.encode(["Functions": functions.map(configuration)])
    }

    public func get(_ function: FunctionDescription) -> [UInt8] {
        JSON.encode([
            "Configuration": configuration(function),
            "Code": ["RepositoryType": "Catalyzer", "ImageUri": "\(function.name)@\(function.imageDigest)",
                     "ResolvedImageUri": "\(function.name)@\(function.imageDigest)"],
        ] as [String: Any])
    }

    /// RFC 3339 → Lambda's `2019-08-14T22:26:11.234+0000`; anything unparsable is passed on.
    static func lambdaTimestamp(_ rfc3339: String) -> String {
        let parser = ISO8601DateFormatter()
        parser.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let plain = ISO8601DateFormatter()
        guard let date = parser.date(from: rfc3339) ?? plain.date(from: rfc3339) else { return rfc3339 }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd'T'HH:mm:ss.SSS'+0000'"
        return formatter.string(from: date)
    }
}

/// Lambda's function-error bodies for outcomes that are not a result.
public enum FunctionErrorBody {
    public static func handler(type: String, message: String, stackTrace: [String]) -> [UInt8] {
        JSON.encode(["errorMessage": message, "errorType": type, "stackTrace": frames(stackTrace)] as [String: Any])
    }

    /// Python traceback lines regrouped as Lambda's Python runtime reports them: one entry per
    /// frame (`  File "…", line N, in f` plus its source lines), without the `Traceback …` header,
    /// the exception line, or the frames of Catalyzer's runner (Lambda hides its bootstrap's
    /// frames too; they say nothing about the function). Lines that are not a traceback are
    /// returned as they are.
    static func frames(_ lines: [String]) -> [String] {
        var frames: [String] = []
        var current: String?
        for line in lines {
            if line.hasPrefix("  File \"") {
                if let current { frames.append(current) }
                current = line + "\n"
            } else if line.hasPrefix("    "), current != nil {
                current! += line + "\n"
            } else {
                if let done = current { frames.append(done) }
                current = nil
            }
        }
        if let current { frames.append(current) }
        guard !frames.isEmpty else { return lines }
        return frames.filter { !$0.hasPrefix("  File \"/opt/catalyzer/runner.py\"") }
    }

    /// `2016-06-06T03:10:19.163Z 2cfef79a-… Task timed out after 10.00 seconds`, as Lambda
    /// words it, with the time the invocation took.
    public static func timeout(requestId: String, elapsedSeconds: Double, at date: Date = Date()) -> [UInt8] {
        let message = "\(isoMilliseconds(date)) \(requestId) Task timed out after \(String(format: "%.2f", elapsedSeconds)) seconds"
        return JSON.encode(["errorMessage": message, "errorType": "Sandbox.Timedout"])
    }

    public static func failed(requestId: String, reason: String) -> [UInt8] {
        JSON.encode(["errorMessage": "RequestId: \(requestId) Error: \(reason)", "errorType": "Runtime.ExitError"])
    }

    static func isoMilliseconds(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }
}
