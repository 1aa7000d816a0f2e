import HTTPTypes

/// The Lambda API's own header names, made once: `HTTPField.Name(_:)` checks and lowercases its
/// text on every call, and these are looked up or set on every invocation.
extension HTTPField.Name {
    static let amzContentSHA256 = HTTPField.Name("x-amz-content-sha256")!
    static let amzExecutedVersion = HTTPField.Name("X-Amz-Executed-Version")!
    static let amzFunctionError = HTTPField.Name("X-Amz-Function-Error")!
    static let amzInvocationType = HTTPField.Name("X-Amz-Invocation-Type")!
    static let amzLogResult = HTTPField.Name("X-Amz-Log-Result")!
    static let amzLogType = HTTPField.Name("X-Amz-Log-Type")!
    static let amznErrorType = HTTPField.Name("x-amzn-ErrorType")!
    static let amznRequestId = HTTPField.Name("x-amzn-RequestId")!
}
