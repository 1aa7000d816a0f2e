import Glibc

/// `--listen HOST:PORT` (`[v6]:PORT` for IPv6): an IP literal or `localhost`, port 0 for any.
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case malformed(String)
        case badPort(String)
        case notAnAddress(String)

        public var description: String {
            switch self {
            case .malformed(let text): "--listen '\(text)' must be HOST:PORT (e.g. 127.0.0.1:9001, [::1]:9001, 0.0.0.0:9001)"
            case .badPort(let text): "--listen port '\(text)' must be a number from 0 to 65535 (0: any free port)"
            case .notAnAddress(let host): "--listen host '\(host)' must be an IP address or localhost"
            }
        }
    }

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(parsing text: String) throws(ParseError) {
        let host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { throw .malformed(text) }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { throw .malformed(text) }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { throw .malformed(text) }
        guard let port = Int(portText), (0...65535).contains(port) else { throw .badPort(String(portText)) }
        let name = host == "localhost" ? "127.0.0.1" : String(host)
        guard Self.family(name) != nil else { throw .notAnAddress(String(host)) }
        self.init(host: name, port: port)
    }

    static func family(_ host: String) -> Int32? {
        var v4 = in_addr(), v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return AF_INET }
        if inet_pton(AF_INET6, host, &v6) == 1 { return AF_INET6 }
        return nil
    }

    /// 127.0.0.0/8 or ::1: only this machine's users can connect.
    public var isLoopback: Bool {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
        return host == "::1" || host == "0:0:0:0:0:0:0:1"
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
