import Foundation
import Testing

@testable import GridAWS

/// The signer against the committed fixtures: the AWS SigV4 test suite's published signatures and
/// requests shaped like the grid's own signed by botocore (scripts/sigv4-fixtures.py writes them).
struct SigV4SignerTests {
    struct Fixture: Decodable {
        var name: String
        var service: String
        var region: String
        var method: String
        var host: String
        var path: String
        var query: [[String]]
        var headers: [[String]]
        var body: String
        var accessKeyId: String
        var secretAccessKey: String
        var sessionToken: String?
        var date: String
        var authorization: String
        var canonicalRequest: String?
    }

    struct File: Decodable {
        var cases: [Fixture]
    }

    static let fixtures: [Fixture] = {
        guard let url = Bundle.module.url(forResource: "sigv4", withExtension: "json", subdirectory: "Fixtures"),
            let data = try? Data(contentsOf: url), let file = try? JSONDecoder().decode(File.self, from: data)
        else { return [] }
        return file.cases
    }()

    @Test func fixturesAreLoaded() {
        #expect(Self.fixtures.count >= 15, "Fixtures/sigv4.json holds the suite and botocore cases")
        #expect(Self.fixtures.contains { $0.name.hasPrefix("suite/") } && Self.fixtures.contains { $0.name.hasPrefix("botocore/") })
    }

    @Test(arguments: fixtures.map(\.name))
    func signsLikeTheReference(_ name: String) throws {
        let fixture = try #require(Self.fixtures.first { $0.name == name })
        let signer = SigV4Signer(region: fixture.region, service: fixture.service)
        let request = SigV4Signer.Request(
            method: fixture.method, path: fixture.path, query: fixture.query.map { ($0[0], $0[1]) },
            headers: [("Host", fixture.host)] + fixture.headers.map { ($0[0], $0[1]) },
            payloadHash: SigV4Signer.sha256Hex(Array(fixture.body.utf8)))
        let credentials = AWSCredentials(
            accessKeyId: fixture.accessKeyId, secretAccessKey: fixture.secretAccessKey, sessionToken: fixture.sessionToken)
        let signed = signer.sign(request, credentials: credentials, date: try #require(Self.parse(fixture.date)))
        let authorization = signed.headers.first { $0.0 == "authorization" }?.1
        #expect(authorization == fixture.authorization)
        if let canonical = fixture.canonicalRequest {
            let withDate = SigV4Signer.Request(
                method: signed.method, path: signed.path, query: signed.query, headers: signed.headers.filter { $0.0 != "authorization" },
                payloadHash: signed.payloadHash)
            #expect(signer.canonicalRequest(withDate).text == canonical)
        }
        if let token = fixture.sessionToken {
            #expect(signed.headers.contains { $0.0 == "x-amz-security-token" && $0.1 == token })
        }
    }

    @Test func aWrongSecretChangesTheSignature() throws {
        let fixture = try #require(Self.fixtures.first { $0.name == "suite/get-vanilla" })
        let signer = SigV4Signer(region: fixture.region, service: fixture.service)
        let request = SigV4Signer.Request(method: "GET", path: "/", headers: [("Host", fixture.host)], payloadHash: SigV4Signer.sha256Hex([UInt8]()))
        let wrong = AWSCredentials(accessKeyId: fixture.accessKeyId, secretAccessKey: fixture.secretAccessKey + "x")
        let signed = signer.sign(request, credentials: wrong, date: try #require(Self.parse(fixture.date)))
        #expect(signed.headers.first { $0.0 == "authorization" }?.1 != fixture.authorization)
    }

    @Test func encodesTheUnreservedSetOnly() {
        #expect(SigV4Signer.encode("a b/c~d_e.f-g+h=ü", keepSlash: true) == "a%20b/c~d_e.f-g%2Bh%3D%C3%BC")
        #expect(SigV4Signer.encode("a/b", keepSlash: false) == "a%2Fb")
    }

    static func parse(_ stamp: String) -> Date? {
        var parts = DateComponents()
        parts.timeZone = TimeZone(identifier: "UTC")
        let digits = Array(stamp.filter(\.isNumber))
        guard digits.count == 14 else { return nil }
        func number(_ range: Range<Int>) -> Int { Int(String(digits[range]))! }
        parts.year = number(0..<4)
        parts.month = number(4..<6)
        parts.day = number(6..<8)
        parts.hour = number(8..<10)
        parts.minute = number(10..<12)
        parts.second = number(12..<14)
        return Calendar(identifier: .gregorian).date(from: parts)
    }
}
