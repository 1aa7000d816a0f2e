import HTTPTypes
import NIOCore

/// One whole HTTP/1.1 response in one buffer: status line, fields, Content-Length, body. What
/// `InvokeFastPath` writes straight to the socket, instead of passing HTTPTypes parts through the
/// HTTPTypes-to-HTTP/1 codec and NIO's response encoder (a conversion of every field, a buffer
/// for the head and one for the body, ~25 µs of an answer's ~57 µs write with heavy's response).
enum HTTP1ResponseEncoding {
    /// `closing`: the connection closes after this response (`Connection: close` is sent).
    static func encode(status: HTTPResponse.Status, headers: HTTPFields, body: [UInt8], closing: Bool,
                       allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 256 + body.count)
        buffer.writeString("HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\n")
        for field in headers where field.name != .contentLength && field.name != .connection {
            // HTTPTypes keeps CR, LF and NUL out of names and values: no field can split the head.
            buffer.writeString(field.name.rawName)
            buffer.writeStaticString(": ")
            buffer.writeString(field.value)
            buffer.writeStaticString("\r\n")
        }
        // 204 has no body and, by RFC 9110, no Content-Length.
        if status != .noContent {
            buffer.writeStaticString("Content-Length: ")
            buffer.writeString(String(body.count))
            buffer.writeStaticString("\r\n")
        }
        if closing { buffer.writeStaticString("Connection: close\r\n") }
        buffer.writeStaticString("\r\n")
        buffer.writeBytes(body)
        return buffer
    }
}
