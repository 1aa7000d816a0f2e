import CatalyzerKernel
import CatalyzerRuntime
import Glibc
import Synchronization

/// The `bench serve` client of the `http` mode: HTTP/1.1 keep-alive connections to the daemon's
/// front end on loopback, written and read with plain blocking socket calls on their own threads,
/// so the mode measures what the server's HTTP path adds, not a client library's event loops
/// competing for the same two cores. One connection per request in flight, reused.
final class LoopbackHTTPClient: Sendable {
    let port: UInt16
    /// Idle connections, reused by the next request.
    private let idle = Mutex<[Int32]>([])

    init(port: Int) { self.port = UInt16(port) }

    deinit { for fd in idle.withLock({ $0 }) { close(fd) } }

    struct Failure: Error, CustomStringConvertible { let description: String }

    typealias Response = (status: Int, headers: [String: String], body: [UInt8], nanoseconds: UInt64)

    /// POSTs `body` to `path`; returns the status code, the response headers (lowercased names),
    /// the body, and the time from the request's first byte written to the response's last byte
    /// read, measured on the client's thread.
    func post(_ path: String, body: [UInt8]) async throws -> Response {
        let result = await InstanceThread.run { () -> Result<Response, Failure> in
            do throws(Failure) { return .success(try self.exchange(path, body: body)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    private func exchange(_ path: String, body: [UInt8]) throws(Failure) -> Response {
        let fd: Int32
        if let reused = idle.withLock({ $0.popLast() }) { fd = reused } else { fd = try connect() }
        let request = Array("POST \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
        do throws(Failure) {
            let started = Sandbox.monotonicNanoseconds()
            try writeAll(fd, request)
            let (status, headers, body) = try readResponse(fd)
            let elapsed = Sandbox.monotonicNanoseconds() - started
            idle.withLock { $0.append(fd) }
            return (status, headers, body, elapsed)
        } catch {
            close(fd)
            throw error
        }
    }

    private func connect() throws(Failure) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        var on: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            close(fd)
            throw Failure(description: "connect to 127.0.0.1:\(port): \(String(cString: strerror(errno)))")
        }
        return fd
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(Failure) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { throw Failure(description: "send: \(String(cString: strerror(errno)))") }
            offset += written
        }
    }

    /// Reads one response: the head up to the blank line, then Content-Length bytes of body.
    private func readResponse(_ fd: Int32) throws(Failure) -> (Int, [String: String], [UInt8]) {
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        let separator: [UInt8] = [13, 10, 13, 10]
        var headEnd: Int?
        var expected: Int?
        var status = 0
        var headers: [String: String] = [:]
        while true {
            if headEnd == nil, let end = firstRange(of: separator, in: buffer) {
                headEnd = end + 4
                let lines = String(decoding: buffer[..<end], as: UTF8.self).components(separatedBy: "\r\n")
                let statusParts = lines.first?.split(separator: " ") ?? []
                guard statusParts.count >= 2, let code = Int(statusParts[1]) else {
                    throw Failure(description: "malformed status line: \(lines.first ?? "")")
                }
                status = code
                for line in lines.dropFirst() {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: " ")
                }
                guard let length = headers["content-length"].flatMap({ Int($0) }), length >= 0, length <= 64 << 20 else {
                    throw Failure(description: "the response has no usable Content-Length")
                }
                expected = length
            }
            if let headEnd, let expected, buffer.count - headEnd >= expected {
                return (status, headers, Array(buffer[headEnd..<(headEnd + expected)]))
            }
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw Failure(description: count == 0 ? "the server closed the connection" : "recv: \(String(cString: strerror(errno)))") }
            buffer += chunk[..<count]
        }
    }

    private func firstRange(of needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if Array(haystack[start..<(start + needle.count)]) == needle { return start }
        }
        return nil
    }
}

private extension Substring {
    func trimmingCharacters(in set: String) -> String {
        var text = self
        while let first = text.first, set.contains(first) { text = text.dropFirst() }
        while let last = text.last, set.contains(last) { text = text.dropLast() }
        return String(text)
    }
}
