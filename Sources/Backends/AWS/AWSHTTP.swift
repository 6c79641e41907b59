import AsyncHTTPClient
import Foundation
import GridKernel
import NIOCore
import NIOHTTP1

/// One HTTP exchange with an AWS service or a credentials endpoint, on async-http-client.
///
/// Plain transport: no signing and no retries (``AWSClient`` adds both). The client is
/// async-http-client's process-wide pooled client unless one is given.
public struct AWSHTTP: Sendable {
    /// A request as sent.
    struct Request: Sendable {
        var method: String
        /// The full URL, query included.
        var url: String
        var headers: [(String, String)]
        var body: [UInt8]
    }

    /// A response, its body read in full.
    struct Response: Sendable {
        var status: Int
        var headers: [(String, String)]
        var body: [UInt8]

        /// The first header of that name, case-insensitively.
        func header(_ name: String) -> String? {
            headers.first { $0.0.caseInsensitiveCompare(name) == .orderedSame }?.1
        }

        var text: String { String(decoding: body, as: UTF8.self) }
    }

    private let client: HTTPClient
    /// The longest response body read, so a misbehaving endpoint cannot exhaust memory.
    let maxResponseBytes: Int

    /// Uses async-http-client's shared client (no shutdown needed).
    public init() {
        self.init(client: .shared)
    }

    /// Uses the given client; its owner shuts it down.
    public init(client: HTTPClient, maxResponseBytes: Int = 1 << 30) {
        self.client = client
        self.maxResponseBytes = maxResponseBytes
    }

    /// Sends a request and reads the whole response.
    ///
    /// - Throws: the transport's error when the server cannot be reached or the exchange times out.
    func send(_ request: Request, timeout: Duration) async throws -> Response {
        var outgoing = HTTPClientRequest(url: request.url)
        outgoing.method = HTTPMethod(rawValue: request.method)
        for (name, value) in request.headers { outgoing.headers.add(name: name, value: value) }
        if !request.body.isEmpty || ["PUT", "POST"].contains(request.method) {
            outgoing.body = .bytes(ByteBuffer(bytes: request.body))
        }
        let response = try await client.execute(outgoing, timeout: .nanoseconds(Int64(timeout.timeInterval * 1e9)))
        let body = try await response.body.collect(upTo: maxResponseBytes)
        return Response(
            status: Int(response.status.code),
            headers: response.headers.map { ($0.name, $0.value) },
            body: Array(buffer: body)
        )
    }
}

/// Where a service is reached: scheme, host, port and an optional base path.
public struct AWSEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// `https` or `http`.
    public var scheme: String
    /// The host name or address.
    public var host: String
    /// The port, when not the scheme's default.
    public var port: Int?
    /// A path prefix every request path is appended to (usually empty).
    public var basePath: String

    /// Parses `http(s)://host[:port][/path]`.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` when the text is not such a URL.
    public init(_ text: String) throws {
        guard let url = URLComponents(string: text), let scheme = url.scheme?.lowercased(), ["http", "https"].contains(scheme),
            let host = url.host, !host.isEmpty
        else {
            throw GridError.invalidArgument("endpoint '\(text)' is not an http(s)://host[:port] URL", backend: "aws")
        }
        self.scheme = scheme
        self.host = host
        self.port = url.port
        basePath = url.path.hasSuffix("/") ? String(url.path.dropLast()) : url.path
    }

    /// The `Host` header value.
    public var hostHeader: String {
        guard let port, !(scheme == "https" && port == 443), !(scheme == "http" && port == 80) else { return host }
        return "\(host):\(port)"
    }

    /// The URL of `path` (already percent-encoded) with an encoded query.
    func url(path: String, query: String) -> String {
        "\(scheme)://\(hostHeader)\(basePath)\(path)\(query.isEmpty ? "" : "?" + query)"
    }

    /// The same endpoint with another host (for S3 virtual-host addressing).
    func withHost(_ host: String) -> AWSEndpoint {
        var copy = self
        copy.host = host
        return copy
    }

    public var description: String { url(path: "", query: "") }

    /// The endpoint of a service: the `endpoint` option of the URL, else `AWS_ENDPOINT_URL_<SERVICE>`,
    /// else `AWS_ENDPOINT_URL`, else AWS' regional endpoint.
    ///
    /// - Parameters:
    ///   - serviceVariable: the service's part of the variable name (`SQS`, `DYNAMODB`, `S3`, `STS`).
    ///   - host: the AWS host (`sqs.us-east-1.amazonaws.com`).
    /// - Throws: ``GridError/Code/invalidArgument`` for a malformed endpoint.
    public static func resolve(
        option: String?, serviceVariable: String, host: String, environment: [String: String]
    ) throws -> AWSEndpoint {
        for candidate in [option, environment["AWS_ENDPOINT_URL_\(serviceVariable)"], environment["AWS_ENDPOINT_URL"]] {
            if let candidate, !candidate.isEmpty { return try AWSEndpoint(candidate) }
        }
        return try AWSEndpoint("https://\(host)")
    }
}
