import CatalyzerRuntime
import Foundation
import HTTPTypes
import Logging
import NIOCore
import NIOHTTP1
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
/// Sits after HTTP/1 decoding, before Hummingbird's connection-state handler and responder.
/// Answers leave in request order even when a client pipelines: while a request is in progress
/// (ours running, or one passed on whose response has not ended; responses pass through here on
/// their way out), the parts of the requests after it wait in `queued`. All state is touched on
/// the channel's event loop only.
final class InvokeFastPath: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let responder: LambdaResponder
    private let service: any CallbackFunctionService

    private enum State {
        case idle
        /// A request that is not ours, passed on: its parts until its end (`ended`), and its
        /// response until its end (`answered`).
        case passing(ended: Bool, answered: Bool)
        /// Our request, its body being read.
        case reading(HTTPRequest, LambdaResponder.Body)
        /// Our request, answered once its invocation completes.
        case running(closeAfter: Bool)
        /// The connection is being closed: nothing more is read.
        case closing
    }
    private var state = State.idle
    /// Parts of requests that arrived while an earlier one was in progress, in order.
    private var queued = CircularBuffer<HTTPRequestPart>()
    /// A quiesce (graceful shutdown) that arrived while our request was read or ran: passed on
    /// once it is answered, so the connection-state handler after us closes an idle
    /// connection, not ours.
    private var heldQuiesce: Any?

    init(responder: LambdaResponder, service: any CallbackFunctionService) {
        self.responder = responder
        self.service = service
    }

    /// Whether the request is a synchronous invoke this handler answers.
    static func isOurs(_ head: HTTPRequest) -> Bool {
        guard head.method == .post, let path = head.path,
              case .invoke? = LambdaResponder.route(method: head.method, path: LambdaResponder.split(path).path) else { return false }
        let type = head.headerFields[.amzInvocationType]
        return type == nil || type == LambdaResponder.InvocationType.requestResponse.rawValue
    }

    /// Whether a part arriving now can be handled at once (else it waits its turn).
    private var takesParts: Bool {
        switch state {
        case .idle, .reading, .passing(ended: false, _): true
        case .passing(ended: true, _), .running, .closing: false
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if case .closing = state { return }
        guard queued.isEmpty && takesParts else {
            queued.append(part)
            return
        }
        handle(part, context: context)
    }

    private func handle(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        switch (state, part) {
        case (.idle, .head(let head)) where Self.isOurs(head):
            state = .reading(head, LambdaResponder.Body(hashing: responder.authenticator != nil))
        case (.idle, .head):
            state = .passing(ended: false, answered: false)
            context.fireChannelRead(wrapInboundOut(part))
        case (.passing(ended: false, let answered), .end):
            state = answered ? .idle : .passing(ended: true, answered: false)
            context.fireChannelRead(wrapInboundOut(part))
        case (.passing(ended: false, _), _):
            context.fireChannelRead(wrapInboundOut(part))
        case (.reading(let head, var body), .body(let buffer)):
            guard body.append(buffer) else {
                // Not worth reading further: drop the connection, as the async path does.
                responder.logger.warning("request body over \(LambdaResponder.drainLimit) bytes; connection dropped")
                state = .closing
                context.close(promise: nil)
                return
            }
            state = .reading(head, body)
        case (.reading(let head, var body), .end):
            body.finish()
            answer(head, body, context: context)
        default:
            // A part out of HTTP's order (the decoder never makes one): the connection is not usable.
            state = .closing
            context.close(promise: nil)
        }
    }

    /// Handles the parts that waited, as long as each can be taken now. Called outside a read
    /// cycle, so what it passes on is followed by a read-complete: Hummingbird's async channel
    /// hands parts to its reader only then.
    private func takeQueued(context: ChannelHandlerContext) {
        guard !queued.isEmpty else { return }
        while takesParts, let part = queued.popFirst() {
            handle(part, context: context)
        }
        context.fireChannelReadComplete()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // A passed-on request's response on its way out: its end lets the next request in.
        context.write(data, promise: promise)
        guard case .end = unwrapOutboundIn(data), case .passing(let ended, _) = state else { return }
        state = ended ? .idle : .passing(ended: false, answered: true)
        takeQueued(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch state {
        case .reading, .running:
            if event is ChannelShouldQuiesceEvent {
                heldQuiesce = event
                return
            }
        case .idle, .passing, .closing:
            break
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func answer(_ head: HTTPRequest, _ body: LambdaResponder.Body, context: ChannelHandlerContext) {
        let closeAfter = head.headerFields[.connection]?.lowercased() == "close"
        state = .running(closeAfter: closeAfter)
        let requestId = RequestID.make()
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
            service.start(request) { result, handOff in
                _ = responder.complete(result, pending)
                handOff.handedOver()
            }
            write(LambdaResponder.Answer(status: .accepted, headers: responder.baseHeaders(requestId: requestId), body: []), context: context)
        case .run(let request, let pending):
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            let responder = responder
            service.start(request) { result, handOff in
                let answer = responder.complete(result, pending)
                loop.execute {
                    let (handler, context) = bound.value
                    handler.write(answer, context: context)
                    // Written to the socket (or queued if it is full): the instance may clean up.
                    handOff.handedOver()
                }
            }
        }
    }

    /// Where our answers are written: NIO's HTTP/1 response encoder's context, so that what is
    /// written through it goes straight to the socket as bytes (`HTTP1ResponseEncoding`). Our
    /// answers are whole responses, written while no other response is in progress on the
    /// connection, so nothing between us and the socket misses a part it tracks.
    private var socketSide: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        socketSide = try? context.pipeline.syncOperations.context(handlerType: HTTPResponseEncoder.self)
    }

    func handlerRemoved(context: ChannelHandlerContext) { socketSide = nil }

    /// Writes `answer` as one response and goes back to reading requests.
    private func write(_ answer: LambdaResponder.Answer, context: ChannelHandlerContext) {
        var closeAfter = false
        if case .running(let close) = state { closeAfter = close }
        state = closeAfter ? .closing : .idle
        guard let socketSide else {
            // Not behind NIO's HTTP/1 encoder: never so in `ServeServer`'s pipeline.
            responder.logger.error("the invoke fast path found no HTTP/1 response encoder; connection dropped")
            state = .closing
            context.close(promise: nil)
            return
        }
        let bytes = HTTP1ResponseEncoding.encode(status: answer.status, headers: answer.headers, body: answer.body,
                                                 closing: closeAfter, allocator: context.channel.allocator)
        socketSide.writeAndFlush(NIOAny(bytes), promise: nil)
        if closeAfter {
            context.close(promise: nil)
            return
        }
        if let quiesce = heldQuiesce {
            heldQuiesce = nil
            context.fireUserInboundEventTriggered(quiesce)
        }
        takeQueued(context: context)
    }
}
