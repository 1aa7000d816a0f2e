import CatalyzerRuntime
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import ServiceLifecycle

/// Everything `catalyzer serve` decides before the daemon starts.
public struct ServeConfiguration: Sendable {
    public var listen: ListenAddress
    public var maxInstances: Int?
    public var timeoutSeconds: Double
    /// nil: unauthenticated (only allowed on loopback).
    public var accessKeys: AccessKeys?

    public init(listen: ListenAddress, maxInstances: Int?, timeoutSeconds: Double, accessKeys: AccessKeys?) {
        self.listen = listen
        self.maxInstances = maxInstances
        self.timeoutSeconds = timeoutSeconds
        self.accessKeys = accessKeys
    }

    public enum Refusal: Error, Equatable, CustomStringConvertible {
        case unauthenticatedNonLoopback(ListenAddress)

        public var description: String {
            switch self {
            case .unauthenticatedNonLoopback(let address):
                "refusing to listen on \(address) without authentication: anyone who can reach it could run functions; "
                    + "pass --auth-keys FILE (SigV4 access keys), or listen on a loopback address such as 127.0.0.1"
            }
        }
    }

    /// Without keys, only loopback: the daemon runs arbitrary functions for whoever connects.
    public func check() throws(Refusal) {
        if accessKeys == nil, !listen.isLoopback { throw .unauthenticatedNonLoopback(listen) }
    }
}

/// Waits for graceful shutdown, then refuses new invocations and waits for the running ones
/// (Event invocations included, which no HTTP request holds open).
struct DrainService: Service {
    let gate: InvocationGate
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        gate.startDraining()
        let running = gate.inFlight
        if running > 0 { logger.info("shutting down: waiting for \(running) invocation(s) in flight") }
        await gate.drained()
    }
}

/// The daemon: the Lambda API on Hummingbird under a ServiceGroup that turns SIGTERM and SIGINT
/// into a graceful shutdown (stop accepting, answer what is in flight, exit).
public enum ServeServer {
    /// Runs until SIGTERM/SIGINT; `onListening` gets the bound address (the real port when 0 was asked).
    public static func run(_ configuration: ServeConfiguration, service: any FunctionService, logger: Logger,
                           onListening: @escaping @Sendable (ListenAddress) -> Void) async throws {
        try configuration.check()
        let metrics = ServeMetrics()
        let gate = InvocationGate(limit: configuration.maxInstances) { metrics.setInFlight($0) }
        let responder = LambdaResponder(
            service: service, authenticator: configuration.accessKeys.map { RequestAuthenticator(keys: $0) }, gate: gate,
            metrics: metrics, documents: FunctionDocuments(timeoutSeconds: configuration.timeoutSeconds),
            timeoutSeconds: configuration.timeoutSeconds, logger: logger)
        let listen = configuration.listen
        var httpLogger = logger
        // Hummingbird logs every connection error at debug/info; only warnings matter here.
        httpLogger.logLevel = max(logger.logLevel, .warning)
        // Synchronous invokes are answered from the event loop when the service can report to a
        // callback (the fork service); everything else goes through Hummingbird's responder.
        let server: HTTPServerBuilder
        if let callbacks = service as? any CallbackFunctionService {
            server = .http1(configuration: .init(additionalChannelHandlers: [InvokeFastPath(responder: responder, service: callbacks)]))
        } else {
            server = .http1()
        }
        let application = Application(
            responder: responder,
            server: server,
            configuration: .init(address: .hostname(listen.host, port: listen.port), serverName: "catalyzer"),
            services: [DrainService(gate: gate, logger: logger)],
            onServerRunning: { channel in
                onListening(ListenAddress(host: listen.host, port: channel.localAddress?.port ?? listen.port))
            },
            logger: httpLogger)
        let group = ServiceGroup(configuration: .init(services: [application], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
