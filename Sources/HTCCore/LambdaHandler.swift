import Foundation
import GridKernel
import Metrics
import NIOCore
import NIOHTTP1

/// Runs each task by invoking an AWS Lambda function through the Lambda Runtime Interface Emulator, as
/// HTC-Grid's agent does with its co-located "lambda" container, so HTC-Grid worker images keep working.
///
/// The task's input is the event: `POST {endpoint}/2015-03-31/functions/{function}/invocations` with the
/// input as the body; the response body is the output. Unlike HTC-Grid, a function error is a failure of
/// the task, not its output: a response with `X-Amz-Function-Error`, a body that is a Lambda error
/// document (`{"errorMessage": …, "errorType": …}`), a body containing `BOOTSTRAP ERROR` (HTC-Grid's
/// provided-runtime marker) or a status other than 2xx. Such failures are retried per the session's
/// `max_retries`, like a failed `--exec` command. An invocation that takes longer than ``timeout`` fails
/// with ``GridKernel/GridError/Code/timeout`` (retried too).
///
/// The emulator runs one invocation at a time, and `aws-lambda-rie` crashes when a second one arrives,
/// so invocations queue for it, whatever the agent's concurrency. A cancelled or timed-out task ends at
/// once, but its invocation still runs inside the emulator: without ``emulator`` the next invocation
/// waits until the abandoned one returns (its connection stays open and is read in the background, at
/// most ``timeout`` more); with ``emulator`` (the agent's own child) the emulator is killed and started
/// again instead.
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
    /// The emulator, when the agent runs it as its child (`--lambda-emulator`); `nil` when it runs apart.
    public let emulator: LambdaEmulatorProcess?
    /// One invocation at a time reaches the emulator.
    let gate = LambdaInvocationGate()
    private let abandonedAndWaited = Counter(label: LambdaMetricName.abandonedInvocations, dimensions: [("action", "waited")])
    private let abandonedAndRestarted = Counter(label: LambdaMetricName.abandonedInvocations, dimensions: [("action", "restarted")])

    /// Creates a handler for an emulator URL such as `http://localhost:8080`.
    ///
    /// - Parameter emulator: the emulator the agent runs as its child, listening on the URL's port; it
    ///   is restarted when an invocation is abandoned.
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a URL that is not `http://HOST[:PORT][/PATH]`
    ///   or an empty function name.
    public init(url: String, function: String = "function", timeout: Duration = .seconds(2_000), emulator: LambdaEmulatorProcess? = nil) throws {
        let (host, port) = try Self.address(url)
        guard !function.isEmpty, !function.contains("/") else {
            throw GridError.invalidArgument("--lambda-function '\(function)' is not a function name")
        }
        guard timeout > .zero else { throw GridError.invalidArgument("--lambda-timeout must be positive") }
        self.host = host
        self.port = port
        let path = URLComponents(string: url)?.path ?? ""
        let base = path.hasSuffix("/") ? String(path.dropLast()) : path
        self.path = "\(base)/2015-03-31/functions/\(function)/invocations"
        self.timeout = timeout
        self.emulator = emulator
    }

    /// The host and port of an emulator URL.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a URL that is not `http://HOST[:PORT][/PATH]`.
    public static func address(_ url: String) throws -> (host: String, port: Int) {
        guard let components = URLComponents(string: url), components.scheme?.lowercased() == "http",
            let host = components.host, !host.isEmpty, components.query == nil
        else {
            throw GridError.invalidArgument("--lambda \(url) is not an http://HOST:PORT URL of a Lambda Runtime Interface Emulator")
        }
        return (host, components.port ?? 80)
    }

    public func run(input: [UInt8], context: TaskContext) async throws -> [UInt8] {
        try await gate.acquire(context.id, logger: context.logger)
        let exchange: HTTP1Client.Exchange
        do {
            try await emulator?.waitUntilReady()
            exchange = try await HTTP1Client.send(host: host, port: port, path: path, body: input)
        } catch {
            gate.release()
            throw error
        }
        let reply: HTTP1Client.Reply
        do {
            reply = try await exchange.response(timeout: timeout)
        } catch let error as GridError where error.code == .timeout {
            abandon(exchange, context, reason: "timed out (--lambda-timeout \(timeout))")
            throw error
        } catch is CancellationError {
            abandon(exchange, context, reason: "was abandoned (the task was cancelled, lost or reached its time limit)")
            throw CancellationError()
        } catch {
            gate.release()
            throw error
        }
        gate.release()
        if let failure = LambdaFunctionError(reply) { throw failure }
        return reply.body
    }

    /// Lets the task go while its invocation still runs in the emulator: restarts the agent's own
    /// emulator, or else keeps the gate until the invocation returns (at most ``timeout`` more).
    private func abandon(_ exchange: HTTP1Client.Exchange, _ context: TaskContext, reason: String) {
        if let emulator {
            abandonedAndRestarted.increment()
            exchange.close()
            // Before the gate opens, so that the next invocation waits for the new emulator.
            emulator.restart(because: "the invocation of task \(context.id) \(reason)")
            gate.release()
            return
        }
        abandonedAndWaited.increment()
        gate.abandon(context.id, reason: reason, limit: timeout, logger: context.logger)
        let gate = gate
        let logger = context.logger
        let task = context.id
        let start = ContinuousClock.now
        let limit = timeout
        exchange.reply.whenComplete { result in
            let waited = ContinuousClock.now - start
            switch result {
            case .success:
                logger.info("the abandoned invocation of task \(task) returned after \(waited); the emulator is free")
            case .failure(let error):
                logger.warning(
                    "gave up on the abandoned invocation of task \(task) after \(waited) (at most \(limit), --lambda-timeout): \(error); the emulator may still be busy")
            }
            gate.release()
        }
        exchange.close(after: timeout)
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
