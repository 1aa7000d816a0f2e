import Dispatch

/// Monotonic time in nanoseconds, for measuring intervals.
public enum Clock {
    public static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// Seconds spent running `body`.
    public static func measure(_ body: () throws -> Void) rethrows -> Double {
        let start = now()
        try body()
        return Double(now() - start) / 1e9
    }
}
