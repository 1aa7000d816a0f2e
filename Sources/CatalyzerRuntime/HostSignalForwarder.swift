import CatalyzerKVM
import CatalyzerKernel
import Dispatch
import Glibc

/// Forwards the signals the monitor process receives to the sandbox's first process, as a
/// container runtime does for its container's init: SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGUSR1
/// (SIGUSR2 is the monitor's own vCPU kick; SIGKILL and SIGSTOP cannot be caught and end or stop
/// the monitor itself). The guest's handlers run, or its default action applies, as on Linux.
public final class HostSignalForwarder {
    public static let forwarded: [Int32] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1]
    private var sources: [any DispatchSourceSignal] = []

    /// Starts forwarding to `inbox` until `stop()`.
    public init(to inbox: HostInbox) {
        let queue = DispatchQueue(label: "catalyzer-signal-forwarder")
        for signalNumber in Self.forwarded {
            signal(signalNumber, SIG_IGN)  // Dispatch sees it; the default action must not end the monitor
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: queue)
            source.setEventHandler { inbox.post(signalNumber) }
            source.resume()
            sources.append(source)
        }
    }

    /// Stops forwarding and restores the default actions.
    public func stop() {
        for source in sources { source.cancel() }
        sources = []
        for signalNumber in Self.forwarded { signal(signalNumber, SIG_DFL) }
    }

    deinit { stop() }
}
