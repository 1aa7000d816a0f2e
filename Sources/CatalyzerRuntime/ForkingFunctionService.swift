import CatalyzerImage
import CatalyzerKernel
import Glibc
import Synchronization

/// A `FunctionService` that forks every invocation from a template parked per function (sfork).
/// The first invocation of a function (or of a new version of it) restores its template; every
/// invocation then runs in a fresh fork, so nothing one invocation writes is visible to another.
/// With `reuse` above 1 an instance serves up to that many invocations in sequence, as a warm
/// AWS Lambda container does: faster for functions that cache across calls, weaker isolation.
public final class ForkingFunctionService: CallbackFunctionService {
    public let store: ImageStore
    /// The mount templates are restored from, resolved again when it no longer answers (its
    /// daemon died): a managed mount is mounted anew. Forks never read through it.
    private let mount: Mutex<CatalyzerMount>
    /// The mount as given (nil: `$CATALYZER_MOUNT` or the managed mount).
    private let mountArgument: String?
    public let poolSize: Int
    public let reuse: Int
    let limits: SandboxLimits
    /// The newest template per function name. An older template lives on while forks of it run.
    private let templates = Mutex<[String: FunctionTemplate]>([:])
    /// Serializes template creation per service: two first invocations restore once.
    private let creating = Mutex<Void>(())
    /// Instances kept warm for `reuse` > 1, per template digest. Guarded by its lock.
    private let warm = Mutex<[String: [WarmInstance]]>([:])

    /// What each template's parked VMs keep (`FunctionTemplate.ParkingPolicy`).
    public let parking: FunctionTemplate.ParkingPolicy

    /// Network policies that replace an image's own, by function name (`serve --net-allow NAME=RULE`).
    let networkOverrides: [String: NetworkPolicy]

    /// How long a fork's cleanup waits at most for its answer's hand-off (`AnswerHandOff`).
    let handOffLimit: Duration

    public init(store: ImageStore, mount: String? = nil, poolSize: Int = 2, reuse: Int = 1,
                parking: FunctionTemplate.ParkingPolicy = FunctionTemplate.ParkingPolicy(), limits: SandboxLimits = SandboxLimits(),
                networkOverrides: [String: NetworkPolicy] = [:], handOffLimit: Duration = AnswerHandOff.defaultLimit) throws {
        self.parking = parking
        self.handOffLimit = handOffLimit
        self.networkOverrides = networkOverrides
        self.store = store
        self.mount = Mutex(try CatalyzerMount.resolve(mount: mount, store: store))
        mountArgument = mount
        self.poolSize = poolSize
        self.reuse = reuse
        self.limits = limits
    }

    public func functions() throws(FunctionServiceError) -> [FunctionDescription] {
        try FunctionDescription.all(in: store)
    }

    /// Descriptions by image digest: an image's description never changes, so the per-request
    /// lookup is the index's stat (see `currentDigest`), not a read of its manifest and config.
    private let descriptions = Mutex<[String: FunctionDescription]>([:])

    public func function(named name: String) throws(FunctionServiceError) -> FunctionDescription {
        guard let digest = currentDigest(of: name) else { throw .unknownFunction(name) }
        if let known = descriptions.withLock({ $0[digest] }) { return known }
        let description = try FunctionDescription.of(name, in: store)
        descriptions.withLock { $0[description.imageDigest] = description }
        return description
    }

    /// Templates parked now and their VM pools, for metrics.
    public var templateStatistics: [(image: String, parkedVMs: Int, counters: FunctionTemplate.Counters)] {
        templates.withLock { $0.values.map { ($0.image, $0.parkedVMs, $0.statistics) } }
    }

    /// The store's index as last read: names to manifest digests, with the index file's identity.
    /// The store replaces the index by rename, so an unchanged inode and mtime mean an unchanged
    /// index, and a lookup costs one stat instead of a JSON parse.
    private let index = Mutex<(stamp: [Int], digests: [String: String])>(([], [:]))

