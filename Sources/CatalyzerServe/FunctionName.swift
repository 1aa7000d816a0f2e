/// A function as a caller names it in a path: `NAME`, `NAME:QUALIFIER`,
/// `ACCOUNT:function:NAME[:QUALIFIER]` or `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`
/// (boto3 and the CLI pass whatever the user gave them).
public struct FunctionName: Sendable, Equatable {
    public var name: String
    public var qualifier: String?

    public init(name: String, qualifier: String? = nil) {
        self.name = name
        self.qualifier = qualifier
    }

    /// Parses the (percent-decoded) path segment; nil for a shape Lambda would not accept.
    public init?(parsing text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        switch parts.count {
        case 1: self.init(name: parts[0])
        case 2: self.init(name: parts[0], qualifier: parts[1])
        case 3 where parts[1] == "function": self.init(name: parts[2])
        case 4 where parts[1] == "function": self.init(name: parts[2], qualifier: parts[3])
        case 7 where parts[0] == "arn" && parts[2] == "lambda" && parts[5] == "function": self.init(name: parts[6])
        case 8 where parts[0] == "arn" && parts[2] == "lambda" && parts[5] == "function": self.init(name: parts[6], qualifier: parts[7])
        default: return nil
        }
        if name.isEmpty || qualifier?.isEmpty == true { return nil }
    }

    /// The qualifier that applies: the one in the name, else the `Qualifier` query parameter.
    /// Two different ones are a conflict Lambda rejects; here that is simply "not found".
    public func effectiveQualifier(query: String?) -> String? {
        switch (qualifier, query) {
        case (let inName?, let inQuery?) where inName != inQuery: return "\(inName)|\(inQuery)"
        case (let inName?, _): return inName
        case (nil, let inQuery): return inQuery
        }
    }

    /// Only `$LATEST` exists: an image has one version, the one its name points at now.
    public static let latest = "$LATEST"
}
