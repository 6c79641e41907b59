import Foundation
import GridKernel
import NIOCore
import NIOHTTP1
import NIOPosix

/// Runs each task by invoking an AWS Lambda function through the Lambda Runtime Interface Emulator, as
/// HTC-Grid's agent does with its co-located "lambda" container, so HTC-Grid worker images keep working.
///
/// The task's input is the event: `POST {endpoint}/2015-03-31/functions/{function}/invocations` with the
/// input as the body; the response body is the output. Unlike HTC-Grid, a function error is a failure of
/// the task, not its output: a response with `X-Amz-Function-Error`, a body that is a Lambda error
/// document (`{"errorMessage": …, "errorType": …}`), a body containing `BOOTSTRAP ERROR` (HTC-Grid's
/// provided-runtime marker) or a status other than 2xx. Such failures are retried per the session's
/// `max_retries`, like a failed `--exec` command. An invocation that takes longer than ``timeout`` fails
/// with ``GridKernel/GridError/Code/timeout`` (retried too); a cancelled task closes the connection.
///
/// The HTTP client is a small HTTP/1.1 client on SwiftNIO (NIOHTTP1), one connection per invocation.
public struct LambdaHandler: TaskHandler {
    /// The emulator's address.
    public let host: String
    /// The emulator's port.
    public let port: Int
    /// The path of the invocation endpoint.
    public let path: String
    /// The longest an invocation may take. Default 2,000 s (HTC-Grid's botocore read timeout).
    public let timeout: Duration

    /// Creates a handler for an emulator URL such as `http://localhost:8080`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a URL that is not `http://HOST[:PORT][/PATH]`
    ///   or an empty function name.
    public init(url: String, function: String = "function", timeout: Duration = .seconds(2_000)) throws {
        guard let components = URLComponents(string: url), components.scheme?.lowercased() == "http",
            let host = components.host, !host.isEmpty, components.query == nil
        else {
            throw GridError.invalidArgument("--lambda \(url) is not an http://HOST:PORT URL of a Lambda Runtime Interface Emulator")
        }
        guard !function.isEmpty, !function.contains("/") else {
            throw GridError.invalidArgument("--lambda-function '\(function)' is not a function name")
        }
        guard timeout > .zero else { throw GridError.invalidArgument("--lambda-timeout must be positive") }
        self.host = host
        self.port = components.port ?? 80
        let base = components.path.hasSuffix("/") ? String(components.path.dropLast()) : components.path
        self.path = "\(base)/2015-03-31/functions/\(function)/invocations"
        self.timeout = timeout
    }

    public func run(input: [UInt8], context: TaskContext) async throws -> [UInt8] {
        let reply = try await HTTP1Client.post(host: host, port: port, path: path, body: input, timeout: timeout)
        if let failure = LambdaFunctionError(reply) { throw failure }
        return reply.body
    }
}

/// A Lambda invocation that failed: a function error, a bootstrap error or an HTTP error status.
public struct LambdaFunctionError: Error, CustomStringConvertible, Sendable {
    /// The error text kept with the task.
    public let message: String
    public var description: String { message }

    /// The failure a reply reports, or `nil` for a successful invocation.
    init?(_ reply: HTTP1Client.Reply) {
        let body = String(decoding: reply.body.prefix(4096), as: UTF8.self)
        guard (200..<300).contains(reply.status) else {
            message = "the Lambda runtime answered HTTP \(reply.status)" + (body.isEmpty ? "" : ": \(body)")
            return
        }
        let document = Self.errorDocument(reply.body)
        if let kind = reply.headers.first(name: "X-Amz-Function-Error") ?? document.map({ _ in "Unhandled" }) {
            let type = (document?["errorType"] as? String).map { "\($0): " } ?? ""
            let text = document?["errorMessage"] as? String ?? body
            message = "Lambda function error (\(kind)): \(type)\(text)"
            return
        }
        if body.contains("BOOTSTRAP ERROR") || String(decoding: reply.body, as: UTF8.self).contains("BOOTSTRAP ERROR") {
            message = "Lambda runtime bootstrap error: \(body)"
            return
        }
        return nil
    }

    /// The body as a Lambda error document: an object with `errorMessage` and only the fields runtimes
    /// put beside it.
    private static func errorDocument(_ body: [UInt8]) -> [String: Any]? {
        guard body.first == UInt8(ascii: "{"),
            let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
            object["errorMessage"] is String
        else { return nil }
        let allowed: Set<String> = ["errorMessage", "errorType", "stackTrace", "requestId", "cause"]
        return Set(object.keys).isSubset(of: allowed) ? object : nil
    }
}

/// A minimal HTTP/1.1 client on SwiftNIO: one `POST` per connection (`Connection: close`).
enum HTTP1Client {
    /// A response.
    struct Reply: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]
    }

    /// Sends a `POST` and collects the response.
    ///
    /// - Throws: ``GridKernel/GridError/Code/timeout`` after `timeout`; ``GridKernel/GridError/Code/unavailable``
    ///   when the server cannot be reached or closes the connection early; `CancellationError`.
    static func post(host: String, port: Int, path: String, body: [UInt8], timeout: Duration) async throws -> Reply {
        let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Reply.self)
        let request = Collector.Request(host: host, port: port, path: path, body: body)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: promise.futureResult.eventLoop)
                .connectTimeout(.seconds(10))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(Collector(request: request, promise: promise))
                    }
                }
                .connect(host: host, port: port)
                .get()
        } catch {
            promise.fail(error)
            throw GridError.unavailable("cannot reach the Lambda runtime at http://\(host):\(port): \(error)")
        }
        return try await withTaskCancellationHandler {
            try await withThrowingTaskGroup(of: Reply?.self) { group in
                group.addTask { try await promise.futureResult.get() }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    return nil
                }
                defer { group.cancelAll() }
                do {
                    guard let reply = try await group.next() ?? nil else {
                        channel.close(promise: nil)
                        throw GridError(.timeout, "the Lambda invocation took longer than \(timeout) (--lambda-timeout)")
                    }
                    return reply
                } catch let error as GridError {
                    throw error
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    throw GridError.unavailable("the Lambda runtime at http://\(host):\(port) failed: \(error)")
                }
            }
        } onCancel: {
            channel.close(promise: nil)
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
