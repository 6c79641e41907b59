import Foundation
import GridKernel
import JWTKit

/// Settings of JWT authentication (`--auth jwt`).
public struct JWTConfiguration: Sendable {
    /// The JSON Web Key Set file holding the public keys that sign tokens (a Cognito user pool's
    /// `jwks.json`, for instance).
    public var jwksPath: String
    /// The required `iss` claim; any issuer when `nil`.
    public var issuer: String?
    /// A value the `aud` claim must contain (Cognito IdTokens carry the app client id); any audience when `nil`.
    public var audience: String?
    /// The claim naming the tenant. Default `sub`.
    public var tenantClaim: String
    /// Allowed clock skew when checking `exp` and `nbf`. Default 60 s.
    public var leeway: Duration
    /// An unknown key id makes the verifier read the key file again (keys rotate), at most this often.
    /// Default 10 s.
    public var reloadInterval: Duration

    /// Creates a configuration.
    public init(
        jwksPath: String,
        issuer: String? = nil,
        audience: String? = nil,
        tenantClaim: String = "sub",
        leeway: Duration = .seconds(60),
        reloadInterval: Duration = .seconds(10)
    ) {
        self.jwksPath = jwksPath
        self.issuer = issuer
        self.audience = audience
        self.tenantClaim = tenantClaim
        self.leeway = leeway
        self.reloadInterval = reloadInterval
    }
}

/// Verifies RS256 and ES256 JSON Web Tokens against a key set file and returns the tenant they name.
///
/// Only the algorithms RS256 and ES256 are accepted, whatever the token's header says; the key is
/// chosen by the header's `kid`, which must name a key of the set. When a token names a key that is
/// not in the set, the file is read again (at most every ``JWTConfiguration/reloadInterval``), so keys
/// can be rotated without a restart.
public actor JWTVerifier {
    private static let algorithms: [String: JWK.KeyType] = ["RS256": .rsa, "ES256": .ecdsa]

    private let configuration: JWTConfiguration
    private let clock: any GridClock
    private var keys: JWTKeyCollection
    private var keyTypes: [String: JWK.KeyType]
    private var loadedAt: Date

    /// Reads the key set.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` if the file cannot be read, is not a key
    ///   set, or holds a key without `kid`.
    public init(configuration: JWTConfiguration, clock: any GridClock = SystemClock()) async throws {
        self.configuration = configuration
        self.clock = clock
        (keys, keyTypes) = try await Self.load(configuration.jwksPath)
        loadedAt = clock.now
    }

    /// The number of keys in the set now.
    public var keyCount: Int { keyTypes.count }

    /// Verifies a token (signature, `exp`, `nbf`, `iss`, `aud`) and returns its tenant claim.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unauthorized`` saying what is wrong with the token, never
    ///   the token itself.
    public func tenant(forToken token: String) async throws -> String {
        let header = try Self.header(of: token)
        guard let alg = header.alg, let keyType = Self.algorithms[alg] else {
            throw GridError(.unauthorized, "the token's algorithm \(header.alg ?? "(none)") is not accepted; use RS256 or ES256")
        }
        guard let kid = header.kid else { throw GridError(.unauthorized, "the token's header has no kid") }
        if keyTypes[kid] == nil, clock.now.timeIntervalSince(loadedAt) >= configuration.reloadInterval.timeInterval {
            try await reload()
        }
        guard let storedType = keyTypes[kid] else { throw GridError(.unauthorized, "the token is signed by an unknown key") }
        guard storedType == keyType else {
            throw GridError(.unauthorized, "the token's algorithm \(alg) does not match its key")
        }
        let claims: Claims
        do {
            claims = try await keys.verify(token, as: Claims.self)
        } catch {
            throw GridError(.unauthorized, "the token's signature or claims are not valid")
        }
        return try check(claims)
    }

    private func check(_ claims: Claims) throws -> String {
        let now = clock.now
        let leeway = configuration.leeway.timeInterval
        guard let expiry = claims.number("exp") else { throw GridError(.unauthorized, "the token has no exp claim") }
        guard now.timeIntervalSince1970 < expiry + leeway else { throw GridError(.unauthorized, "the token has expired") }
        if let notBefore = claims.number("nbf"), now.timeIntervalSince1970 + leeway < notBefore {
            throw GridError(.unauthorized, "the token is not valid yet")
        }
        if let issuer = configuration.issuer, claims.string("iss") != issuer {
            throw GridError(.unauthorized, "the token's issuer is not accepted")
        }
        if let audience = configuration.audience, !claims.strings("aud").contains(audience) {
            throw GridError(.unauthorized, "the token's audience is not accepted")
        }
        guard let tenant = claims.string(configuration.tenantClaim), !tenant.isEmpty else {
            throw GridError(.unauthorized, "the token has no \(configuration.tenantClaim) claim naming the tenant")
        }
        return tenant
    }

    private func reload() async throws {
        loadedAt = clock.now
        do {
            (keys, keyTypes) = try await Self.load(configuration.jwksPath)
        } catch {
            // Keep serving with the keys we have; a broken file must not lock every client out.
            throw GridError(.unauthorized, "the token is signed by an unknown key")
        }
    }

    private static func load(_ path: String) async throws -> (JWTKeyCollection, [String: JWK.KeyType]) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw GridError.invalidArgument("cannot read the key set \(path) (--jwks)")
        }
        let set: JWKS
        do {
            set = try JSONDecoder().decode(JWKS.self, from: data)
        } catch {
            throw GridError.invalidArgument("\(path) is not a JSON Web Key Set (--jwks): \(error)")
        }
        let keys = JWTKeyCollection()
        var types: [String: JWK.KeyType] = [:]
        for key in set.keys {
            guard let kid = key.keyIdentifier?.string else {
                throw GridError.invalidArgument("a key in \(path) has no kid (--jwks)")
            }
            do {
                try await keys.add(jwk: key)
            } catch {
                throw GridError.invalidArgument("key \(kid) in \(path) cannot be used: \(error)")
            }
            types[kid] = key.keyType
        }
        return (keys, types)
    }

    private struct Header: Decodable {
        var alg: String?
        var kid: String?
    }

    private static func header(of token: String) throws -> Header {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let data = base64URLDecode(parts[0]), let header = try? JSONDecoder().decode(Header.self, from: data) else {
            throw GridError(.unauthorized, "the token is not a JSON Web Token")
        }
        return header
    }

    private static func base64URLDecode(_ text: Substring) -> Data? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        return Data(base64Encoded: base64)
    }
}

/// Every claim of a token; the verifier checks them itself, with its own clock.
struct Claims: JWTPayload {
    var values: [String: JSONValue]

    init(from decoder: any Decoder) throws {
        values = try decoder.singleValueContainer().decode([String: JSONValue].self)
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(values)
    }

    func verify(using algorithm: some JWTAlgorithm) async throws {}

    func number(_ name: String) -> Double? { values[name]?.double }

    func string(_ name: String) -> String? {
        if case .string(let value) = values[name] { return value }
        return nil
    }

    func strings(_ name: String) -> [String] {
        switch values[name] {
        case .string(let value): [value]
        case .array(let items): items.compactMap { if case .string(let value) = $0 { value } else { nil } }
        default: []
        }
    }
}
