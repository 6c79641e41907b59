import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A small HTTP/1.1 server on 127.0.0.1 and a free port, standing in for STS, the container
/// credentials endpoint and instance metadata in the credentials tests. It records every request and
/// answers through a closure.
final class LocalHTTPServer: Sendable {
    struct Request: Sendable {
        var method: String
        var uri: String
        var headers: [String: String]
        var body: String
    }

    struct Response: Sendable {
        var status: Int
        var body: String
        init(_ status: Int = 200, _ body: String) {
            self.status = status
            self.body = body
        }
    }

    /// The requests received, shared with the connection handlers.
    private final class Recorder: Sendable {
        let requests = Mutex<[Request]>([])
    }

    private let channel: any Channel
    private let recorder: Recorder
    let port: Int

    /// Starts the server.
    static func start(_ respond: @escaping @Sendable (Request) -> Response) async throws -> LocalHTTPServer {
        let recorder = Recorder()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(Handler(respond: respond, recorder: recorder))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return LocalHTTPServer(channel: channel, recorder: recorder)
    }

    private init(channel: any Channel, recorder: Recorder) {
        self.channel = channel
        self.port = channel.localAddress?.port ?? 0
        self.recorder = recorder
    }

    var base: String { "http://127.0.0.1:\(port)" }

    /// Every request so far.
    var requests: [Request] { recorder.requests.withLock { $0 } }

    func stop() async throws {
        try await channel.close()
    }

    private final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let respond: @Sendable (Request) -> Response
        let recorder: Recorder
        var head: HTTPRequestHead?
        var body = ByteBuffer()

        init(respond: @escaping @Sendable (Request) -> Response, recorder: Recorder) {
            self.respond = respond
            self.recorder = recorder
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
                body.clear()
            case .body(var chunk):
                body.writeBuffer(&chunk)
            case .end:
                guard let head else { return }
                var headers: [String: String] = [:]
                for (name, value) in head.headers { headers[name.lowercased()] = value }
                let request = Request(method: head.method.rawValue, uri: head.uri, headers: headers, body: String(buffer: body))
                recorder.requests.withLock { $0.append(request) }
                let response = respond(request)
                var responseHead = HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: response.status))
                responseHead.headers.add(name: "content-length", value: String(response.body.utf8.count))
                responseHead.headers.add(name: "connection", value: "close")
                context.write(wrapOutboundOut(.head(responseHead)), promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: response.body)))), promise: nil)
                let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
                context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in bound.value.close(promise: nil) }
            }
        }
    }
}
