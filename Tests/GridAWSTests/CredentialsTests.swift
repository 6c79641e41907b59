import Foundation
import GridKernel
import Synchronization
import Testing

@testable import GridAWS

/// Each provider of the chain against files in a temporary directory or a local HTTP server on
/// 127.0.0.1 standing in for STS, the container endpoint and instance metadata.
struct CredentialsTests {
    let http = AWSHTTP()

    @Test func environmentWithSessionToken() async throws {
        let provider = EnvironmentCredentialsProvider(environment: [
            "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token",
        ])
        let credentials = try #require(try await provider.credentials())
        #expect(credentials == AWSCredentials(accessKeyId: "AKID", secretAccessKey: "secret", sessionToken: "token"))
        #expect(try await EnvironmentCredentialsProvider(environment: [:]).credentials() == nil)
        await #expect(throws: GridError.self) { try await EnvironmentCredentialsProvider(environment: ["AWS_ACCESS_KEY_ID": "AKID"]).credentials() }
    }

    @Test func descriptionHidesTheSecretAndTheToken() {
        let text = "\(AWSCredentials(accessKeyId: "AKID", secretAccessKey: "s3cr3t", sessionToken: "t0k3n"))"
        #expect(text.contains("AKID") && !text.contains("s3cr3t") && !text.contains("t0k3n"))
    }

    @Test func sharedFilesWithProfiles() async throws {
        let dir = try TemporaryDirectory()
        let credentials = dir.write(
            "credentials",
            """
            [default]
            aws_access_key_id = DEFAULTKEY
            aws_secret_access_key = defaultsecret

            [dev]
            aws_access_key_id=DEVKEY
            aws_secret_access_key=devsecret
            aws_session_token = devtoken
            """)
        let config = dir.write(
            "config",
            """
            [default]
            region = eu-west-1
            [profile dev]
            aws_access_key_id = OVERRIDDEN
            [profile ops]
            aws_access_key_id = OPSKEY
            aws_secret_access_key = opssecret
            """)
        let base = ["AWS_SHARED_CREDENTIALS_FILE": credentials, "AWS_CONFIG_FILE": config, "HOME": dir.path]
        let byDefault = try #require(try await ProfileCredentialsProvider(environment: base).credentials())
        #expect(byDefault.accessKeyId == "DEFAULTKEY" && byDefault.secretAccessKey == "defaultsecret" && byDefault.sessionToken == nil)
        var environment = base
        environment["AWS_PROFILE"] = "dev"
        let dev = try #require(try await ProfileCredentialsProvider(environment: environment).credentials())
        #expect(dev == AWSCredentials(accessKeyId: "DEVKEY", secretAccessKey: "devsecret", sessionToken: "devtoken"), "the credentials file wins")
        environment["AWS_PROFILE"] = "ops"
        let ops = try #require(try await ProfileCredentialsProvider(environment: environment).credentials())
        #expect(ops.accessKeyId == "OPSKEY", "a profile of the config file only")
        environment["AWS_PROFILE"] = "missing"
        await #expect(throws: GridError.self) { try await ProfileCredentialsProvider(environment: environment).credentials() }
        let none = ["AWS_SHARED_CREDENTIALS_FILE": dir.path + "/none", "AWS_CONFIG_FILE": dir.path + "/none", "HOME": dir.path]
        #expect(try await ProfileCredentialsProvider(environment: none).credentials() == nil)
    }

