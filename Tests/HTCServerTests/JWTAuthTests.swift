import Crypto
import CryptoExtras
import Foundation
import GridKernel
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

/// Signs tokens the way an identity provider does, with swift-crypto directly (not with the library the
/// server verifies with), and writes key sets to a temporary file.
struct TokenIssuer {
    enum Key {
        case ec(P256.Signing.PrivateKey)
        case rsa(_RSA.Signing.PrivateKey)
    }

    let kid: String
    let key: Key

    static func es256(_ kid: String) -> TokenIssuer { TokenIssuer(kid: kid, key: .ec(P256.Signing.PrivateKey())) }
    static func rs256(_ kid: String) throws -> TokenIssuer { TokenIssuer(kid: kid, key: .rsa(try _RSA.Signing.PrivateKey(keySize: .bits2048))) }

    var jwk: [String: String] {
        get throws {
            switch key {
            case .ec(let key):
                let raw = key.publicKey.rawRepresentation
                return ["kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                        "x": Self.base64URL(raw.prefix(32)), "y": Self.base64URL(raw.suffix(32))]
            case .rsa(let key):
                let primitives = try key.publicKey.getKeyPrimitives()
                return ["kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
                        "n": Self.base64URL(primitives.modulus), "e": Self.base64URL(primitives.publicExponent)]
            }
        }
    }

    func token(_ claims: [String: Any], alg: String? = nil, kid: String? = nil) throws -> String {
        let algorithm: String
        switch key {
        case .ec: algorithm = "ES256"
        case .rsa: algorithm = "RS256"
        }
        let header = try JSONSerialization.data(withJSONObject: ["alg": alg ?? algorithm, "typ": "JWT", "kid": kid ?? self.kid])
        let payload = try JSONSerialization.data(withJSONObject: claims)
        let input = Self.base64URL(header) + "." + Self.base64URL(payload)
        let signature: Data
        switch key {
        case .ec(let key): signature = try key.signature(for: Data(input.utf8)).rawRepresentation
        case .rsa(let key): signature = try key.signature(for: Data(input.utf8), padding: .insecurePKCS1v1_5).rawRepresentation
        }
        return input + "." + Self.base64URL(signature)
    }

    static func base64URL(_ data: some DataProtocol) -> String {
        Data(data).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func writeKeySet(_ issuers: [TokenIssuer], to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: ["keys": try issuers.map { try $0.jwk }])
        try data.write(to: URL(fileURLWithPath: path))
    }
}

@Suite final class JWTAuthTests: Sendable {
    static let now = 1_700_000_000.0
    let directory: URL
    let path: String
    let clock = ManualClock(start: Date(timeIntervalSince1970: JWTAuthTests.now))

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-jwt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        path = directory.appendingPathComponent("jwks.json").path
    }

    deinit {
        try? FileManager.default.removeItem(at: directory)
    }

    func verifier(_ issuers: [TokenIssuer], issuer: String? = "https://idp.example", audience: String? = "grid-client") async throws -> JWTVerifier {
        try TokenIssuer.writeKeySet(issuers, to: path)
        return try await JWTVerifier(configuration: JWTConfiguration(jwksPath: path, issuer: issuer, audience: audience), clock: clock)
    }

    func claims(sub: String = "acme", exp: Double = JWTAuthTests.now + 3600, extra: [String: Any] = [:]) -> [String: Any] {
        var claims: [String: Any] = ["sub": sub, "exp": exp, "iss": "https://idp.example", "aud": "grid-client", "token_use": "id"]
        claims.merge(extra) { $1 }
        return claims
    }

    @Test func validES256AndRS256TokensNameTheirTenant() async throws {
        let ec = TokenIssuer.es256("ec-1")
        let rsa = try TokenIssuer.rs256("rsa-1")
        let verifier = try await verifier([ec, rsa])
        #expect(try await verifier.tenant(forToken: ec.token(claims(sub: "acme"))) == "acme")
        #expect(try await verifier.tenant(forToken: rsa.token(claims(sub: "globex"))) == "globex")
        #expect(try await verifier.tenant(forToken: ec.token(claims(extra: ["aud": ["other", "grid-client"]]))) == "acme")
    }

