import Glibc

/// Where a sandbox may connect outside itself. The default, an empty policy, is nowhere: the guest
/// has its own loopback (`InetPortTable`) and nothing else. Each rule (`--net-allow`) opens one
/// address, network or name, optionally on one port or range of ports; `any` opens every public
/// address, never the host's loopback, link-local, private or otherwise special ranges, which
/// only a rule naming them opens. Every `connect` and `sendto` toward the outside is checked here
/// by the monitor before it opens a host socket, so a denied destination never sees a packet.
///
/// The policy travels with an image as its rule texts (`ImageConfig.network`), parsed again where
/// the image is restored: a host name is resolved by the node that runs the function.
public struct NetworkPolicy: Sendable, Equatable {
    public struct Rule: Sendable, Equatable, CustomStringConvertible {
        public enum Target: Sendable, Equatable {
            /// Every public address.
            case any
            /// An IPv4 or IPv6 network: 16 bytes (IPv4 mapped into IPv6) and a prefix length.
            case network(ip: [UInt8], prefixLength: Int)
            /// A host name, with the addresses it resolved to when the policy was made.
            case host(name: String, addresses: [[UInt8]])
        }

        public var target: Target
        /// The ports the rule opens; nil for all.
        public var ports: ClosedRange<UInt16>?
        /// What the user wrote, for messages and for the image.
        public var text: String

        public var description: String { text }

        func covers(_ destination: InetAddress) -> Bool {
            if let ports, !ports.contains(destination.port) { return false }
            switch target {
            case .any: return NetworkPolicy.isPublic(destination.ip)
            case .network(let ip, let prefixLength): return NetworkPolicy.ip(destination.ip, isIn: ip, prefixLength: prefixLength)
            case .host(_, let addresses): return addresses.contains(destination.ip)
            }
        }

        /// Whether the rule names `destination`'s address itself (not through `any`): only such a
        /// rule reaches the host's loopback.
        func namesExplicitly(_ destination: InetAddress) -> Bool {
            if case .any = target { return false }
            return covers(destination)
        }
    }

    public var rules: [Rule]
    /// The resolver the guest's /etc/resolv.conf names (`--dns ADDR[:PORT]`): the guest asks
    /// ADDR on port 53 and the monitor sends to PORT. DNS traffic to it is checked against the
    /// rules like any other.
    private(set) var resolverStorage: InetAddress?
    /// The `--dns` text, for the image.
    public private(set) var resolverText: String?

    /// No network beyond the sandbox.
    public static let none = NetworkPolicy(rules: [])

    public init(rules: [Rule]) { self.rules = rules }

    /// Parses `--net-allow` texts and a `--dns` text. Throws `NetworkPolicyError` naming the bad one.
    public init(allowing texts: [String], resolver: String? = nil) throws(NetworkPolicyError) {
        var rules: [Rule] = []
        for text in texts { rules.append(try Self.parseRule(text)) }
        self.rules = rules
        if let resolver {
            let (ip, port) = try Self.parseAddressAndPort(resolver, defaultPort: 53, allowNetwork: false, original: resolver)
            guard let ip, case .network(let bytes, _) = ip else {
                throw NetworkPolicyError.badResolver(resolver, reason: "give an IP address, optionally with :PORT")
            }
            resolverStorage = InetAddress(ip: bytes, port: port?.lowerBound ?? 53)
            resolverText = resolver
        }
    }

    public var isEmpty: Bool { rules.isEmpty }

    /// The rule texts, as given (for the image and messages).
    public var ruleTexts: [String] { rules.map(\.text) }

    /// What the policy says about a connection or datagram to `destination`.
    public enum Decision: Equatable, Sendable {
        case allowed(rule: String)
        case denied(reason: String)
    }

    func decide(_ destination: InetAddress) -> Decision {
        if destination.isLoopback {
            // The host's loopback is reached only through a rule that names it.
            if let rule = rules.first(where: { $0.namesExplicitly(destination) }) { return .allowed(rule: rule.text) }
            return .denied(reason: rules.contains { $0.target == .any }
                ? "the host's loopback is not covered by `any`; only a rule naming it opens it"
                : "no --net-allow rule covers it")
        }
        if let rule = rules.first(where: { $0.covers(destination) }) { return .allowed(rule: rule.text) }
        if rules.contains(where: { $0.target == .any }) && !Self.isPublic(destination.ip) {
            return .denied(reason: "it is not a public address (\(Self.rangeName(destination.ip))), which `any` does not cover; name it in a --net-allow rule to open it")
        }
        return .denied(reason: rules.isEmpty ? "the sandbox has no network (no --net-allow rule)" : "no --net-allow rule covers it")
    }

    // MARK: Parsing