    @Test func webIdentityThroughSTS() async throws {
        let dir = try TemporaryDirectory()
        let tokenFile = dir.write("token", "first-token\n")
        let server = try await LocalHTTPServer.start { request in
            let form = Self.form(request.body)
            guard request.method == "POST", form["Action"] == "AssumeRoleWithWebIdentity", form["RoleArn"] == "arn:aws:iam::123456789012:role/grid"
            else { return .init(400, "<ErrorResponse><Error><Code>InvalidAction</Code><Message>bad</Message></Error></ErrorResponse>") }
            let token = form["WebIdentityToken"] ?? ""
            return .init(
                200,
                """
                <AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>
                <AccessKeyId>ASIA-\(token)</AccessKeyId><SecretAccessKey>secret&amp;1</SecretAccessKey>
                <SessionToken>session-\(token)</SessionToken><Expiration>2030-01-02T03:04:05Z</Expiration>
                </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>
                """)
        }
        defer { Task { try await server.stop() } }
        let environment = [
            "AWS_WEB_IDENTITY_TOKEN_FILE": tokenFile, "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/grid", "AWS_ROLE_SESSION_NAME": "pod-1",
            "AWS_ENDPOINT_URL_STS": server.base,
        ]
        let provider = WebIdentityCredentialsProvider(environment: environment, http: http)
        let first = try #require(try await provider.credentials())
        #expect(first.accessKeyId == "ASIA-first-token" && first.secretAccessKey == "secret&1" && first.sessionToken == "session-first-token")
        #expect(first.expiration == Date(timeIntervalSince1970: 1_893_553_445))
        #expect(Self.form(server.requests[0].body)["RoleSessionName"] == "pod-1")
        _ = dir.write("token", "rotated-token")
        let second = try #require(try await provider.credentials())
        #expect(second.accessKeyId == "ASIA-rotated-token", "the token file is read again at each refresh")
        var noRole = environment
        noRole["AWS_ROLE_ARN"] = nil
        await #expect(throws: GridError.self) { try await WebIdentityCredentialsProvider(environment: noRole, http: http).credentials() }
        var wrongRole = environment
        wrongRole["AWS_ROLE_ARN"] = "arn:aws:iam::1:role/other"
        await #expect(throws: GridError.self) { try await WebIdentityCredentialsProvider(environment: wrongRole, http: http).credentials() }
    }

