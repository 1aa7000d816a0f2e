import Foundation

/// The runner's line protocol (README, "Functions and the runner"), as tests speak it.
public struct RunnerResponse: Decodable, Sendable {
    public struct Failure: Decodable, Sendable {
        public var type: String
        public var message: String
        public var traceback: String
    }

    public var ok: Bool
    public var result: [String: JSONValue]?
    public var error: Failure?

    /// One request per line, newline-terminated: what the runner reads on stdin.
    public static func input(_ requests: [String]) -> Data {
        Data((requests.joined(separator: "\n") + "\n").utf8)
    }

    /// Parses the runner's stdout, one JSON response per line.
    public static func parse(_ stdout: String) throws -> [RunnerResponse] {
        try stdout.split(separator: "\n").map { try JSONDecoder().decode(RunnerResponse.self, from: Data($0.utf8)) }
    }
}

/// Enough of JSON to compare handler results.
public enum JSONValue: Decodable, Equatable, Sendable {
    case string(String), number(Double), bool(Bool), object([String: JSONValue]), null

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }
}
