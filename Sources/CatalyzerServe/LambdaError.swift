import CatalyzerRuntime

/// An error the front end answers with, in Lambda's shape: the `x-amzn-ErrorType` header names
/// the type (botocore maps it to the exception class a caller catches, e.g.
/// `ResourceNotFoundException`), the body is `{"Type": "User"|"Service", "Message": …}` (Lambda
/// writes `Message`; botocore reads `message` or `Message`).
public enum LambdaError: Error, Sendable, Equatable {
    case resourceNotFound(String)
    case requestTooLarge(size: Int, limit: Int)
    case tooManyRequests(String)
    case invalidRequestContent(String)
    case invalidSignature(String)
    case unrecognizedClient
    case serviceException(String)
    case shuttingDown
    case notFound(method: String, path: String)

    public var status: Int {
        switch self {
        case .resourceNotFound, .notFound: 404
        case .requestTooLarge: 413
        case .tooManyRequests: 429
        case .invalidRequestContent: 400
        case .invalidSignature, .unrecognizedClient: 403
        case .serviceException: 500
        case .shuttingDown: 503
        }
    }

    /// The `x-amzn-ErrorType` value: the exception name in Lambda's API model.
    public var type: String {
        switch self {
        case .resourceNotFound, .notFound: "ResourceNotFoundException"
        case .requestTooLarge: "RequestTooLargeException"
        case .tooManyRequests: "TooManyRequestsException"
        case .invalidRequestContent: "InvalidRequestContentException"
        case .invalidSignature: "InvalidSignatureException"
        case .unrecognizedClient: "UnrecognizedClientException"
        // Lambda's model has no 503 error; botocore retries any 5xx, which is what a caller
        // of a draining daemon should do (another node, or this one after its restart).
        case .serviceException, .shuttingDown: "ServiceException"
        }
    }

    /// Whose fault it is, Lambda's `Type` field.
    public var origin: String {
        switch self {
        case .serviceException, .shuttingDown: "Service"
        default: "User"
        }
    }

    public var message: String {
        switch self {
        case .resourceNotFound(let message): message
        case .requestTooLarge(let size, let limit):
            "\(size) byte payload is too large for the RequestResponse invocation type (\(limit) byte maximum)"
        case .tooManyRequests(let message): message
        case .invalidRequestContent(let message): message
        case .invalidSignature(let message): message
        case .unrecognizedClient: "The security token included in the request is invalid."
        case .serviceException(let message): message
        case .shuttingDown: "The service is shutting down and takes no new invocations; retry on another instance."
        case .notFound(let method, let path): "No route for \(method) \(path): this server speaks the Lambda invoke API (POST /2015-03-31/functions/NAME/invocations)"
        }
    }

    /// The JSON body.
    public var body: [UInt8] {
        var object: [String: Any] = ["Type": origin, "Message": message]
        if case .tooManyRequests = self { object["Reason"] = "ConcurrentInvocationLimitExceeded" }
        return JSON.encode(object)
    }

    /// The front end's answer to a service's refusal.
    public init(_ error: FunctionServiceError, arn: String) {
        switch error {
        case .unknownFunction: self = .resourceNotFound("Function not found: \(arn)")
        case .tooManyInstances(let limit): self = .tooManyRequests("Rate Exceeded: all \(limit) instances are busy")
        case .shuttingDown: self = .shuttingDown
        case .cannotStart(let function, let reason): self = .serviceException("function '\(function)' cannot start: \(reason)")
        }
    }
}
