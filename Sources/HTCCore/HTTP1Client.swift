import GridKernel
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A minimal HTTP/1.1 client on SwiftNIO: one `POST` per connection (`Connection: close`).
///
/// Sending and waiting are separate steps so that a caller who stops waiting (its task was cancelled,
/// or its time ran out) can leave the exchange open and still learn, in the background, when the server
/// answered: the Lambda emulator stays busy until then, whoever is waiting.
enum HTTP1Client {
    /// A response.
    struct Reply: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]
    }

    /// A request sent on its own connection, and its response to come.
    struct Exchange: Sendable {
        let channel: any Channel
        /// Completes once with the response, or fails when the connection closes before it is complete.
        let reply: EventLoopFuture<Reply>

        /// Closes the connection; a response not yet complete fails.
        func close() {
            channel.close(promise: nil)
        }

        /// Closes the connection after `limit` unless the response is complete by then.
        func close(after limit: Duration) {
            let channel = channel
            let timer = channel.eventLoop.scheduleTask(in: TimeAmount(limit)) { channel.close(promise: nil) }
            reply.whenComplete { _ in timer.cancel() }
        }

        /// Waits for the response, at most `timeout`. Stopping (time out, cancellation) leaves the
        /// connection open: close it, or await ``reply``, as the caller decides.
        ///
        /// - Throws: ``GridKernel/GridError/Code/timeout`` after `timeout`; ``GridKernel/GridError/Code/unavailable``
        ///   when the connection closes before the response is complete; `CancellationError`.
        func response(timeout: Duration) async throws -> Reply {
            let waiter = ReplyWaiter()
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { continuation in
                    waiter.install(continuation)
                    let timer = channel.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
                        waiter.resume(.failure(GridError(.timeout, "the Lambda invocation took longer than \(timeout) (--lambda-timeout)")))
                    }
                    reply.whenComplete { result in
                        timer.cancel()
                        waiter.resume(result)
                    }
                }
            } onCancel: {
                waiter.resume(.failure(CancellationError()))
            }
        }
    }

    /// Connects to `host:port` and sends a `POST` with `body`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable`` when the server cannot be reached.
    static func send(host: String, port: Int, path: String, body: [UInt8]) async throws -> Exchange {
        let eventLoop = MultiThreadedEventLoopGroup.singleton.next()
        let promise = eventLoop.makePromise(of: Reply.self)
        let request = Collector.Request(host: host, port: port, path: path, body: body)
        do {
            let channel = try await ClientBootstrap(group: eventLoop)
                .connectTimeout(.seconds(10))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(Collector(request: request, promise: promise))
                    }
                }
                .connect(host: host, port: port)
                .get()
            let reply = promise.futureResult.flatMapErrorThrowing { error in
                throw GridError.unavailable("the Lambda runtime at http://\(host):\(port) failed: \(error)")
            }
            return Exchange(channel: channel, reply: reply)
        } catch {
            promise.fail(error)
            throw GridError.unavailable("cannot reach the Lambda runtime at http://\(host):\(port): \(error)")
        }
    }

    /// Whether something accepts TCP connections on `host:port` (the connection is closed at once).
    static func accepts(host: String, port: Int) async -> Bool {
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(1))
                .connect(host: host, port: port)
                .get()
            try? await channel.close()
            return true
        } catch {
            return false
        }
    }

    /// Resumes a continuation once, with whichever comes first: the response, the time-out or the
    /// cancellation (which may even come before the continuation is installed).
    private final class ReplyWaiter: Sendable {
        private struct State {
            var continuation: CheckedContinuation<Reply, any Error>?
            var early: Result<Reply, any Error>?
            var resumed = false
        }

        private let state = Mutex(State())

        func install(_ continuation: CheckedContinuation<Reply, any Error>) {
            let early: Result<Reply, any Error>? = state.withLock { state in
                if let early = state.early {
                    state.resumed = true
                    return early
                }
                state.continuation = continuation
                return nil
            }
            if let early { continuation.resume(with: early) }
        }

        func resume(_ result: Result<Reply, any Error>) {
            let continuation: CheckedContinuation<Reply, any Error>? = state.withLock { state in
                guard !state.resumed else { return nil }
                guard let continuation = state.continuation else {
                    if state.early == nil { state.early = result }
                    return nil
                }
                state.resumed = true
                return continuation
            }
            continuation?.resume(with: result)
        }
    }

    /// Writes the request once connected and collects the response; completes the promise exactly once.
    private final class Collector: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        typealias OutboundOut = HTTPClientRequestPart

        struct Request: Sendable {
            var host: String
            var port: Int
            var path: String
            var body: [UInt8]
        }

        struct ClosedEarly: Error, CustomStringConvertible {
            var description: String { "the connection closed before the response was complete" }
        }

        private let request: Request
        private let promise: EventLoopPromise<Reply>
        private var head: HTTPResponseHead?
        private var body: [UInt8] = []
        private var completed = false

        init(request: Request, promise: EventLoopPromise<Reply>) {
            self.request = request
            self.promise = promise
        }

        func channelActive(context: ChannelHandlerContext) {
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: "\(request.host):\(request.port)")
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(request.body.count))
            headers.add(name: "Connection", value: "close")
            let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: request.path, headers: headers)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: request.body)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            context.fireChannelActive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
            case .body(var buffer):
                body += buffer.readBytes(length: buffer.readableBytes) ?? []
            case .end:
                if let head {
                    complete(.success(Reply(status: Int(head.status.code), headers: head.headers, body: body)))
                }
                context.close(promise: nil)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            complete(.failure(ClosedEarly()))
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            complete(.failure(error))
            context.close(promise: nil)
        }

        private func complete(_ result: Result<Reply, any Error>) {
            guard !completed else { return }
            completed = true
            promise.completeWith(result)
        }
    }
}
