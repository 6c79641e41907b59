import Crypto
import Foundation
import GridKernel
import Hummingbird

/// How `htc-server` authenticates requests to `/v1`.
public enum AuthMode: Sendable {
    /// No authentication: one implicit tenant sees every session. Allowed on loopback only.
    case none
    /// API keys, each mapped to a tenant, sent in `x-api-key` or `Authorization: Bearer KEY`.
    case apiKeys(APIKeyStore)
    /// JSON Web Tokens (RS256, ES256) in `Authorization: Bearer TOKEN`, or the raw token in
    /// `Authorization` as HTC-Grid's client sends Cognito IdTokens; the tenant is a claim.
    case jwt(JWTVerifier)
}

/// API keys mapped to tenants. Only SHA-256 digests of the keys are kept in memory.
public struct APIKeyStore: Sendable {
    private let tenants: [String: String]

    /// Builds a store from `(tenant, key)` pairs.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for an empty tenant or key, a tenant with
    ///   characters other than letters, digits, `-`, `_` and `.`, or a key listed twice.
    public init(_ entries: [(tenant: String, key: String)]) throws {
        var tenants: [String: String] = [:]
        for (number, entry) in entries.enumerated() {
            guard !entry.key.isEmpty, !entry.tenant.isEmpty else {
                throw GridError.invalidArgument("API key entry \(number + 1) has an empty tenant or key; write tenant:key")
            }
            guard entry.tenant.utf8.allSatisfy(Self.isTenantByte) else {
                throw GridError.invalidArgument(
                    "tenant '\(entry.tenant)' may contain only letters, digits, '-', '_' and '.'"
                )
            }
            let digest = Self.digest(entry.key)
            guard tenants[digest] == nil else {
                throw GridError.invalidArgument("API key entry \(number + 1) repeats a key of an earlier entry; every key must be unique")
            }
            tenants[digest] = entry.tenant
        }
        self.tenants = tenants
    }

    /// Parses the text of an API key file: one `tenant:key` per line; blank lines and lines starting
    /// with `#` are ignored.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` naming the line that is malformed.
    public init(fileContents text: String) throws {
        var entries: [(tenant: String, key: String)] = []
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let colon = line.firstIndex(of: ":") else {
                throw GridError.invalidArgument("API key file line \(number + 1) is not of the form tenant:key")
            }
            entries.append((String(line[..<colon]), String(line[line.index(after: colon)...])))
        }
        guard !entries.isEmpty else { throw GridError.invalidArgument("the API key file holds no tenant:key line") }
        try self.init(entries)
    }

    /// Reads an API key file (see ``init(fileContents:)``).
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` if the file cannot be read or is malformed.
    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw GridError.invalidArgument("cannot read the API key file \(path) (--api-keys)")
        }
        try self.init(fileContents: text)
    }

    /// How many keys the store holds.
    public var count: Int { tenants.count }

    /// The tenant of a key, or `nil` for an unknown key.
    public func tenant(forKey key: String) -> String? {
        tenants[Self.digest(key)]
    }

    private static func digest(_ key: String) -> String {
        SHA256.hash(data: Data(key.utf8)).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    private static func isTenantByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
            true
        default:
            false
        }
    }
}

/// Authenticates every request it sees and records the tenant in the context; refuses with 401.
struct AuthMiddleware: RouterMiddleware {
    typealias Context = ServerRequestContext

    let mode: AuthMode

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        switch mode {
        case .none:
            return try await next(request, context)
        case .apiKeys(let store):
            guard let key = Self.presentedKey(request) else {
                throw GridError(.unauthorized, "an API key is required: send it in the x-api-key header")
            }
            guard let tenant = store.tenant(forKey: key) else {
                throw GridError(.unauthorized, "the API key is not valid")
            }
            return try await next(request, Self.context(context, tenant: tenant))
        case .jwt(let verifier):
            guard let token = Self.presentedToken(request) else {
                throw GridError(.unauthorized, "a token is required: send it in the Authorization header")
            }
            let tenant = try await verifier.tenant(forToken: token)
            return try await next(request, Self.context(context, tenant: tenant))
        }
    }

    private static func context(_ context: Context, tenant: String) -> Context {
        var context = context
        context.tenant = tenant
        context.logger[metadataKey: "tenant"] = "\(tenant)"
        return context
    }

    /// `Authorization: Bearer TOKEN`, or the bare token as HTC-Grid's client sends it.
    private static func presentedToken(_ request: Request) -> String? {
        guard let authorization = request.headers[.authorization]?.trimmingCharacters(in: .whitespaces), !authorization.isEmpty else {
            return nil
        }
        if authorization.lowercased().hasPrefix("bearer ") {
            let token = authorization.dropFirst("bearer ".count).trimmingCharacters(in: .whitespaces)
            return token.isEmpty ? nil : token
        }
        return authorization
    }

    private static func presentedKey(_ request: Request) -> String? {
        if let key = request.headers[.init("x-api-key")!], !key.isEmpty { return key }
        if let authorization = request.headers[.authorization], authorization.lowercased().hasPrefix("bearer ") {
            let key = authorization.dropFirst("bearer ".count).trimmingCharacters(in: .whitespaces)
            return key.isEmpty ? nil : key
        }
        return nil
    }
}