    /// The manifest digest `name` has in the store now, nil when the store has no such image.
    func currentDigest(of name: String) -> String? {
        guard ImageStore.isValidName(name) else { return nil }
        var status = stat()
        guard stat(store.indexPath, &status) == 0 else { return nil }
        let stamp = [Int(status.st_ino), Int(status.st_size), status.st_mtim.tv_sec, status.st_mtim.tv_nsec]
        if let cached = index.withLock({ $0.stamp == stamp ? $0.digests : nil }) { return cached[name] }
        // One read of the index; a later entry for a name wins, as in `manifestDescriptor(named:)`.
        guard let manifests = try? store.index().manifests else { return nil }
        var digests: [String: String] = [:]
        for descriptor in manifests {
            guard let named = descriptor.annotations?[OCIIndex.refNameAnnotation], ImageStore.isValidName(named) else { continue }
            digests[named] = descriptor.digest.description
        }
        index.withLock { $0 = (stamp, digests) }
        return digests[name]
    }

    /// The template of the function's current version, restoring it on first use.
    public func template(for name: String) throws(FunctionServiceError) -> FunctionTemplate {
        guard let digest = currentDigest(of: name) else { throw .unknownFunction(name) }
        if let template = templates.withLock({ $0[name] }), template.imageDigest == digest { return template }
        return try creating.withLock { _ throws(FunctionServiceError) -> FunctionTemplate in
            if let template = templates.withLock({ $0[name] }), template.imageDigest == digest { return template }
            do {
                var mount = self.mount.withLock { $0 }
                if CatalyzerMount.failureToAnswer(mount.mountpoint) != nil {
                    mount = try CatalyzerMount.resolve(mount: mountArgument, store: store)
                    self.mount.withLock { $0 = mount }
                }
                let template = try FunctionTemplate(image: name, mount: mount, store: store, poolSize: poolSize, parking: parking,
                                                    network: networkOverrides[name])
                templates.withLock { $0[name] = template }
                return template
            } catch {
                throw .cannotStart(function: name, reason: "\(error)")
            }
        }
    }

    public func invoke(_ request: FunctionRequest) async throws(FunctionServiceError) -> FunctionResponse {
        if reuse > 1 {
            let accepted = Sandbox.monotonicNanoseconds()
            return try await invokeWarm(request, template: try template(for: request.function), accepted: accepted)
        }
        return try await withCheckedContinuation { (continuation: CheckedContinuation<Result<FunctionResponse, FunctionServiceError>, Never>) in
            start(request) { result, handOff in
                continuation.resume(returning: result)
                handOff.handedOver()
            }
        }.get()
    }

    /// Starts `request` on an instance thread: its template (restored there the first time, so
    /// an event loop calling this never waits for a restore), then a fork of it.
    public func start(_ request: FunctionRequest,
                      completion: @escaping @Sendable (Result<FunctionResponse, FunctionServiceError>, AnswerHandOff) -> Void) {
        let accepted = Sandbox.monotonicNanoseconds()
        let handOff = AnswerHandOff(limit: handOffLimit)
        if reuse > 1 {
            Task {
                do throws(FunctionServiceError) {
                    completion(.success(try await invokeWarm(request, template: try template(for: request.function), accepted: accepted)), handOff)
                } catch {
                    completion(.failure(error), handOff)
                }
            }
            return
        }
        let limits = limits
        InstanceThread.start { [self] in
            let template: FunctionTemplate
            do throws(FunctionServiceError) { template = try self.template(for: request.function) } catch { return completion(.failure(error), handOff) }
            Self.serveFork(of: template, request: request, limits: limits, accepted: accepted, handOff: handOff) { completion($0, handOff) }
        }
    }

