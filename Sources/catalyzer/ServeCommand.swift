import ArgumentParser
import CatalyzerImage
import CatalyzerKernel
import CatalyzerRuntime
import CatalyzerServe
import Foundation
import Logging

/// `catalyzer serve`: the resident daemon answering the AWS Lambda invoke API.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the store's functions over the AWS Lambda invoke API (boto3, the AWS CLI).",
        discussion: """
            Every image in the store is a function of the same name. The API subset: Invoke \
            (POST /2015-03-31/functions/NAME/invocations; X-Amz-Invocation-Type RequestResponse, \
            Event or DryRun; X-Amz-Log-Type Tail; Qualifier $LATEST; NAME may be an ARN), \
            ListFunctions (GET /2015-03-31/functions/) and GetFunction (GET /2015-03-31/functions/NAME). \
            GET /healthz answers ok (never authenticated); GET /metrics is Prometheus text.

            Authentication: without --auth-keys, the daemon listens only on a loopback address and \
            accepts every request. With --auth-keys FILE, every request but /healthz must be signed \
            with AWS Signature Version 4 (service `lambda`, any region) by a key the file lists, \
            with X-Amz-Date within 15 minutes of this machine's clock. The file has one key per line, \
            `ACCESS_KEY_ID SECRET_ACCESS_KEY`, blank lines and `#` comments ignored; it must not be \
            readable by its group or others (chmod 600). Clients use the same pair as \
            AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.

            Instances: every invocation runs in a fresh sandbox forked (sfork) from a template of the \
            function, which the daemon restores through catalyzerfs on the function's first invocation \
            and again when a new image is published under its name (forks of the old version finish \
            first). Forks run in pooled VMs (--pool per function), reset to the template after each \
            fork, so nothing one invocation writes reaches another. A parked VM keeps the pages \
            its forks write (the next fork writes them without a fault); after --trim-after without \
            a fork it gives back all but 1 MiB of them (--no-trim: never). --reuse N lets one instance \
            serve up to N invocations in sequence, as a warm AWS Lambda container does: module \
            state, memory and /tmp carry over between those invocations, which is weaker isolation. \
            --restore instead restores a new instance through catalyzerfs for every request (the \
            path of `catalyzer invoke`, slower).

            SIGTERM or SIGINT shuts down gracefully: no new connections, every invocation in \
            flight (Event ones too) runs to its end and is answered, then exit 0.
            """)

    @Option(help: "Address to listen on, HOST:PORT ([::1]:PORT for IPv6; port 0 picks a free port).")
    var listen = "127.0.0.1:9001"
    @Option(help: "The catalyzerfs mount to restore from (default: $CATALYZER_MOUNT, else the managed mount).")
    var mount: String?
    @Option(help: "VMs to keep ready per function for forks (0-1024).")
    var pool = 2
    @Option(help: "Trim a VM parked this long without a fork to 1 MiB of private memory (its next fork copies its pages back in first: heavy 0.9 -> 2.9 ms).")
    var trimAfter = DurationArgument(argument: "2s")!
    @Flag(help: "Never trim parked VMs: each keeps up to 4 MiB of written pages for as long as it is parked.")
    var noTrim = false
    @Option(help: "Invocations in flight at most, Event ones included; more are refused with 429 (TooManyRequestsException).")
    var maxInstances = 64
    @Option(help: "Invocations one instance may serve in sequence (1-1000000); above 1, state carries over between them.")
    var reuse = 1
    @Flag(help: "Restore an instance through catalyzerfs per request instead of forking a template.")
    var restore = false
    @Option(help: "Access keys for SigV4 authentication: one `ACCESS_KEY_ID SECRET_ACCESS_KEY` per line, mode 600.")
    var authKeys: String?
    @Option(help: "Stop an invocation after this long (Lambda's function timeout), e.g. 500ms, 30s, 5m.")
    var timeout = DurationArgument(argument: "30s")!
    @OptionGroup var storeOptions: StoreOptions
    @Option(name: .customLong("net-allow"), help: ArgumentHelp(
        "For function NAME, replace its image's network policy with these rules (repeatable, rules as in `run --net-allow`).",
        valueName: "name=rule"))
    var netAllow: [String] = []
    @Option(name: .customLong("no-network"), help: ArgumentHelp("Function NAME gets no network beyond its sandbox, whatever its image allows (repeatable).",
                                                                valueName: "name"))
    var noNetwork: [String] = []

    /// `--net-allow NAME=RULE` and `--no-network NAME` as policies by function name.
    func networkOverrides() throws -> [String: NetworkPolicy] {
        var rules: [String: [String]] = [:]
        for entry in netAllow {
            guard let equals = entry.firstIndex(of: "="), equals != entry.startIndex else {
                throw ValidationError("--net-allow takes NAME=RULE for serve (the function it applies to, then the rule): \(entry)")
            }
            rules[String(entry[..<equals]), default: []].append(String(entry[entry.index(after: equals)...]))
        }
        if let both = noNetwork.first(where: { rules[$0] != nil }) {
            throw ValidationError("--no-network \(both) contradicts --net-allow \(both)=…")
        }
        var policies: [String: NetworkPolicy] = [:]
        for (name, texts) in rules {
            do { policies[name] = try NetworkPolicy(allowing: texts) } catch { throw ValidationError(error.description) }
        }
        for name in noNetwork { policies[name] = NetworkPolicy.none }
        return policies
    }

    func validate() throws {
        _ = try networkOverrides()
        guard (0...1024).contains(pool) else { throw ValidationError("--pool must be from 0 to 1024") }
        guard (1...1_000_000).contains(reuse) else { throw ValidationError("--reuse must be from 1 to 1000000") }
        guard (1...100_000).contains(maxInstances) else { throw ValidationError("--max-instances must be from 1 to 100000") }
        do { _ = try ListenAddress(parsing: listen) } catch { throw ValidationError(error.description) }
    }

    /// What the factory gets to build a service from.
    struct ServiceOptions: Sendable {
        var store: ImageStore
        var mount: String?
        var pool: Int
        var reuse: Int
        /// What parked VMs keep (`--trim-after`, `--no-trim`).
        var parking = FunctionTemplate.ParkingPolicy()
        var maxInstances: Int
        var timeoutSeconds: Double
        var restore: Bool
        /// Policies replacing images' own, by function (`--net-allow NAME=RULE`, `--no-network NAME`).
        var networkOverrides: [String: NetworkPolicy] = [:]
    }

    /// The one place the daemon's `FunctionService` is chosen: forks of a parked template, or
    /// with `--restore` a restore per request.
    static func makeService(_ options: ServiceOptions) throws -> any FunctionService {
        if options.restore {
            return RestoringFunctionService(store: options.store, mount: options.mount, networkOverrides: options.networkOverrides)
        }
        return try ForkingFunctionService(store: options.store, mount: options.mount, poolSize: options.pool, reuse: options.reuse,
                                          parking: options.parking, networkOverrides: options.networkOverrides)
    }

    func run() async throws {
        try await Output.runAsync {
            let address = try ListenAddress(parsing: listen)
            let keys = try authKeys.map { path throws(AccessKeys.LoadError) in try AccessKeys.load(path: path) }
            let timeoutSeconds = Double(timeout.nanoseconds) / 1e9
            let configuration = ServeConfiguration(listen: address, maxInstances: maxInstances, timeoutSeconds: timeoutSeconds, accessKeys: keys)
            try configuration.check()

            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = ProcessInfo.processInfo.environment["CATALYZER_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info
                return handler
            }
            let logger = Logger(label: "catalyzer.serve")
            if keys == nil {
                logger.warning("unauthenticated: every request is accepted; only this machine can connect. Pass --auth-keys FILE to require SigV4.")
            }
            let parking = FunctionTemplate.ParkingPolicy(idleSeconds: noTrim ? nil : Double(trimAfter.nanoseconds) / 1e9)
            let service = try Self.makeService(ServiceOptions(store: storeOptions.imageStore, mount: mount, pool: pool, reuse: reuse, parking: parking,
                                                              maxInstances: maxInstances, timeoutSeconds: timeoutSeconds, restore: restore,
                                                              networkOverrides: try networkOverrides()))
            let mode = keys.map { "SigV4, \($0.secrets.count) access key(s)" } ?? "unauthenticated"
            try await ServeServer.run(configuration, service: service, logger: logger) { bound in
                Output.err("catalyzer serve: listening on http://\(bound) (\(mode))")
            }
            (service as? ForkingFunctionService)?.shutdown()
            logger.info("stopped")
        }
    }
}