    @Test func containerCredentialsFullAndRelativeURIWithTokenFile() async throws {
        let dir = try TemporaryDirectory()
        let tokenFile = dir.write("auth", "pod-identity-token")
        let server = try await LocalHTTPServer.start { request in
            guard request.headers["authorization"] == "pod-identity-token" else { return .init(401, #"{"message":"no token"}"#) }
            guard request.uri == "/v1/credentials" || request.uri == "/v2/credentials/abc" else { return .init(404, "{}") }
            return .init(
                200,
                #"{"AccessKeyId":"ASIACONTAINER","SecretAccessKey":"csecret","Token":"ctoken","Expiration":"2030-01-02T03:04:05.000Z"}"#)
        }
        defer { Task { try await server.stop() } }
        let full = ContainerCredentialsProvider(
            environment: ["AWS_CONTAINER_CREDENTIALS_FULL_URI": server.base + "/v1/credentials", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": tokenFile],
            http: http)
        let credentials = try #require(try await full.credentials())
        #expect(credentials == AWSCredentials(accessKeyId: "ASIACONTAINER", secretAccessKey: "csecret", sessionToken: "ctoken", expiration: Date(timeIntervalSince1970: 1_893_553_445)))
        let relative = ContainerCredentialsProvider(
            environment: ["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc", "AWS_CONTAINER_AUTHORIZATION_TOKEN": "pod-identity-token"],
            http: http, relativeBase: server.base)
        #expect(try await relative.credentials()?.accessKeyId == "ASIACONTAINER")
        let unauthorized = ContainerCredentialsProvider(environment: ["AWS_CONTAINER_CREDENTIALS_FULL_URI": server.base + "/v1/credentials"], http: http)
        await #expect(throws: GridError.self) { try await unauthorized.credentials() }
        #expect(try await ContainerCredentialsProvider(environment: [:], http: http).credentials() == nil)
    }

    @Test func instanceMetadataV2() async throws {
        let server = try await LocalHTTPServer.start { request in
            if request.method == "PUT" && request.uri == "/latest/api/token" {
                return request.headers["x-aws-ec2-metadata-token-ttl-seconds"] == "21600" ? .init(200, "imds-token") : .init(400, "")
            }
            guard request.headers["x-aws-ec2-metadata-token"] == "imds-token" else { return .init(401, "") }
            switch request.uri {
            case "/latest/meta-data/iam/security-credentials/": return .init(200, "grid-node-role\n")
            case "/latest/meta-data/iam/security-credentials/grid-node-role":
                return .init(
                    200,
                    #"{"Code":"Success","AccessKeyId":"ASIAIMDS","SecretAccessKey":"isecret","Token":"itoken","Expiration":"2030-01-02T03:04:05Z"}"#)
            default: return .init(404, "")
            }
        }
        defer { Task { try await server.stop() } }
        let provider = InstanceMetadataCredentialsProvider(environment: ["AWS_EC2_METADATA_SERVICE_ENDPOINT": server.base], http: http)
        let credentials = try #require(try await provider.credentials())
        #expect(credentials.accessKeyId == "ASIAIMDS" && credentials.sessionToken == "itoken")
        #expect(server.requests.first?.method == "PUT", "IMDSv2 starts with a session token")
        let disabled = InstanceMetadataCredentialsProvider(
            environment: ["AWS_EC2_METADATA_SERVICE_ENDPOINT": server.base, "AWS_EC2_METADATA_DISABLED": "true"], http: http)
        #expect(try await disabled.credentials() == nil)
        let closed = try await LocalHTTPServer.start { _ in .init(200, "") }
        let closedBase = closed.base
        try await closed.stop()
        let unreachable = InstanceMetadataCredentialsProvider(environment: ["AWS_EC2_METADATA_SERVICE_ENDPOINT": closedBase], http: http)
        #expect(try await unreachable.credentials() == nil, "no metadata service means not on EC2")
    }

    @Test func chainTakesTheFirstConfiguredSourceAndRefreshesBeforeExpiry() async throws {
        let now = Mutex(Date(timeIntervalSince1970: 1_000_000))
        let source = CountingProvider { count in
            AWSCredentials(accessKeyId: "KEY\(count)", secretAccessKey: "s", sessionToken: "t", expiration: Date(timeIntervalSince1970: 1_000_000 + 3_600))
        }
        let chain = AWSCredentialsChain(
            [EnvironmentCredentialsProvider(environment: [:]), source, StaticCredentialsProvider(AWSCredentials(accessKeyId: "LATER", secretAccessKey: "x"))],
            refreshBefore: .seconds(300), now: { now.withLock { $0 } })
        #expect(try await chain.credentials().accessKeyId == "KEY1")
        now.withLock { $0 = $0.addingTimeInterval(3_000) }
        #expect(try await chain.credentials().accessKeyId == "KEY1", "cached while more than five minutes remain")
        #expect(source.calls == 1)
        now.withLock { $0 = $0.addingTimeInterval(301) }
        #expect(try await chain.credentials().accessKeyId == "KEY2", "fetched again within five minutes of expiry")
        #expect(await chain.source == "counting")
    }

    @Test func chainWithoutAnySourceSaysWhatToSet() async throws {
        let chain = AWSCredentialsChain([EnvironmentCredentialsProvider(environment: [:])])
        do {
            _ = try await chain.credentials()
            Issue.record("an empty chain must throw")
        } catch let error as GridError {
            #expect(error.code == .unauthorized)
            #expect(error.message.contains("AWS_ACCESS_KEY_ID"))
        }
    }

    static func form(_ body: String) -> [String: String] {
        var values: [String: String] = [:]
        for pair in body.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map { String($0).removingPercentEncoding ?? String($0) }
            values[parts[0]] = parts.count > 1 ? parts[1] : ""
        }
        return values
    }
}

/// A provider that counts its calls.
final class CountingProvider: AWSCredentialsProvider {
    private let count = Mutex(0)
    private let make: @Sendable (Int) -> AWSCredentials
    var name: String { "counting" }

    init(_ make: @escaping @Sendable (Int) -> AWSCredentials) { self.make = make }

    var calls: Int { count.withLock { $0 } }

    func credentials() async throws -> AWSCredentials? {
        make(count.withLock { $0 += 1; return $0 })
    }
}

/// A temporary directory removed when the value is released.
final class TemporaryDirectory {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "htc-aws-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// Writes a file and returns its path.
    @discardableResult
    func write(_ name: String, _ text: String) -> String {
        let file = "\(path)/\(name)"
        _ = FileManager.default.createFile(atPath: file, contents: Data(text.utf8))
        return file
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}
