import Crypto
import Foundation
import GridKernel

/// Signs AWS requests with Signature Version 4 (AWS4-HMAC-SHA256).
///
/// The one signer of the AWS backend: SQS, DynamoDB, S3 and STS requests all pass through
/// ``sign(_:credentials:date:)``. It implements the canonical request of the AWS SigV4 documentation;
/// the test target checks it against the AWS test suite and against botocore.
public struct SigV4Signer: Sendable, Hashable {
    /// The signing region (`us-east-1`).
    public var region: String
    /// The signing name of the service (`sqs`, `dynamodb`, `s3`, `sts`).
    public var service: String

    /// Creates a signer for one service in one region.
    public init(region: String, service: String) {
        self.region = region
        self.service = service
    }

    /// A request as it is sent, before signing.
    public struct Request: Sendable, Hashable {
        /// `GET`, `PUT`, `POST`, `DELETE`, `HEAD`.
        public var method: String
        /// The path as sent on the wire: each segment percent-encoded (see ``SigV4Signer/encode(_:keepSlash:)``).
        public var path: String
        /// Query parameters, decoded; the signer encodes and sorts them.
        public var query: [(String, String)]
        /// Headers; `host` must be among them. Names are case-insensitive.
        public var headers: [(String, String)]
        /// The hex SHA-256 of the body, or `UNSIGNED-PAYLOAD`.
        public var payloadHash: String

        /// Creates a request.
        public init(method: String, path: String, query: [(String, String)] = [], headers: [(String, String)], payloadHash: String) {
            self.method = method
            self.path = path
            self.query = query
            self.headers = headers
            self.payloadHash = payloadHash
        }

        public static func == (lhs: Request, rhs: Request) -> Bool {
            lhs.method == rhs.method && lhs.path == rhs.path && lhs.payloadHash == rhs.payloadHash
                && lhs.query.elementsEqual(rhs.query, by: ==) && lhs.headers.elementsEqual(rhs.headers, by: ==)
        }

        public func hash(into hasher: inout Hasher) {
            hasher.combine(method)
            hasher.combine(path)
            hasher.combine(payloadHash)
        }

        /// The query string as sent, encoded as the signer encodes it.
        public var encodedQuery: String {
            query.map { "\(SigV4Signer.encode($0.0, keepSlash: false))=\(SigV4Signer.encode($0.1, keepSlash: false))" }
                .joined(separator: "&")
        }
    }

    /// Signs a request: returns it with `x-amz-date`, `x-amz-security-token` (for temporary
    /// credentials) and `authorization` headers added.
    public func sign(_ request: Request, credentials: AWSCredentials, date: Date) -> Request {
        var signed = request
        let stamp = Self.amzDate(date)
        signed.headers.removeAll { ["x-amz-date", "authorization", "x-amz-security-token"].contains($0.0.lowercased()) }
        signed.headers.append(("x-amz-date", stamp))
        if let token = credentials.sessionToken { signed.headers.append(("x-amz-security-token", token)) }
        let parts = canonicalRequest(signed)
        let day = String(stamp.prefix(8))
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = "AWS4-HMAC-SHA256\n\(stamp)\n\(scope)\n\(Self.hex(SHA256.hash(data: Data(parts.text.utf8))))"
        let key = signingKey(secret: credentials.secretAccessKey, day: day)
        let signature = Self.hex(HMAC<SHA256>.authenticationCode(for: Data(stringToSign.utf8), using: key))
        signed.headers.append((
            "authorization",
            "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyId)/\(scope), SignedHeaders=\(parts.signedHeaders), Signature=\(signature)"
        ))
        return signed
    }

    /// The canonical request and the list of signed headers.
    public func canonicalRequest(_ request: Request) -> (text: String, signedHeaders: String) {
        var headers: [String: [String]] = [:]
        for (name, value) in request.headers {
            headers[name.lowercased(), default: []].append(Self.trimmed(value))
        }
        let names = headers.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(headers[$0]!.joined(separator: ","))\n" }.joined()
        let signedHeaders = names.joined(separator: ";")
        let encoded: [(name: String, value: String)] = request.query.map { pair in
            (Self.encode(pair.0, keepSlash: false), Self.encode(pair.1, keepSlash: false))
        }
        let sorted = encoded.sorted { lhs, rhs in lhs.name == rhs.name ? lhs.value < rhs.value : lhs.name < rhs.name }
        let query = sorted.map { pair in pair.name + "=" + pair.value }.joined(separator: "&")
        let text = [request.method, canonicalPath(request.path), query, canonicalHeaders, signedHeaders, request.payloadHash]
            .joined(separator: "\n")
        return (text, signedHeaders)
    }

    /// S3 signs the path as sent; every other service encodes each segment once more.
    private func canonicalPath(_ path: String) -> String {
        let path = path.isEmpty ? "/" : path
        guard service != "s3" else { return path }
        return path.split(separator: "/", omittingEmptySubsequences: false)
            .map { Self.encode(String($0), keepSlash: false) }
            .joined(separator: "/")
    }

    private func signingKey(secret: String, day: String) -> SymmetricKey {
        var key = SymmetricKey(data: Data("AWS4\(secret)".utf8))
        for part in [day, region, service, "aws4_request"] {
            key = SymmetricKey(data: Data(HMAC<SHA256>.authenticationCode(for: Data(part.utf8), using: key)))
        }
        return key
    }

    /// Percent-encodes everything but the RFC 3986 unreserved characters (and `/` when `keepSlash`).
    public static func encode(_ text: String, keepSlash: Bool) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: "/") where keepSlash:
                out.append("/")
            default:
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }

    /// The hex SHA-256 of bytes, as `x-amz-content-sha256` and the payload hash want it.
    public static func sha256Hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var hasher = SHA256()
        hasher.update(data: Array(bytes))
        return hex(hasher.finalize())
    }

    static func hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        bytes.map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    }

    /// `20150830T123600Z`.
    static func amzDate(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d%02d%02dT%02d%02d%02dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec)
    }

    /// Trims a header value and collapses runs of spaces, as the canonical form requires.
    private static func trimmed(_ value: String) -> String {
        value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ").trimmingCharacters(in: .whitespaces)
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
