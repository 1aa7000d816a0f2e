/// Page arithmetic on guest virtual addresses.
enum Page {
    static let size: UInt64 = 4096
    static func down(_ address: UInt64) -> UInt64 { address & ~(size - 1) }
    /// Rounds up; nil on overflow.
    static func up(_ address: UInt64) -> UInt64? {
        let (sum, overflow) = address.addingReportingOverflow(size - 1)
        return overflow ? nil : sum & ~(size - 1)
    }
    static func isAligned(_ address: UInt64) -> Bool { address & (size - 1) == 0 }
}
