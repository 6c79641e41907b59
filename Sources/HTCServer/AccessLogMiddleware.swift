import HTTPTypes
import Hummingbird
import Logging

/// Logs one line per request (method, path, status, duration, and the tenant once authentication has
/// named one) with Hummingbird's request id, and returns the id in `x-request-id` so a client's report can
/// be matched to the log. Headers are never logged, so API keys and tokens stay out of the logs.
struct AccessLogMiddleware: RouterMiddleware {
    typealias Context = ServerRequestContext

    static var requestIDHeader: HTTPField.Name { HTTPField.Name("x-request-id")! }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        do {
            var response = try await next(request, context)
            response.headers[Self.requestIDHeader] = context.id
            log(request, status: response.status.code, since: start, context: context)
            return response
        } catch {
            log(request, status: 500, since: start, context: context)
            throw error
        }
    }

    private func log(_ request: Request, status: Int, since start: ContinuousClock.Instant, context: Context) {
        let elapsed = ContinuousClock.now - start
        let milliseconds = Double(elapsed.components.seconds) * 1_000 + Double(elapsed.components.attoseconds) / 1e15
        var metadata: Logger.Metadata = [
            "method": "\(request.method.rawValue)",
            "path": "\(request.uri.path)",
            "status": "\(status)",
            "ms": "\((milliseconds * 10).rounded() / 10)",
        ]
        // Authentication ran inside this middleware, on a copy of the context: read what it found.
        if let tenant = context.identity.tenant { metadata["tenant"] = "\(tenant)" }
        context.logger.log(level: status >= 500 ? .error : .info, "request", metadata: metadata)
    }
}
