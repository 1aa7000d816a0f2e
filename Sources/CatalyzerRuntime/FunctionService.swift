import CatalyzerImage
import Foundation
import Glibc
import Synchronization

/// The contract between `catalyzer serve`'s HTTP front end and whatever starts function
/// instances behind it: today a restore per request (`RestoringFunctionService`) or a fork of a
/// parked template (`ForkingFunctionService`). The front end owns the wire format (the Lambda
/// API), throttling and auth; a service owns instances and turns the runner's line protocol into
/// a `FunctionResponse`.
public protocol FunctionService: Sendable {
    /// Every function the service can invoke (the store's images), by name.
    func functions() throws(FunctionServiceError) -> [FunctionDescription]
    /// One function by name, or `.unknownFunction`.
    func function(named name: String) throws(FunctionServiceError) -> FunctionDescription
    /// Runs one invocation to its end; blocks no Swift concurrency thread while the guest runs.
    func invoke(_ request: FunctionRequest) async throws(FunctionServiceError) -> FunctionResponse
}

/// A service that starts an invocation from any thread, without waiting, and reports its outcome
/// to a callback on a thread of its own: what the HTTP front end's event loop uses
/// (`InvokeFastPath`), so a request goes from the event loop to the instance thread and back,
/// not through the Swift concurrency pool in between.
public protocol CallbackFunctionService: FunctionService {
    /// Starts `request` and returns at once; `completion` is called once, on another thread, with
    /// the outcome and the hand-off its caller signals once the answer is on its way.
    func start(_ request: FunctionRequest,
               completion: @escaping @Sendable (Result<FunctionResponse, FunctionServiceError>, AnswerHandOff) -> Void)
}

/// An invocation's answer on its way to the client. The instance's cleanup after an early answer
/// (stopping it, resetting its VM: 0.1–0.5 ms of CPU) waits until whoever delivers the answer
/// calls `handedOver()`, or at most its limit: on a host with few cores that cleanup
/// would otherwise compete for a core with the answer's way out (the event loop's write, the
/// client's wake-up). Signalling more than once, or never, is harmless.
public final class AnswerHandOff: Sendable {
    /// Bounds the wait by default: a VM is held back from the pool no longer than this.
    public static let defaultLimit = Duration.milliseconds(2)
    private let limitNanoseconds: Int
    private let semaphore = DispatchSemaphore(value: 0)

    public init(limit: Duration = AnswerHandOff.defaultLimit) {
        limitNanoseconds = Int(max(0, min(limit / .nanoseconds(1), 1e15)))
    }

    public func handedOver() { semaphore.signal() }

    /// Instances of this process between their start and their cleanup.
    private static let running = Atomic<Int>(0)
    private static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Brackets an instance's life, from its start to the end of its cleanup.
    static func instanceStarts() { running.add(1, ordering: .relaxed) }
    static func instanceEnded() { running.subtract(1, ordering: .relaxed) }

    /// Waits for the hand-off, unless more instances run than there are cores: then every core
    /// is contended anyway, and a VM held back only makes another fork find the pool empty.
    func waitForHandOver() {
        guard Self.running.load(ordering: .relaxed) <= Self.cores else { return }
        _ = semaphore.wait(timeout: .now() + .nanoseconds(limitNanoseconds))
    }
}

/// A function as ListFunctions and GetFunction show it.
public struct FunctionDescription: Sendable, Equatable {
    public var name: String
    /// The image's guest memory, which is the instance's memory limit.
    public var memoryBytes: Int64
    /// The image manifest's digest ("sha256:…"): changes when a new version is published.
    public var imageDigest: String
    /// When the image was checkpointed (RFC 3339).
    public var created: String
    /// For a function made by `function create`: its handler (`MODULE.FUNCTION`) and timeout.
    public var handler: String?
    public var timeoutSeconds: Double?

    public init(name: String, memoryBytes: Int64, imageDigest: String, created: String, handler: String? = nil,
                timeoutSeconds: Double? = nil) {
        self.name = name
        self.memoryBytes = memoryBytes
        self.imageDigest = imageDigest
        self.created = created
        self.handler = handler
        self.timeoutSeconds = timeoutSeconds
    }
}

public struct FunctionRequest: Sendable {
    public var function: String
    /// The event: one line of JSON (no newline), which the runner reads from stdin.
    public var event: [UInt8]
    public var timeoutSeconds: Double

    public init(function: String, event: [UInt8], timeoutSeconds: Double) {
        self.function = function
        self.event = event
        self.timeoutSeconds = timeoutSeconds
    }
}

public struct FunctionResponse: Sendable {
    public enum Outcome: Sendable, Equatable {
        /// The handler returned: its result as JSON bytes.
        case result([UInt8])
        /// The handler raised: Lambda's `errorType`, `errorMessage` and `stackTrace` lines.
        case handlerError(type: String, message: String, stackTrace: [String])
        /// The instance ran past its timeout and was stopped.
        case timedOut(seconds: Double)
        /// The instance died (killed for memory, crashed, exited) or answered nothing a runner
        /// would: why, in words for the caller.
        case failed(reason: String)
    }

