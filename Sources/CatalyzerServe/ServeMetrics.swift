import CatalyzerRuntime
import Foundation
import Prometheus
import Synchronization

/// What a `FunctionService` may report beyond what the front end sees, for `/metrics`: pool
/// sizes, parked templates. A service opts in by conforming; the front end asks on every scrape.
public protocol FunctionServiceMetrics: Sendable {
    func gauges() -> [ServiceGauge]
}

/// One gauge sample: `catalyzer_service_NAME{labels} value`.
public struct ServiceGauge: Sendable, Equatable {
    public var name: String
    public var help: String
    public var labels: [String: String]
    public var value: Double

    public init(name: String, help: String, labels: [String: String] = [:], value: Double) {
        self.name = name
        self.help = help
        self.labels = labels
        self.value = value
    }
}

/// The daemon's Prometheus metrics. Label values are only ever names of functions that exist
/// (or fixed words), so a caller cannot grow the registry by inventing names.
public final class ServeMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let inFlight: Gauge

    /// Request to response, from a few hundred µs (a forked instance) to a 30 s timeout.
    static let requestBuckets: [Duration] = [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
                                             .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                                             .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30)]
    /// Instance start phases, finer at the bottom where restore and sfork differ.
    static let startBuckets: [Duration] = [.microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
                                           .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
                                           .milliseconds(250), .seconds(1)]

    public init() {
        inFlight = registry.makeGauge(descriptor: .init(namespace: "catalyzer", metricName: "invocations_in_flight", unitName: "",
                                                        helpText: "Invocations running now (RequestResponse and Event)"))
    }

    public func setInFlight(_ count: Int) { inFlight.set(Double(count)) }

    public func invoked(function: String) {
        meters(for: function).invocations.increment()
    }

    /// The meters every invocation of a function records into, made once per function: the
    /// registry's `make*` looks a metric up by name and labels under its lock on every call,
    /// tens of microseconds per request on the request's path.
    private struct FunctionMeters: Sendable {
        let invocations: Counter
        let duration: DurationHistogram
        let firstInstruction: DurationHistogram
        let response: DurationHistogram
    }
    private let functionMeters = Mutex<[String: FunctionMeters]>([:])

    private func meters(for function: String) -> FunctionMeters {
        functionMeters.withLock { meters in
            if let made = meters[function] { return made }
            let labels = [("function", function)]
            let made = FunctionMeters(
                invocations: registry.makeCounter(descriptor: .init(namespace: "catalyzer", metricName: "invocations", unitName: "total",
                                                                    helpText: "Invocations accepted, by function"), labels: labels),
                duration: registry.makeDurationHistogram(descriptor: .init(namespace: "catalyzer", metricName: "invocation_duration", unitName: "seconds",
                                                                           helpText: "Synchronous invocations from request to response"),
                                                         labels: labels, buckets: Self.requestBuckets),
                firstInstruction: registry.makeDurationHistogram(
                    descriptor: .init(namespace: "catalyzer", metricName: "instance_first_instruction", unitName: "seconds",
                                      helpText: "From the service taking the request to the instance's first guest instruction"),
                    labels: labels, buckets: Self.startBuckets),
                response: registry.makeDurationHistogram(descriptor: .init(namespace: "catalyzer", metricName: "instance_response", unitName: "seconds",
                                                                           helpText: "From the service taking the request to the instance's response"),
                                                         labels: labels, buckets: Self.requestBuckets))
            meters[function] = made
            return made
        }
    }

    /// An invocation that ended in a function error (`kind`: handler, timeout, failed) or that
    /// the service could not run (service).
    public func failed(function: String, kind: String) {
        registry.makeCounter(descriptor: .init(namespace: "catalyzer", metricName: "invocation_errors", unitName: "total",
                                               helpText: "Invocations that ended in an error, by function and kind (handler, timeout, failed, service)"),
                             labels: [("function", function), ("kind", kind)]).increment()
    }

    public func throttled(function: String) {
        registry.makeCounter(descriptor: .init(namespace: "catalyzer", metricName: "throttles", unitName: "total",
                                               helpText: "Invocations refused with 429 because every instance slot was busy"),
                             labels: [("function", function)]).increment()
    }

    /// Requests answered with an API error, by its type (auth failures, bad payloads, ...).
    public func rejected(type: String) {
        registry.makeCounter(descriptor: .init(namespace: "catalyzer", metricName: "request_errors", unitName: "total",
                                               helpText: "Requests answered with a Lambda API error, by x-amzn-ErrorType"),
                             labels: [("type", type)]).increment()
    }

    public func requestDuration(function: String, _ duration: Duration) {
        meters(for: function).duration.record(duration)
    }

    /// The instance's own milestones, from the service taking the request: its first guest
    /// instruction and its response.
    public func instanceTimings(function: String, firstInstruction: UInt64?, response: UInt64?) {
        guard firstInstruction != nil || response != nil else { return }
        let meters = meters(for: function)
        if let firstInstruction { meters.firstInstruction.recordNanoseconds(Int64(clamping: firstInstruction)) }
        if let response { meters.response.recordNanoseconds(Int64(clamping: response)) }
    }

    /// The exposition text: the registry, then the service's gauges (written here rather than
    /// registered, so a service that changes a gauge's labels between scrapes cannot trip the
    /// registry's consistency checks and take the daemon down).
    public func exposition(service: any FunctionService) -> [UInt8] {
        var text = registry.emitToBuffer()
        guard let reporting = service as? any FunctionServiceMetrics else { return text }
        var described = Set<String>()
        for gauge in reporting.gauges() {
            let name = "catalyzer_service_" + Self.sanitize(gauge.name)
            if described.insert(name).inserted {
                text += Array("# HELP \(name) \(gauge.help.replacingOccurrences(of: "\n", with: " "))\n# TYPE \(name) gauge\n".utf8)
            }
            let labels = gauge.labels.sorted { $0.key < $1.key }.map { "\(Self.sanitize($0.key))=\"\(Self.escape($0.value))\"" }
            let value = gauge.value.isFinite ? String(gauge.value) : (gauge.value.isNaN ? "NaN" : (gauge.value > 0 ? "+Inf" : "-Inf"))
            text += Array("\(name)\(labels.isEmpty ? "" : "{" + labels.joined(separator: ",") + "}") \(value)\n".utf8)
        }
        return text
    }

    static func sanitize(_ name: String) -> String {
        let mapped = name.unicodeScalars.map { scalar -> Character in
            (("0"..."9").contains(scalar) || ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || scalar == "_")
                ? Character(scalar) : "_"
        }
        let text = String(mapped)
        return text.first?.isNumber == true ? "_" + text : (text.isEmpty ? "_" : text)
    }

    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}

