import CatalyzerImage
import CatalyzerKernel
import Glibc
import Synchronization

/// A `FunctionService` that forks every invocation from a template parked per function (sfork).
/// The first invocation of a function (or of a new version of it) restores its template; every
/// invocation then runs in a fresh fork, so nothing one invocation writes is visible to another.
/// With `reuse` above 1 an instance serves up to that many invocations in sequence, as a warm
/// AWS Lambda container does: faster for functions that cache across calls, weaker isolation.
public final class ForkingFunctionService: FunctionService {
    public let store: ImageStore
    let mount: CatalyzerMount
    public let poolSize: Int
    public let reuse: Int
    let limits: SandboxLimits
    /// The newest template per function name. An older template lives on while forks of it run.
    private let templates = Mutex<[String: FunctionTemplate]>([:])
    /// Serializes template creation per service: two first invocations restore once.
    private let creating = Mutex<Void>(())
    /// Instances kept warm for `reuse` > 1, per template digest. Guarded by its lock.
    private let warm = Mutex<[String: [WarmInstance]]>([:])

    public init(store: ImageStore, mount: String? = nil, poolSize: Int = 2, reuse: Int = 1,
                limits: SandboxLimits = SandboxLimits()) throws {
        self.store = store
        self.mount = try CatalyzerMount.resolve(mount: mount, store: store)
        self.poolSize = poolSize
        self.reuse = reuse
        self.limits = limits
    }

    public func functions() throws(FunctionServiceError) -> [FunctionDescription] {
        try FunctionDescription.all(in: store)
    }

    public func function(named name: String) throws(FunctionServiceError) -> FunctionDescription {
        try FunctionDescription.of(name, in: store)
    }

    /// Templates parked now and their VM pools, for metrics.
    public var templateStatistics: [(image: String, parkedVMs: Int, counters: FunctionTemplate.Counters)] {
        templates.withLock { $0.values.map { ($0.image, $0.parkedVMs, $0.statistics) } }
    }

    /// The template of the function's current version, restoring it on first use.
    public func template(for name: String) throws(FunctionServiceError) -> FunctionTemplate {
        let digest: String
        do {
            guard ImageStore.isValidName(name) else { throw FunctionServiceError.unknownFunction(name) }
            digest = try store.manifestDescriptor(named: name).digest.description
        } catch {
            throw .unknownFunction(name)
        }
        if let template = templates.withLock({ $0[name] }), template.imageDigest == digest { return template }
        return try creating.withLock { _ throws(FunctionServiceError) -> FunctionTemplate in
            if let template = templates.withLock({ $0[name] }), template.imageDigest == digest { return template }
            do {
                let template = try FunctionTemplate(image: name, mount: mount, store: store, poolSize: poolSize)
                templates.withLock { $0[name] = template }
                return template
            } catch {
                throw .cannotStart(function: name, reason: "\(error)")
            }
        }
    }

    public func invoke(_ request: FunctionRequest) async throws(FunctionServiceError) -> FunctionResponse {
        let accepted = Sandbox.monotonicNanoseconds()
        let template = try template(for: request.function)
        if reuse > 1 {
            return try await invokeWarm(request, template: template, accepted: accepted)
        }
        let limits = limits
        let result = await InstanceThread.run { () -> Result<FunctionResponse, FunctionServiceError> in
            Result { () throws(FunctionServiceError) -> FunctionResponse in
                try Self.runFork(of: template, request: request, limits: limits, accepted: accepted)
            }
        }
        return try result.get()
    }

    /// Forks, serves the one request, and returns the VM to the template.
    public static func runFork(of template: FunctionTemplate, request: FunctionRequest, limits: SandboxLimits,
                        accepted: UInt64, inspect: ((ForkedSandbox) -> Void)? = nil) throws(FunctionServiceError) -> FunctionResponse {
        do {
            let stdin = try RequestPipe.holding(String(decoding: request.event, as: UTF8.self))
            defer { close(stdin) }
            let stdout = try OutputCollector(limit: FunctionResponse.standardOutputLimit, keep: .first)
            let stderr = try OutputCollector(limit: FunctionResponse.logTailLimit, keep: .last)
            var options = RestoreOptions()
            options.standardStreams = [stdin, stdout.writeEnd, stderr.writeEnd]
            options.limits = limits
            let run: (exit: SandboxExit, milestones: Sandbox.Milestones)
            do {
                let fork = try template.fork(options: options)
                run = try fork.run(timeoutSeconds: request.timeoutSeconds, inspect: inspect)
            } catch {
                _ = stdout.finish()
                _ = stderr.finish()
                throw error
            }
            let output = stdout.finish().bytes
            return FunctionResponse(
                outcome: FunctionResponse.outcome(exit: run.exit.summary, standardOutput: output, timeoutSeconds: request.timeoutSeconds),
                logTail: stderr.finish().bytes,
                firstInstructionNanoseconds: run.milestones.firstGuestEntry.map { $0 &- accepted },
                responseNanoseconds: run.milestones.firstStandardOutput.map { $0 &- accepted })
        } catch let error as FunctionServiceError {
            throw error
        } catch {
            throw .cannotStart(function: request.function, reason: "\(error)")
        }
    }

    // MARK: warm instances (--reuse)

    private func invokeWarm(_ request: FunctionRequest, template: FunctionTemplate, accepted: UInt64) async throws(FunctionServiceError) -> FunctionResponse {
        let key = template.imageDigest
        let instance: WarmInstance
        if let idle = warm.withLock({ $0[key]?.popLast() }) {
            instance = idle
        } else {
            do {
                instance = try WarmInstance(template: template, limits: limits)
            } catch {
                throw .cannotStart(function: request.function, reason: "\(error)")
            }
        }
        let response = await instance.serve(request, accepted: accepted)
        if instance.isAlive && instance.served < reuse {
            warm.withLock { $0[key, default: []].append(instance) }
        } else {
            instance.stop()
        }
        return response
    }

    /// Stops every warm instance (daemon shutdown).
    public func stopWarmInstances() {
        let all = warm.withLock { warm in
            defer { warm.removeAll() }
            return warm.values.flatMap { $0 }
        }
        for instance in all { instance.stop() }
    }
}
