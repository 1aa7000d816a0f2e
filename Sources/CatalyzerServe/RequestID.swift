import CLinux

/// Lambda request ids: random (version 4) UUIDs in lowercase. Made with one getrandom(2) (CLinux) and a
/// table, as Foundation's `UUID().uuidString.lowercased()` cost ~5 µs per request here.
enum RequestID {
    static func make() -> String {
        var bytes: (UInt64, UInt64) = (0, 0)
        let filled = withUnsafeMutableBytes(of: &bytes) { clinux_getrandom($0.baseAddress, 16) }
        if filled != 16 {
            // getrandom cannot fail for 16 bytes once the pool is up; never hand out a zero id.
            var generator = SystemRandomNumberGenerator()
            bytes = (generator.next(), generator.next())
        }
        return withUnsafeMutableBytes(of: &bytes) { raw in
            raw[6] = raw[6] & 0x0F | 0x40  // version 4
            raw[8] = raw[8] & 0x3F | 0x80  // RFC 4122 variant
            return String(unsafeUninitializedCapacity: 36) { text in
                var at = 0
                for index in 0..<16 {
                    if index == 4 || index == 6 || index == 8 || index == 10 {
                        text[at] = UInt8(ascii: "-")
                        at += 1
                    }
                    text[at] = digits[Int(raw[index] >> 4)]
                    text[at + 1] = digits[Int(raw[index] & 0x0F)]
                    at += 2
                }
                return at
            }
        }
    }

    private static let digits: [UInt8] = Array("0123456789abcdef".utf8)
}
