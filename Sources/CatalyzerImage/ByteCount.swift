import Foundation

/// Parsing and printing byte counts the way people write them.
public enum ByteCount {
    /// Parses `4096`, `256K`, `256k`, `256KiB`, `1M`, `1MB`, `2G`: binary multiples throughout.
    public static func parse(_ text: String) -> Int64? {
        let lowered = text.lowercased().replacingOccurrences(of: "ib", with: "").replacingOccurrences(of: "b", with: "")
        let digits = lowered.prefix(while: \.isNumber)
        guard !digits.isEmpty, let value = Int64(digits) else { return nil }
        let shift: Int64
        switch lowered.dropFirst(digits.count) {
        case "": shift = 0
        case "k": shift = 10
        case "m": shift = 20
        case "g": shift = 30
        case "t": shift = 40
        default: return nil
        }
        let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? nil : result
    }

    /// `262144` → `256 KiB`, `1572864` → `1.5 MiB`.
    public static func format(_ bytes: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while abs(value) >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(bytes) B" }
        let rounded = (value * 10).rounded() / 10
        return rounded == rounded.rounded() ? "\(Int(rounded)) \(units[unit])" : "\(rounded) \(units[unit])"
    }
}