    public var outcome: Outcome
    /// The last bytes the instance wrote to stderr (at most `FunctionResponse.logTailLimit`).
    public var logTail: [UInt8]
    /// Nanoseconds from the service taking the request to the instance's first guest instruction
    /// and to its response; nil where the instance never got that far.
    public var firstInstructionNanoseconds: UInt64?
    public var responseNanoseconds: UInt64?

    public static let logTailLimit = 4096
    static let resultPrefix = Array(#"{"ok":true,"result":"#.utf8)

    public init(outcome: Outcome, logTail: [UInt8], firstInstructionNanoseconds: UInt64? = nil, responseNanoseconds: UInt64? = nil) {
        self.outcome = outcome
        self.logTail = logTail
        self.firstInstructionNanoseconds = firstInstructionNanoseconds
        self.responseNanoseconds = responseNanoseconds
    }

    /// The outcome of an instance from its exit and its stdout, which holds the runner's one
    /// response line (`{"ok": true, "result": …}` or `{"ok": false, "error": {…}}`).
    public static func outcome(exit: SandboxExitSummary, standardOutput: [UInt8], timeoutSeconds: Double) -> Outcome {
        if case .timedOut = exit { return .timedOut(seconds: timeoutSeconds) }
        let line = standardOutput.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true).first.map(Array.init)
        // The runner writes `{"ok":true,"result":RESULT}` compactly: RESULT is taken as it is,
        // without parsing the line and encoding the result again (a response may be megabytes).
        if let line, line.count > Self.resultPrefix.count, line.starts(with: Self.resultPrefix), line.last == UInt8(ascii: "}") {
            return .result(Array(line[Self.resultPrefix.count..<(line.count - 1)]))
        }
        if let line, let object = try? JSONSerialization.jsonObject(with: Data(line), options: [.fragmentsAllowed]) as? [String: Any],
           let ok = object["ok"] as? Bool {
            if ok {
                let result = object["result"] ?? NSNull()
                let bytes = (try? JSONSerialization.data(withJSONObject: result, options: [.fragmentsAllowed, .withoutEscapingSlashes])).map(Array.init) ?? Array("null".utf8)
                return .result(bytes)
            }
            let error = object["error"] as? [String: Any] ?? [:]
            let traceback = (error["traceback"] as? String ?? "").split(separator: "\n").map(String.init)
            return .handlerError(type: error["type"] as? String ?? "Error", message: error["message"] as? String ?? "", stackTrace: traceback)
        }
        switch exit {
        case .killed(let reason): return .failed(reason: "the instance was killed: \(reason)")
        case .exited(let status): return .failed(reason: "the instance exited with status \(status) without a response")
        case .timedOut: return .timedOut(seconds: timeoutSeconds)
        }
    }
}

/// How an instance ended, without the kernel's types (the front end does not depend on them).
public enum SandboxExitSummary: Sendable, Equatable {
    case exited(status: Int32)
    case killed(reason: String)
    case timedOut
}

/// What a service refuses, for the front end to map to Lambda's error types.
public enum FunctionServiceError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No image of that name in the store (404 ResourceNotFoundException).
    case unknownFunction(String)
    /// Every instance slot is busy (429 TooManyRequestsException).
    case tooManyInstances(limit: Int)
    /// The service is draining and takes no new invocations (503).
    case shuttingDown
    /// The image exists but no instance can start from it (damaged, wrong rootfs, no KVM): 500.
    case cannotStart(function: String, reason: String)

    public var description: String {
        switch self {
        case .unknownFunction(let name): "Function not found: \(name)"
        case .tooManyInstances(let limit): "Rate exceeded: all \(limit) instances are busy"
        case .shuttingDown: "the service is shutting down"
        case .cannotStart(let function, let reason): "function '\(function)' cannot start: \(reason)"
        }
    }
}

extension FunctionDescription {
    /// The description of the store's image `name`.
    public static func of(_ name: String, in store: ImageStore) throws(FunctionServiceError) -> FunctionDescription {
        guard ImageStore.isValidName(name) else { throw .unknownFunction(name) }
        do {
            let image = try store.open(name)
            let settings = FunctionSettings(image.config.annotations ?? [:])
            return FunctionDescription(name: name, memoryBytes: image.config.memorySize,
                                       imageDigest: image.manifestDescriptor.digest.description, created: image.config.created,
                                       handler: settings.handler, timeoutSeconds: settings.timeoutSeconds)
        } catch .imageNotFound {
            throw .unknownFunction(name)
        } catch {
            throw .cannotStart(function: name, reason: "\(error)")
        }
    }

    /// Every image of the store, by name.
    public static func all(in store: ImageStore) throws(FunctionServiceError) -> [FunctionDescription] {
        guard store.exists else { return [] }
        let names: [String]
        do { names = try store.names() } catch { throw .cannotStart(function: "*", reason: "the store \(store.root) cannot be read: \(error)") }
        return names.sorted().compactMap { try? of($0, in: store) }
    }
}
