/// Order statistics over repeated measurements.
public struct Samples: Sendable {
    public private(set) var values: [Double] = []

    public init(_ values: [Double] = []) { self.values = values }

    public mutating func add(_ value: Double) { values.append(value) }

    public var count: Int { values.count }

    /// The q-quantile (0...1) by the nearest-rank method; 0 when empty.
    public func quantile(_ q: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        let rank = Int((q * Double(sorted.count)).rounded(.up)) - 1
        return sorted[min(max(rank, 0), sorted.count - 1)]
    }

    public var median: Double { quantile(0.5) }
    public var p99: Double { quantile(0.99) }
    public var sum: Double { values.reduce(0, +) }
}