    /// Forks, serves the one request, and returns the VM to the template, on the calling thread.
    /// `respond` is called once: as soon as the fork's response line is complete (the fork then
    /// exits and its VM is reset after the caller has its answer), or when the fork ends without
    /// one. `inspect` sees the fork after it ended, before its VM is reset. After an early answer
    /// the fork's cleanup waits for `handOff` (see `AnswerHandOff`).
    public static func serveFork(of template: FunctionTemplate, request: FunctionRequest, limits: SandboxLimits, accepted: UInt64,
                                 handOff: AnswerHandOff? = nil, inspect: ((ForkedSandbox) -> Void)? = nil,
                                 respond: @escaping @Sendable (Result<FunctionResponse, FunctionServiceError>) -> Void) {
        AnswerHandOff.instanceStarts()
        defer { AnswerHandOff.instanceEnded() }
        let once = Once()
        @Sendable func answer(_ result: Result<FunctionResponse, FunctionServiceError>) {
            if once.claim() { respond(result) }
        }
        let stdin: Int32
        do {
            stdin = try RequestPipe.holding(String(decoding: request.event, as: UTF8.self))
        } catch {
            return answer(.failure(.cannotStart(function: request.function, reason: "\(error)")))
        }
        defer { close(stdin) }
        let progress = LockedValue<SandboxProgress?>(nil)
        let running = LockedValue<ForkedSandbox?>(nil)
        let stderr: OutputCollector, stdout: OutputCollector
        do {
            stderr = try OutputCollector(limit: FunctionResponse.logTailLimit, keep: .last)
            stdout = try OutputCollector(limit: FunctionResponse.standardOutputLimit, keep: .first) { line in
                // The runner's response is one line: the caller need not wait for the exit.
                let answered = Sandbox.monotonicNanoseconds()
                // Stopped first: on a loaded host the fork, which runs on after its response
                // line, would otherwise compete with the answer's way out for a core.
                running.withLock { $0?.stopAfterResponse() }
                let entered = progress.withLock { $0?.firstGuestEntry.load(ordering: .acquiring) } ?? 0
                answer(.success(FunctionResponse(
                    outcome: FunctionResponse.outcome(exit: .exited(status: 0), standardOutput: line, timeoutSeconds: request.timeoutSeconds),
                    logTail: stderr.snapshot(), firstInstructionNanoseconds: entered == 0 ? nil : entered &- accepted,
                    responseNanoseconds: answered &- accepted)))
            }
        } catch {
            return answer(.failure(.cannotStart(function: request.function, reason: "\(error)")))
        }
        var options = RestoreOptions()
        options.standardStreams = [stdin, stdout.writeEnd, stderr.writeEnd]
        options.limits = limits
        let run: (exit: SandboxExit, milestones: Sandbox.Milestones)
        do {
            let fork = try template.fork(options: options)
            progress.withLock { $0 = fork.kernel?.progress }
            running.withLock { $0 = fork }
            run = try fork.run(timeoutSeconds: request.timeoutSeconds) { fork in
                inspect?(fork)
                if once.isClaimed { handOff?.waitForHandOver() }
            }
        } catch {
            _ = stdout.finish()
            _ = stderr.finish()
            return answer(.failure(.cannotStart(function: request.function, reason: "\(error)")))
        }
        let output = stdout.finish().bytes
        answer(.success(FunctionResponse(
            outcome: FunctionResponse.outcome(exit: run.exit.summary, standardOutput: output, timeoutSeconds: request.timeoutSeconds),
            logTail: stderr.finish().bytes,
            firstInstructionNanoseconds: run.milestones.firstGuestEntry.map { $0 &- accepted },
            responseNanoseconds: run.milestones.firstStandardOutput.map { $0 &- accepted })))
    }

    /// `serveFork` returning its answer, once the fork has ended and its VM is back in the pool.
    public static func runFork(of template: FunctionTemplate, request: FunctionRequest, limits: SandboxLimits,
                               accepted: UInt64, inspect: ((ForkedSandbox) -> Void)? = nil) throws(FunctionServiceError) -> FunctionResponse {
        let answer = LockedValue<Result<FunctionResponse, FunctionServiceError>?>(nil)
        serveFork(of: template, request: request, limits: limits, accepted: accepted, inspect: inspect) { result in
            answer.withLock { $0 = result }
        }
        return try answer.withLock { $0! }.get()
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

    /// Drops every template and warm instance, and waits (up to `timeoutSeconds`) until no fork
    /// of them still runs or resets its VM: then the service holds no file of the mount open, and
    /// the mount can go. For shutdown; invocations after it restore their templates anew.
    public func shutdown(timeoutSeconds: Double = 10) {
        stopWarmInstances()
        let dropped = templates.withLock { templates in
            defer { templates.removeAll() }
            return Array(templates.values)
        }
        let deadline = Sandbox.monotonicNanoseconds() &+ UInt64(timeoutSeconds * 1e9)
        while dropped.contains(where: { $0.vmsOnTheirWayBack > 0 }) && Sandbox.monotonicNanoseconds() < deadline {
            usleep(1000)
        }
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

/// A flag that lets exactly one caller through.
final class Once: Sendable {
    private let claimed = Atomic<Bool>(false)
    func claim() -> Bool { !claimed.exchange(true, ordering: .acquiringAndReleasing) }
    var isClaimed: Bool { claimed.load(ordering: .acquiring) }
}

/// A value shared between threads under a lock, for closures (a `Mutex` cannot be captured).
final class LockedValue<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
}
