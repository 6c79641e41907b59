import Foundation
import GridKernel
import HTTPTypes
import Hummingbird
import NIOCore

/// Turns every error into the API's JSON error document `{"error": {"code": "...", "message": "..."}}`
/// with the HTTP status of its ``GridError/Code``. This is the only place where grid errors meet HTTP.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as GridError {
            let (status, code) = Self.status(of: error.code)
            if status == .internalServerError || status == .serviceUnavailable {
                context.logger.error("request failed", metadata: ["error": "\(error)"])
            }
            return Self.response(status: status, code: code, message: error.message)
        } catch is NIOTooManyBytesError {
            return Self.response(
                status: .contentTooLarge, code: "payload_too_large",
                message: "the request body is larger than the server's limit (--max-body-bytes)"
            )
        } catch let error as any HTTPResponseError {
            let code = error.status.reasonPhrase.lowercased().replacingOccurrences(of: " ", with: "_")
            let message = (error as? HTTPError)?.body ?? error.status.reasonPhrase
            return Self.response(status: error.status, code: code, message: message)
        } catch {
            context.logger.error("request failed", metadata: ["error": "\(error)"])
            return Self.response(status: .internalServerError, code: "internal_error", message: "internal error; see the server log")
        }
    }

    /// The HTTP status and the API error code of a grid error code.
    static func status(of code: GridError.Code) -> (HTTPResponse.Status, String) {
        switch code {
        case .notFound: (.notFound, "not_found")
        case .invalidArgument: (.badRequest, "invalid_argument")
        case .conflict: (.conflict, "conflict")
        case .payloadTooLarge: (.contentTooLarge, "payload_too_large")
        case .unauthorized: (.unauthorized, "unauthorized")
        case .unavailable: (.serviceUnavailable, "unavailable")
        case .timeout: (.gatewayTimeout, "timeout")
        case .leaseLost: (.conflict, "lease_lost")
        default: (.internalServerError, "internal_error")
        }
    }

    static func response(status: HTTPResponse.Status, code: String, message: String) -> Response {
        let body = ErrorDocument(error: .init(code: code, message: message))
        // Sorted keys: the same error gives the same bytes every time (a tenant comparing the answer for
        // another tenant's session with one for an unknown id must find no difference).
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = (try? encoder.encode(body)) ?? Data(#"{"error":{"code":"internal_error","message":""}}"#.utf8)
        return Response(
            status: status,
            headers: [.contentType: "application/json; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: data))
        )
    }
}

/// The body of every error response.
struct ErrorDocument: Codable {
    struct Detail: Codable {
        var code: String
        var message: String
    }

    var error: Detail
}
