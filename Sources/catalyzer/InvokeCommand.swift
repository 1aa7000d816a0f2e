import ArgumentParser
import CatalyzerImage
import CatalyzerKernel
import CatalyzerRegistry
import CatalyzerRuntime
import Foundation
import Glibc
import Synchronization

/// `catalyzer invoke`: start a function instance from its image and serve requests.
struct InvokeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "invoke",
        abstract: "Start a function from its image, without initializing, and serve requests.",
        discussion: """
            The instance resumes inside the read of stdin where `catalyzer checkpoint` stopped it. Its \
            memory is the image's memory file on a catalyzerfs mount, mapped privately, so pages are \
            fetched and decompressed on first touch and shared through the page cache with other \
            instances of the image; its writes stay its own. Requests come from --input (one request, \
            then end of input) or from standard input (one per line); responses go to standard output.

            NAME may be a registry reference, REGISTRY/REPOSITORY[:TAG|@DIGEST]: the image pulled \
            from it before is used (a tag is not asked for again; `catalyzer pull` refreshes it), \
            else it is pulled lazily now, as `catalyzer pull --lazy` does, while the mount starts; \
            credentials come from the docker config file (`pull --username` stores none).

            The mount is --mount, else $CATALYZER_MOUNT, else a catalyzerfs mount catalyzer manages \
            itself: one per store, at /run/catalyzer/mounts/<hash of the store path> (or under \
            $CATALYZER_RUN_DIR), mounted on first use and reused by every later invocation. \
            `catalyzer mount` prints it; `catalyzer mount --unmount` removes it.

            Exit status: the function's (0 once it has served every request), 128+N when killed by \
            signal N, 124 on timeout, 1 when the image cannot be restored.
            """)

    @Argument(help: "The image to start: its name in the store, or a registry reference to pull lazily on first use.") var name: String
    @Option(help: "One request (a line of JSON) to serve; without it, requests are read from standard input.")
    var input: String?
    @Option(help: "The catalyzerfs mount to restore from (default: $CATALYZER_MOUNT, else the managed mount).")
    var mount: String?
    @Flag(help: "Print the restore phases in µs, FUSE traffic and page faults (to stderr, or in the JSON).")
    var timings = false
    @Flag(help: "Print the responses (and timings) as one JSON document.") var json = false
    @Option(help: "Stop the instance after this long (default: the function's timeout from `function create`, else 30s).")
    var timeout: DurationArgument?
    @Flag(help: "Print every syscall of the instance to stderr.") var strace = false
    @Option(help: "Threads plus processes the instance may have at once; clone and fork beyond it fail with EAGAIN.")
    var maxTasks = 256
    @OptionGroup var storeOptions: StoreOptions
    @OptionGroup var network: NetworkOptions
    @Flag(help: "No network beyond the sandbox for this invocation, whatever the image allows.") var noNetwork = false
    @Flag(help: "A registry reference: speak plain HTTP to its registry (default: HTTPS).") var insecure = false
    @Option(help: "A registry reference: a PEM file of CA certificates to trust besides the system's.") var caFile: String?

    func validate() throws {
        if let input, input.contains("\n") { throw ValidationError("--input must be one line") }
        guard maxTasks >= 1 else { throw ValidationError("--max-tasks must be at least 1") }
        guard !(noNetwork && network.isGiven) else { throw ValidationError("--no-network and --net-allow/--dns contradict each other") }
        _ = try network.policy()
    }

    struct Document: Encodable {
        var image: String
        var status: Int32
        var responses: [JSONValue]
        var timings: InvocationTimings?
    }

    func run() throws {
        var status: Int32 = 0
        try Output.run {
            let started = Sandbox.monotonicNanoseconds()
            let store = storeOptions.imageStore
            var image = name
            var pulledAt: UInt64?
            if name.contains("/") {
                (image, pulledAt) = try Self.localImage(for: try ImageReference(parsing: name), store: store, mount: mount,
                                                        insecure: insecure, caFile: caFile)
            }
            var streams: [Int32] = [STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO]
            let requests = try input.map(RequestPipe.holding)
            defer { if let requests { close(requests) } }
            if let requests { streams[0] = requests }
            let captured = json ? try OutputCollector(limit: Self.jsonOutputLimit, keep: .first) : nil
            var finished = false
            defer { if !finished { _ = captured?.finish() } }
            if let captured { streams[1] = captured.writeEnd }

            var request = InvocationRequest(image: image, store: store)
            request.mount = mount
            if let pulledAt {
                request.startedAt = started
                request.pulledAt = pulledAt
            }
            request.standardStreams = streams
            // A function made by `function create` records its timeout; other images get 30 s.
            let recorded = timeout == nil
                ? (try? store.open(image)).flatMap { FunctionSettings($0.config.annotations ?? [:]).timeoutSeconds } : nil
            let timeoutSeconds = timeout.map { Double($0.nanoseconds) / 1e9 } ?? recorded ?? 30
            request.timeoutSeconds = timeoutSeconds
            request.traceSyscalls = strace
            request.limits.maximumTasks = maxTasks
            // The image's policy unless this invocation states one: --net-allow and --dns replace
            // it (narrowing or widening it, explicitly), --no-network removes it.
            if noNetwork { request.network = NetworkPolicy.none } else if network.isGiven { request.network = try network.policy() }
            request.collectFilesystemStatistics = timings
            let result = try Invocation.run(request)
            status = result.exit.status
            switch result.exit {
            case .killed(let signal, let reason): Output.err("catalyzer: function killed by \(Run.signalName(signal)): \(reason)")
            case .timedOut: Output.err("catalyzer: timed out after \(timeout?.description ?? "\(timeoutSeconds) s"); instance stopped")
            case .exited, .readyPoint: break
            }
            if let captured {
                let output = captured.finish()
                finished = true
                guard output.total <= Self.jsonOutputLimit else {
                    throw RuntimeError("the function wrote \(output.total) bytes, more than the \(Self.jsonOutputLimit >> 20) MiB --json collects; run without --json to stream its output")
                }
                let text = String(decoding: output.bytes, as: UTF8.self)
                let responses = text.split(separator: "\n").map(String.init).map { line in
                    (try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8))) ?? .string(line)
                }
                Output.json(Document(image: name, status: status, responses: responses, timings: timings ? result.timings : nil))
            } else if timings {
                Output.err(Self.table(result.timings, mountpoint: result.mountpoint))
            }
        }
        if status != 0 { throw ExitCode(status) }
    }

    /// The store's image for `reference`: the one pulled from it before, else a lazy pull now,
    /// with the store's mount started meanwhile (a fresh node pays for both once, overlapped).
    /// Returns its name and, if pulled, when the pull ended.
    static func localImage(for reference: ImageReference, store: ImageStore, mount: String?, insecure: Bool,
                           caFile: String?) throws -> (name: String, pulledAt: UInt64?) {
        if let name = Registry.pulledImage(reference, store: store) { return (name, nil) }
        var options = RegistryOptions()
        options.insecure = insecure
        options.caFile = caFile
        options.credentials = try Credentials.fromDockerConfig(registry: reference.registry)
        _ = try store.beginImport()  // the store exists before its mount starts
        let settled = options
        let pulled = Mutex<Result<PullReport, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            let result: Result<PullReport, any Error>
            do { result = .success(try await Registry.pull(reference, store: store, options: settled, lazy: true)) } catch { result = .failure(error) }
            pulled.withLock { $0 = result }
            done.signal()
        }
        // Meanwhile this thread starts the mount (on no thread of the concurrency pool, which
        // the pull needs). Its errors are left to the invocation, which resolves it again.
        _ = try? CatalyzerMount.resolve(mount: mount, store: store)
        done.wait()
        do {
            let report = try pulled.withLock { $0! }.get()
            return (report.name, Sandbox.monotonicNanoseconds())
        } catch {
            throw InterruptedTransfer.wrap(error)
        }
    }

    /// Responses `--json` gathers in memory at most.
    static let jsonOutputLimit = 64 << 20

    private static func table(_ t: InvocationTimings, mountpoint: String) -> String {
        func us(_ value: Double?) -> String { value.map { String(format: "%.0f", $0) } ?? "-" }
        var previous = 0.0
        var rows: [[String]] = []
        for (phase, end) in [("open/mount", t.openMicroseconds), ("state restore", t.stateRestoreMicroseconds),
                             ("first guest instruction", t.firstInstructionMicroseconds), ("response", t.responseMicroseconds)] {
            rows.append([phase, end.map { us($0 - previous) } ?? "-", us(end)])
            if let end { previous = end }
        }
        let fetched = t.fuseBytesFetched.map { ByteCount.format(Int64($0)) } ?? "-"
        return Output.table(["PHASE", "µs", "SINCE START µs"], rows) + "\n"
            + "FUSE reads \(t.fuseReads.map(String.init) ?? "-"), fetched \(fetched) of \(ByteCount.format(Int64(t.imageMemoryBytes))) memory; "
            + "page faults: \(t.monitorPageFaults) in the monitor, \(t.hostMinorPageFaults) minor + \(t.hostMajorPageFaults) major on the host; mount \(mountpoint)"
    }
}

/// Any JSON value, for echoing the function's responses inside `--json` output.
indirect enum JSONValue: Codable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }
}
