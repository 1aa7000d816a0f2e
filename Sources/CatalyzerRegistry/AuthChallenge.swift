/// A parsed `WWW-Authenticate` header: the scheme and its parameters
/// (`Bearer realm="https://auth/token",service="registry",scope="repository:a:pull,push"`).
struct AuthChallenge: Sendable, Equatable {
    var scheme: String
    var parameters: [String: String]

    var isBearer: Bool { scheme.lowercased() == "bearer" }
    var isBasic: Bool { scheme.lowercased() == "basic" }

    /// Parses one challenge; nil when the header is empty. Quoted values may hold commas and
    /// escaped quotes (`scope="repository:a:pull,push"`).
    init?(header: String) {
        var rest = Substring(header).drop(while: { $0 == " " })
        let scheme = rest.prefix(while: { $0 != " " })
        guard !scheme.isEmpty else { return nil }
        self.scheme = String(scheme)
        rest = rest.dropFirst(scheme.count)
        var parameters: [String: String] = [:]
        while true {
            rest = rest.drop(while: { $0 == " " || $0 == "," })
            guard let equals = rest.firstIndex(of: "=") else { break }
            let key = rest[..<equals].trimmingSpaces.lowercased()
            rest = rest[rest.index(after: equals)...]
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                var escaped = false
                while let character = rest.first {
                    rest = rest.dropFirst()
                    if escaped { value.append(character); escaped = false; continue }
                    if character == "\\" { escaped = true; continue }
                    if character == "\"" { break }
                    value.append(character)
                }
            } else {
                let token = rest.prefix(while: { $0 != "," })
                value = token.trimmingSpaces
                rest = rest.dropFirst(token.count)
            }
            parameters[key] = value
        }
        self.parameters = parameters
    }
}

extension Substring {
    fileprivate var trimmingSpaces: String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