/// The fork service's templates and VM pools, as gauges.
extension ForkingFunctionService: FunctionServiceMetrics {
    public func gauges() -> [ServiceGauge] {
        let templates = templateStatistics
        var gauges = [ServiceGauge(name: "templates", help: "Functions with a parked template", value: Double(templates.count))]
        for template in templates {
            let labels = ["function": template.image]
            gauges.append(ServiceGauge(name: "pool_parked_vms", help: "VMs parked for forks", labels: labels, value: Double(template.parkedVMs)))
            gauges.append(ServiceGauge(name: "pool_recycled_vms_total", help: "VMs reset and parked again after a fork", labels: labels,
                                       value: Double(template.counters.recycledVMs)))
            gauges.append(ServiceGauge(name: "pool_created_vms_total", help: "Forks that found no parked VM and created one", labels: labels,
                                       value: Double(template.counters.createdVMs)))
            gauges.append(ServiceGauge(name: "pool_discarded_vms_total", help: "VMs dropped after a fork (timeout, kill, shared memory, pool full)",
                                       labels: labels, value: Double(template.counters.discardedVMs)))
            gauges.append(ServiceGauge(name: "pool_trimmed_vms_total", help: "Parked VMs trimmed to 1 MiB after idling (serve --trim-after)",
                                       labels: labels, value: Double(template.counters.trimmedVMs)))
        }
        return gauges
    }
}