    static func parseRule(_ text: String) throws(NetworkPolicyError) -> Rule {
        let trimmed = text.trimmingSpaces
        guard !trimmed.isEmpty else { throw NetworkPolicyError.badRule(text, reason: "it is empty") }
        if trimmed == "any" { return Rule(target: .any, ports: nil, text: trimmed) }
        if trimmed.hasPrefix("any:") {
            let ports = try parsePorts(String(trimmed.dropFirst(4)), original: text)
            return Rule(target: .any, ports: ports, text: trimmed)
        }
        let (target, ports) = try parseAddressAndPort(trimmed, defaultPort: nil, allowNetwork: true, original: text)
        guard let target else { throw NetworkPolicyError.badRule(text, reason: "it names no address") }
        return Rule(target: target, ports: ports, text: trimmed)
    }

    /// `ADDR`, `ADDR:PORT`, `ADDR/PREFIX[:PORT]`, `[V6]`, `[V6]:PORT`, `[V6/PREFIX]:PORT`, a bare
    /// IPv6 address or network without a port, or a host name with an optional port.
    static func parseAddressAndPort(_ text: String, defaultPort: UInt16?, allowNetwork: Bool,
                                    original: String) throws(NetworkPolicyError) -> (Rule.Target?, ClosedRange<UInt16>?) {
        var addressPart = text
        var portPart: String?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw NetworkPolicyError.badRule(original, reason: "an unclosed [") }
            addressPart = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.first == ":" else { throw NetworkPolicyError.badRule(original, reason: "expected :PORT after ]") }
                portPart = String(rest.dropFirst())
            }
        } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
            addressPart = String(text[..<colon])
            portPart = String(text[text.index(after: colon)...])
        }
        let ports = try portPart.map { (part: String) throws(NetworkPolicyError) -> ClosedRange<UInt16> in
            try parsePorts(part, original: original)
        }
        var prefixLength: Int?
        if let slash = addressPart.firstIndex(of: "/") {
            guard allowNetwork else { throw NetworkPolicyError.badRule(original, reason: "a network is not an address") }
            guard let length = Int(addressPart[addressPart.index(after: slash)...]) else {
                throw NetworkPolicyError.badRule(original, reason: "the prefix length is not a number")
            }
            prefixLength = length
            addressPart = String(addressPart[..<slash])
        }
        if let ip = parseIP(addressPart) {
            let isIPv4 = Array(ip.prefix(12)) == InetAddress.mappedPrefix && !addressPart.contains(":")
            let maximum = isIPv4 ? 32 : 128
            let length = prefixLength ?? maximum
            guard (0...maximum).contains(length) else {
                throw NetworkPolicyError.badRule(original, reason: "prefix length \(length) is outside 0...\(maximum)")
            }
            let mask = isIPv4 ? length + 96 : length
            guard ip == masked(ip, prefixLength: mask) else {
                throw NetworkPolicyError.badRule(original, reason: "the address has bits set beyond its /\(length) prefix")
            }
            return (.network(ip: ip, prefixLength: mask), ports ?? defaultPort.map { $0...$0 })
        }
        guard prefixLength == nil else { throw NetworkPolicyError.badRule(original, reason: "a host name takes no prefix length") }
        guard Self.isHostName(addressPart) else {
            throw NetworkPolicyError.badRule(original, reason: "`\(addressPart)` is neither an IP address nor a host name")
        }
        let addresses = resolveOnHost(addressPart)
        guard !addresses.isEmpty else {
            throw NetworkPolicyError.unresolvable(addressPart, rule: original)
        }
        return (.host(name: addressPart, addresses: addresses), ports)
    }

    static func parsePorts(_ text: String, original: String) throws(NetworkPolicyError) -> ClosedRange<UInt16> {
        let bounds = text.split(separator: "-", omittingEmptySubsequences: false)
        guard (1...2).contains(bounds.count), let low = UInt16(bounds[0]), let high = UInt16(bounds.last!), low >= 1, low <= high else {
            throw NetworkPolicyError.badRule(original, reason: "`\(text)` is not a port (1-65535) or a range LOW-HIGH")
        }
        return low...high
    }

    /// 16 bytes (IPv4 as IPv4-mapped IPv6), or nil.
    static func parseIP(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return InetAddress.mappedPrefix + withUnsafeBytes(of: v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
        return nil
    }

    static func isHostName(_ text: String) -> Bool {
        !text.isEmpty && text.count <= 253 && text.utf8.allSatisfy { byte in
            (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x30 && byte <= 0x39) || byte == 0x2D || byte == 0x2E
        }
    }

    /// The addresses the host's resolver gives for `name` (the node that runs the function decides
    /// what a name in a rule means).
    static func resolveOnHost(_ name: String) -> [[UInt8]] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &result) == 0 else { return [] }
        defer { freeaddrinfo(result) }
        var addresses: [[UInt8]] = []
        var entry = result
        while let current = entry {
            if let address = current.pointee.ai_addr {
                let bytes = Array(UnsafeRawBufferPointer(start: address, count: Int(current.pointee.ai_addrlen)))
                if let parsed = try? InetAddress(parsing: bytes, socketFamily: current.pointee.ai_family), !addresses.contains(parsed.ip) {
                    addresses.append(parsed.ip)
                }
            }
            entry = current.pointee.ai_next
        }
        return addresses
    }

    // MARK: Address ranges

    static func masked(_ ip: [UInt8], prefixLength: Int) -> [UInt8] {
        ip.enumerated().map { index, byte in
            let bits = min(max(prefixLength - index * 8, 0), 8)
            return bits == 8 ? byte : byte & UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
        }
    }

    static func ip(_ ip: [UInt8], isIn network: [UInt8], prefixLength: Int) -> Bool {
        masked(ip, prefixLength: prefixLength) == network
    }

    /// Ranges that are not the public internet (RFC 6890 and friends): what `any` never opens.
    /// IPv4 ranges are written as IPv4-mapped IPv6 (prefix + 96).
    private static let specialRanges: [(ip: [UInt8], prefixLength: Int, name: String)] = {
        func v4(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8, _ length: Int, _ name: String) -> ([UInt8], Int, String) {
            (InetAddress.mappedPrefix + [a, b, c, d], length + 96, name)
        }
        func v6(_ text: String, _ length: Int, _ name: String) -> ([UInt8], Int, String) {
            (parseIP(text)!, length, name)
        }
        return [
            v4(0, 0, 0, 0, 8, "\"this network\" 0.0.0.0/8"), v4(10, 0, 0, 0, 8, "private 10.0.0.0/8"),
            v4(100, 64, 0, 0, 10, "shared 100.64.0.0/10"), v4(127, 0, 0, 0, 8, "loopback 127.0.0.0/8"),
            v4(169, 254, 0, 0, 16, "link-local 169.254.0.0/16"), v4(172, 16, 0, 0, 12, "private 172.16.0.0/12"),
            v4(192, 0, 0, 0, 24, "IETF 192.0.0.0/24"), v4(192, 0, 2, 0, 24, "documentation 192.0.2.0/24"),
            v4(192, 168, 0, 0, 16, "private 192.168.0.0/16"), v4(198, 18, 0, 0, 15, "benchmarking 198.18.0.0/15"),
            v4(198, 51, 100, 0, 24, "documentation 198.51.100.0/24"), v4(203, 0, 113, 0, 24, "documentation 203.0.113.0/24"),
            v4(224, 0, 0, 0, 4, "multicast 224.0.0.0/4"), v4(240, 0, 0, 0, 4, "reserved 240.0.0.0/4"),
            v6("::", 127, "unspecified or loopback ::/127"), v6("::ffff:0:0", 96, "IPv4-mapped"),
            v6("64:ff9b:1::", 48, "local NAT64 64:ff9b:1::/48"), v6("100::", 64, "discard 100::/64"),
            v6("2001::", 23, "IETF 2001::/23"), v6("2001:db8::", 32, "documentation 2001:db8::/32"),
            v6("fc00::", 7, "unique local fc00::/7"), v6("fe80::", 10, "link-local fe80::/10"),
            v6("ff00::", 8, "multicast ff00::/8"),
        ]
    }()

    /// Whether `ip` is a public address. An IPv4-mapped address is judged as IPv4.
    static func isPublic(_ ip: [UInt8]) -> Bool {
        let isMapped = Array(ip.prefix(12)) == InetAddress.mappedPrefix
        return !specialRanges.contains { range in
            if range.name == "IPv4-mapped" { return false }  // judged by the IPv4 ranges
            let rangeIsV4 = Array(range.ip.prefix(12)) == InetAddress.mappedPrefix && range.prefixLength >= 96
            guard rangeIsV4 == isMapped else { return false }
            return Self.ip(ip, isIn: range.ip, prefixLength: range.prefixLength)
        }
    }

    static func rangeName(_ ip: [UInt8]) -> String {
        let isMapped = Array(ip.prefix(12)) == InetAddress.mappedPrefix
        return specialRanges.first { range in
            let rangeIsV4 = Array(range.ip.prefix(12)) == InetAddress.mappedPrefix && range.prefixLength >= 96
            return range.name != "IPv4-mapped" && rangeIsV4 == isMapped && Self.ip(ip, isIn: range.ip, prefixLength: range.prefixLength)
        }?.name ?? "public"
    }

    public static func == (left: NetworkPolicy, right: NetworkPolicy) -> Bool {
        left.rules == right.rules && left.resolverStorage == right.resolverStorage
    }
}

/// Why a `--net-allow` or `--dns` text was refused.
public enum NetworkPolicyError: Error, Equatable, CustomStringConvertible {
    case badRule(String, reason: String)
    case unresolvable(String, rule: String)
    case badResolver(String, reason: String)

    public var description: String {
        switch self {
        case .badRule(let text, let reason):
            "--net-allow \(text): \(reason); write any, HOST[:PORT], ADDR[/PREFIX][:PORT] or [IPV6[/PREFIX]]:PORT"
        case .unresolvable(let name, let rule):
            "--net-allow \(rule): the host name \(name) does not resolve on this node"
        case .badResolver(let text, let reason):
            "--dns \(text): \(reason)"
        }
    }
}

extension String {
    var trimmingSpaces: String {
        var text = Substring(self)
        while text.first == " " { text = text.dropFirst() }
        while text.last == " " { text = text.dropLast() }
        return String(text)
    }
}
