import Foundation

/// JSON through Foundation: the event is re-serialized (not decoded into types) because it is
/// whatever the caller sent and goes to the handler as is, only put on one line.
enum JSON {
    /// Compact JSON of a JSONSerialization-compatible value; never fails (a value that cannot be
    /// serialized is a programming error in this module, so it falls back to `null`).
    static func encode(_ value: Any) -> [UInt8] {
        (try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .withoutEscapingSlashes, .sortedKeys]))
            .map(Array.init) ?? Array("null".utf8)
    }
}

/// The event a caller sent, as the one line of JSON a runner reads.
public enum EventPayload {
    public enum Failure: Error, Equatable {
        case notJSON(String)
    }

    /// `body` parsed and written back compactly: the runner reads one request per line, so a
    /// pretty-printed event (newlines) would become several requests. An empty body is `{}`, as
    /// Lambda treats an invocation without payload.
    public static func normalize(_ body: [UInt8]) throws(Failure) -> [UInt8] {
        if body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return Array("{}".utf8) }
        let value: Any
        do {
            value = try JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed])
        } catch {
            throw .notJSON("Could not parse request body into json: the payload is not valid JSON (\(body.count) bytes)")
        }
        guard let line = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .withoutEscapingSlashes]) else {
            throw .notJSON("Could not parse request body into json: the payload cannot be re-serialized")
        }
        return Array(line)
    }
}
