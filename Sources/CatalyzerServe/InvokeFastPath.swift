import CatalyzerRuntime
import Crypto
import Foundation
import HTTPTypes
import Logging
import NIOCore
import NIOHTTPTypes

/// Synchronous invocations (`POST /2015-03-31/functions/NAME/invocations`, type RequestResponse)
/// answered from the event loop: the request goes from the event loop straight to the fork's
/// instance thread (`CallbackFunctionService.start`), and its answer straight back to the event
/// loop, instead of through Hummingbird's responder task on the Swift concurrency pool in
/// between. Everything the answer is made of (auth, checks, gate, metrics, Lambda's shapes) is
/// `LambdaResponder`'s, shared with the async path; every other request passes through to it.
///
/// Measured with temporary timestamps (`bench serve --mode http`, hello): through Hummingbird's
/// responder HTTP added ~0.47 ms to a fork, 71 µs of it reading the body through the request's
/// async sequence and ~150 µs the hops to the pool and back; with this path it adds ~0.18 ms
/// (event loop to handler 44 µs, checks and admission 23 µs, answer to event loop 31 µs,
/// writing and the client's read 63 µs), ~0.3 ms in `bench serve`'s medians.
///
/// Sits after HTTP/1 decoding, before Hummingbird's connection-state handler. NIO's pipelining
/// handler before it holds a connection's next request until this one's response ends, so
/// answers stay in order. All state is touched on the channel's event loop only.
final class InvokeFastPath: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundOut = HTTPResponsePart

    private let responder: LambdaResponder
    private let service: any CallbackFunctionService

    private enum State {
        case idle
        /// A request that is not ours, passed through up to its end.
        case passing
        /// Our request, its body being read.
        case reading(HTTPRequest, LambdaResponder.Body, SHA256)
        /// Our request, answered once its invocation completes.
        case running(closeAfter: Bool)
    }
    private var state = State.idle
    /// A quiesce (graceful shutdown) that arrived while our request ran: passed on once it is
    /// answered, so the connection-state handler after us closes an idle connection, not ours.
    private var heldQuiesce: Any?

    init(responder: LambdaResponder, service: any CallbackFunctionService) {
        self.responder = responder
        self.service = service
    }

    /// Whether the request is a synchronous invoke this handler answers.
    static func isOurs(_ head: HTTPRequest) -> Bool {
        guard head.method == .post, let path = head.path,
              case .invoke? = LambdaResponder.route(method: head.method, path: LambdaResponder.split(path).path) else { return false }
        let type = head.headerFields[HTTPField.Name("X-Amz-Invocation-Type")!]
        return type == nil || type == LambdaResponder.InvocationType.requestResponse.rawValue
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch (state, part) {
        case (.idle, .head(let head)) where Self.isOurs(head):
            state = .reading(head, LambdaResponder.Body(), SHA256())
        case (.idle, .head):
            state = .passing
            context.fireChannelRead(data)
        case (.passing, .end):
            state = .idle
            context.fireChannelRead(data)
        case (.reading(let head, var body, var hasher), .body(let buffer)):
            state = .idle  // the body is moved out while it grows
            body.size += buffer.readableBytes
            guard body.size <= LambdaResponder.drainLimit else {
                // Not worth reading further: drop the connection, as the async path does.
                responder.logger.warning("request body over \(LambdaResponder.drainLimit) bytes; connection dropped")
                context.close(promise: nil)
                return
            }
            buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
            if body.size <= LambdaResponder.payloadLimit { body.bytes += buffer.readableBytesView }
            state = .reading(head, body, hasher)
        case (.reading(let head, var body, let hasher), .end):
            body.hash = SigV4.hex(hasher.finalize())
            answer(head, body, context: context)
        case (.running, _), (.reading, .head):
            // Another request's part before ours is answered: the pipelining handler prevents
            // it; if it happens anyway, the connection is not usable.
            context.close(promise: nil)
        default:
            context.fireChannelRead(data)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch state {
        case .reading, .running:
            if event is ChannelShouldQuiesceEvent {
                heldQuiesce = event
                return
            }
        case .idle, .passing:
            break
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func answer(_ head: HTTPRequest, _ body: LambdaResponder.Body, context: ChannelHandlerContext) {
        let closeAfter = head.headerFields[.connection]?.lowercased() == "close"
        state = .running(closeAfter: closeAfter)
        let requestId = UUID().uuidString.lowercased()
        let (path, query) = LambdaResponder.split(head.path ?? "/")
        if let refusal = responder.authenticationFailure(head, pathOnly: path, query: query, body: body, requestId: requestId) {
            return write(refusal, context: context)
        }
        guard case .invoke(let text)? = LambdaResponder.route(method: head.method, path: path) else {
            return write(responder.errorAnswer(.notFound(method: head.method.rawValue, path: path), requestId: requestId), context: context)
        }
        switch responder.admitInvoke(text, query: LambdaResponder.queryItems(query), headers: head.headerFields, body: body, requestId: requestId) {
        case .answer(let answer):
            write(answer, context: context)
        case .event(let request, let pending):
            // Not ours by its type; kept whole should `isOurs` ever let one through.
            let responder = responder
            service.start(request) { result in _ = responder.complete(result, pending) }
            write(LambdaResponder.Answer(status: .accepted, headers: responder.baseHeaders(requestId: requestId), body: []), context: context)
        case .run(let request, let pending):
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            let responder = responder
            service.start(request) { result in
                let answer = responder.complete(result, pending)
                loop.execute {
                    let (handler, context) = bound.value
                    handler.write(answer, context: context)
                }
            }
        }
    }

    /// Writes `answer` as one response and goes back to reading requests.
    private func write(_ answer: LambdaResponder.Answer, context: ChannelHandlerContext) {
        var closeAfter = false
        if case .running(let close) = state { closeAfter = close }
        state = .idle
        var headers = answer.headers
        headers[.contentLength] = String(answer.body.count)
        if closeAfter { headers[.connection] = "close" }
        context.write(wrapOutboundOut(.head(HTTPResponse(status: answer.status, headerFields: headers))), promise: nil)
        if !answer.body.isEmpty {
            context.write(wrapOutboundOut(.body(context.channel.allocator.buffer(bytes: answer.body))), promise: nil)
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        if closeAfter {
            context.close(promise: nil)
        } else if let quiesce = heldQuiesce {
            heldQuiesce = nil
            context.fireUserInboundEventTriggered(quiesce)
        }
    }
}