    @Test func badTokensAreRefused() async throws {
        let ec = TokenIssuer.es256("ec-1")
        let stranger = TokenIssuer.es256("ec-1")  // same kid, another key
        let verifier = try await verifier([ec])
        let refused: [(String, String)] = [
            ("expired", try ec.token(claims(exp: Self.now - 61))),
            ("no exp", try ec.token(claims().filter { $0.key != "exp" })),
            ("not yet valid", try ec.token(claims(extra: ["nbf": Self.now + 120]))),
            ("wrong issuer", try ec.token(claims(extra: ["iss": "https://evil.example"]))),
            ("wrong audience", try ec.token(claims(extra: ["aud": "someone-else"]))),
            ("no tenant", try ec.token(claims().filter { $0.key != "sub" })),
            ("forged signature", try stranger.token(claims())),
            ("unknown key", try ec.token(claims(), kid: "ec-2")),
            ("alg none", try ec.token(claims(), alg: "none")),
            ("alg HS256", try ec.token(claims(), alg: "HS256")),
            ("alg RS256 on an EC key", try ec.token(claims(), alg: "RS256")),
            ("garbage", "not.a.token"),
            ("two parts", "abc.def"),
        ]
        for (what, token) in refused {
            do {
                _ = try await verifier.tenant(forToken: token)
                Issue.record("\(what): accepted")
            } catch let error as GridError {
                #expect(error.code == .unauthorized, "\(what)")
            }
        }
        // Within the leeway an expired token still passes: clocks drift.
        #expect(try await verifier.tenant(forToken: ec.token(claims(exp: Self.now - 30))) == "acme")
    }

    @Test func rotatedKeysArePickedUpFromTheFile() async throws {
        let old = TokenIssuer.es256("2026-01")
        let new = TokenIssuer.es256("2026-02")
        let verifier = try await verifier([old])
        let token = try new.token(claims())
        await #expect(throws: GridError.self) { try await verifier.tenant(forToken: token) }

        try TokenIssuer.writeKeySet([old, new], to: path)
        // Reloads are rate-limited: within the interval the file is not read again.
        await #expect(throws: GridError.self) { try await verifier.tenant(forToken: token) }
        clock.advance(by: .seconds(10))
        #expect(try await verifier.tenant(forToken: token) == "acme")
        #expect(await verifier.keyCount == 2)
        #expect(try await verifier.tenant(forToken: old.token(claims())) == "acme")
    }

    @Test func theServerAcceptsBearerAndBareTokensAndSeparatesTenants() async throws {
        let ec = TokenIssuer.es256("ec-1")
        let verifier = try await verifier([ec])
        let grid = TestGrid()
        try await grid.application(auth: .jwt(verifier)).test(.router) { client in
            let acme = try ec.token(claims(sub: "acme"))
            let globex = try ec.token(claims(sub: "globex"))
            let created = try await client.execute(uri: "/v1/sessions", method: .post, headers: [.authorization: "Bearer \(acme)"])
            #expect(created.status == .created)
            let session = try created.decode(SessionJSON.self)
            #expect(session.tenant == "acme")
            // HTC-Grid's client sends the raw Cognito IdToken, without "Bearer".
            let bare = try await client.execute(uri: "/v1/sessions/\(session.id)", method: .get, headers: [.authorization: acme])
            #expect(bare.status == .ok)
            let other = try await client.execute(uri: "/v1/sessions/\(session.id)", method: .get, headers: [.authorization: "Bearer \(globex)"])
            #expect(other.status == .notFound)
            let missing = try await client.execute(uri: "/v1/sessions", method: .get)
            #expect(missing.status == .unauthorized)
            let expired = try ec.token(claims(exp: Self.now - 3600))
            let refused = try await client.execute(uri: "/v1/sessions", method: .get, headers: [.authorization: "Bearer \(expired)"])
            #expect(refused.status == .unauthorized)
            #expect(try refused.decode(ErrorJSON.self).error.message.contains("expired"))
        }
    }
}
