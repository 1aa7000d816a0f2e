import CatalyzerImage
import CatalyzerKernel
import Foundation
import Glibc

/// A `FunctionService` that restores a new instance through catalyzerfs for every request: the
/// path `catalyzer invoke` takes, kept as the baseline `ForkingFunctionService` is measured
/// against and as the fallback where no template can be parked.
public final class RestoringFunctionService: FunctionService {
    public let store: ImageStore
    /// The catalyzerfs mount (nil: `CATALYZER_MOUNT`, else the managed mount).
    let mount: String?
    let limits: SandboxLimits

    /// Network policies that replace an image's own, by function name.
    let networkOverrides: [String: NetworkPolicy]

    public init(store: ImageStore, mount: String? = nil, limits: SandboxLimits = SandboxLimits(),
                networkOverrides: [String: NetworkPolicy] = [:]) {
        self.networkOverrides = networkOverrides
        self.store = store
        self.mount = mount
        self.limits = limits
    }

    public func functions() throws(FunctionServiceError) -> [FunctionDescription] {
        try FunctionDescription.all(in: store)
    }

    public func function(named name: String) throws(FunctionServiceError) -> FunctionDescription {
        try FunctionDescription.of(name, in: store)
    }

    public func invoke(_ request: FunctionRequest) async throws(FunctionServiceError) -> FunctionResponse {
        _ = try function(named: request.function)
        let store = store, mount = mount, limits = limits, network = networkOverrides[request.function]
        let outcome = await InstanceThread.run { () -> Result<FunctionResponse, FunctionServiceError> in
            do {
                let stdin = try RequestPipe.holding(String(decoding: request.event, as: UTF8.self))
                defer { close(stdin) }
                let stdout = try OutputCollector(limit: FunctionResponse.standardOutputLimit, keep: .first)
                let stderr = try OutputCollector(limit: FunctionResponse.logTailLimit, keep: .last)
                var invocation = InvocationRequest(image: request.function, store: store)
                invocation.mount = mount
                invocation.standardStreams = [stdin, stdout.writeEnd, stderr.writeEnd]
                invocation.timeoutSeconds = request.timeoutSeconds
                invocation.limits = limits
                invocation.network = network
                let result: InvocationResult
                do {
                    result = try Invocation.run(invocation)
                } catch {
                    _ = stdout.finish()
                    _ = stderr.finish()
                    return .failure(.cannotStart(function: request.function, reason: "\(error)"))
                }
                let output = stdout.finish().bytes
                let log = stderr.finish().bytes
                let timings = result.timings
                func nanoseconds(_ microseconds: Double?) -> UInt64? { microseconds.map { UInt64($0 * 1000) } }
                return .success(FunctionResponse(
                    outcome: FunctionResponse.outcome(exit: result.exit.summary, standardOutput: output, timeoutSeconds: request.timeoutSeconds),
                    logTail: log, firstInstructionNanoseconds: nanoseconds(timings.firstInstructionMicroseconds),
                    responseNanoseconds: nanoseconds(timings.responseMicroseconds)))
            } catch {
                return .failure(.cannotStart(function: request.function, reason: "\(error)"))
            }
        }
        return try outcome.get()
    }
}

extension FunctionResponse {
    /// The most response bytes an instance's stdout is read for: Lambda's 6 MB synchronous
    /// response limit, plus the runner's envelope.
    public static let standardOutputLimit = 6 * 1024 * 1024 + 4096
}

extension SandboxExit {
    /// The exit without the kernel's types, for `FunctionResponse`.
    public var summary: SandboxExitSummary {
        switch self {
        case .exited(let status): .exited(status: status)
        case .killed(let signal, let reason): .killed(reason: "\(reason) (signal \(signal))")
        case .timedOut: .timedOut
        case .readyPoint: .killed(reason: "stopped at its ready point")
        }
    }
}
