import CatalyzerImage

/// `REGISTRY/REPOSITORY[:TAG]` or `REGISTRY/REPOSITORY@sha256:…`, as docker and skopeo write it.
///
/// The registry part is required (there is no default registry): it is the first path component,
/// a host name or address with an optional port (`localhost:5000`, `127.0.0.1:5000`,
/// `registry.example.com`, `[::1]:5000`).
public struct ImageReference: Sendable, Equatable, CustomStringConvertible {
    /// `host[:port]`.
    public var registry: String
    /// Lowercase path components separated by `/` (distribution's repository name grammar).
    public var repository: String
    /// What the manifest is addressed by.
    public var reference: Reference

    public enum Reference: Sendable, Equatable {
        case tag(String)
        case digest(Digest)

        /// The path component of `/v2/<name>/manifests/<reference>`.
        public var pathComponent: String {
            switch self {
            case let .tag(tag): tag
            case let .digest(digest): digest.description
            }
        }
    }

    public init(registry: String, repository: String, reference: Reference) {
        self.registry = registry
        self.repository = repository
        self.reference = reference
    }

    public var description: String {
        switch reference {
        case let .tag(tag): "\(registry)/\(repository):\(tag)"
        case let .digest(digest): "\(registry)/\(repository)@\(digest)"
        }
    }

    /// The same repository addressed by `digest`.
    public func with(digest: Digest) -> ImageReference {
        ImageReference(registry: registry, repository: repository, reference: .digest(digest))
    }

    /// Parses `text`; the error says what is wrong and what a valid reference looks like.
    public init(parsing text: String) throws(RegistryError) {
        func invalid(_ why: String) -> RegistryError {
            .invalidReference(text, why: why + "; write REGISTRY/REPOSITORY[:TAG] or REGISTRY/REPOSITORY@sha256:DIGEST, e.g. localhost:5000/functions/hello:v1")
        }
        var rest = Substring(text)
        if rest.hasPrefix("docker://") { rest = rest.dropFirst("docker://".count) }
        guard let slash = rest.firstIndex(of: "/") else { throw invalid("no registry part") }
        let registry = String(rest[..<slash])
        rest = rest[rest.index(after: slash)...]
        guard Self.isValidRegistry(registry) else { throw invalid("'\(registry)' is not a registry host[:port]") }

        var reference = Reference.tag("latest")
        if let at = rest.firstIndex(of: "@") {
            let digestText = String(rest[rest.index(after: at)...])
            guard let digest = Digest(digestText) else { throw invalid("'\(digestText)' is not a sha256 digest") }
            reference = .digest(digest)
            rest = rest[..<at]
        } else if let colon = rest.lastIndex(of: ":"), !rest[colon...].contains("/") {
            let tag = String(rest[rest.index(after: colon)...])
            guard Self.isValidTag(tag) else { throw invalid("'\(tag)' is not a valid tag (letters, digits, '_', '.', '-'; at most 128, not starting with '.' or '-')") }
            reference = .tag(tag)
            rest = rest[..<colon]
        }
        let repository = String(rest)
        guard Self.isValidRepository(repository) else {
            throw invalid("'\(repository)' is not a valid repository name (lowercase letters and digits, separated by '.', '_', '__', '-' or '/')")
        }
        self.init(registry: registry, repository: repository, reference: reference)
    }

    static func isValidRegistry(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 255 else { return false }
        if text.hasPrefix("[") {  // [v6]:port
            guard let close = text.firstIndex(of: "]") else { return false }
            let after = text[text.index(after: close)...]
            return after.isEmpty || (after.hasPrefix(":") && isPort(after.dropFirst()))
        }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2, let host = parts.first, !host.isEmpty else { return false }
        if parts.count == 2 && !isPort(parts[1]) { return false }
        return host.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) || $0 == 46 || $0 == 45 }
    }

    private static func isPort(_ text: Substring) -> Bool {
        guard let port = Int(text), (1...65535).contains(port) else { return false }
        return true
    }

    static func isValidTag(_ tag: String) -> Bool {
        guard let first = tag.utf8.first, tag.utf8.count <= 128, first != 46, first != 45 else { return false }
        return tag.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) || $0 == 95 || $0 == 46 || $0 == 45 }
    }

    static func isValidRepository(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 255 else { return false }
        for component in name.split(separator: "/", omittingEmptySubsequences: false) {
            guard let first = component.utf8.first, let last = component.utf8.last else { return false }
            func alnum(_ c: UInt8) -> Bool { (c >= 97 && c <= 122) || (c >= 48 && c <= 57) }
            guard alnum(first), alnum(last) else { return false }
            var separatorRun = 0
            for c in component.utf8 {
                if alnum(c) { separatorRun = 0; continue }
                guard c == 46 || c == 95 || c == 45 else { return false }
                separatorRun += 1
                // '.', '_', '__' or runs of '-' separate alphanumerics.
                if c != 45 && separatorRun > 2 { return false }
            }
        }
        return true
    }

    /// The image name a pull uses when none is given: the repository's last component, and the
    /// tag unless it is `latest` (`localhost:5000/fn/hello:v2` → `hello-v2`).
    public var defaultImageName: String {
        let base = String(repository.split(separator: "/").last ?? Substring(repository))
        if case let .tag(tag) = reference, tag != "latest" { return base + "-" + tag }
        return base
    }
}
