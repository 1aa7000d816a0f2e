import Foundation

/// A user name and password (or identity token) for a registry.
public struct Credentials: Sendable, Equatable {
    public var username: String
    public var password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    /// The value of an `Authorization: Basic …` header.
    var basicAuthorization: String {
        "Basic " + Data("\(username):\(password)".utf8).base64EncodedString()
    }

    /// The credentials `docker login`, `skopeo login` and `podman login` saved for `registry`
    /// in the docker config file (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`),
    /// or nil when there are none. Entries are matched by `host[:port]`, with or without a
    /// scheme or path (`https://host/v1/`). A file that exists but is unusable is an error, not
    /// silently anonymous access.
    public static func fromDockerConfig(registry: String, path: String? = nil) throws(RegistryError) -> Credentials? {
        let file = path ?? dockerConfigPath
        guard FileManager.default.fileExists(atPath: file) else { return nil }
        struct Config: Decodable {
            struct Entry: Decodable {
                var auth: String?
                var username: String?
                var password: String?
                var identitytoken: String?
            }
            var auths: [String: Entry]?
        }
        let config: Config
        do {
            config = try JSONDecoder().decode(Config.self, from: Data(contentsOf: URL(fileURLWithPath: file)))
        } catch {
            throw .credentials("\(file) is not a readable docker config (\(error)); fix or remove it, or pass --username with --password-stdin")
        }
        func host(_ key: String) -> String {
            var key = Substring(key)
            for scheme in ["https://", "http://"] where key.hasPrefix(scheme) { key = key.dropFirst(scheme.count) }
            return String(key.split(separator: "/", maxSplits: 1).first ?? key)
        }
        guard let entry = config.auths?.first(where: { host($0.key) == registry })?.value else { return nil }
        if let auth = entry.auth, !auth.isEmpty {
            guard let decoded = Data(base64Encoded: auth).map({ String(decoding: $0, as: UTF8.self) }),
                  let colon = decoded.firstIndex(of: ":") else {
                throw .credentials("the `auth` entry for \(registry) in \(file) is not base64 of USER:PASSWORD; log in again")
            }
            return Credentials(username: String(decoded[..<colon]), password: String(decoded[decoded.index(after: colon)...]))
        }
        if let username = entry.username, let password = entry.password {
            return Credentials(username: username, password: password)
        }
        if let token = entry.identitytoken {
            // An identity token is exchanged like a password by the token flow.
            return Credentials(username: "<token>", password: token)
        }
        return nil
    }

    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    public static var dockerConfigPath: String {
        let environment = ProcessInfo.processInfo.environment
        if let directory = environment["DOCKER_CONFIG"], !directory.isEmpty { return directory + "/config.json" }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return home + "/.docker/config.json"
    }
}
