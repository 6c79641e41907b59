import Foundation
import GridKernel

/// An AWS access key pair, with the session token and expiry of temporary credentials.
///
/// The secret and the token are never printed: ``description`` shows the key id only.
public struct AWSCredentials: Sendable, Hashable, CustomStringConvertible {
    /// The access key id (`AKIA…`, `ASIA…`).
    public var accessKeyId: String
    /// The secret access key.
    public var secretAccessKey: String
    /// The session token of temporary credentials (STS, container, instance metadata).
    public var sessionToken: String?
    /// When temporary credentials stop working; `nil` for long-term keys.
    public var expiration: Date?

    /// Creates credentials.
    public init(accessKeyId: String, secretAccessKey: String, sessionToken: String? = nil, expiration: Date? = nil) {
        self.accessKeyId = accessKeyId
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
        self.expiration = expiration
    }

    public var description: String {
        "AWSCredentials(\(accessKeyId), secret ***\(sessionToken == nil ? "" : ", token ***")\(expiration.map { ", expires \($0)" } ?? ""))"
    }
}

/// A source of credentials in the standard chain.
///
/// Implementing: return `nil` when the source is not configured at all (its variables or files are
/// absent), so the chain moves on; throw when it is configured but fails, so the chain stops with a
/// clear error instead of silently using other credentials.
public protocol AWSCredentialsProvider: Sendable {
    /// A short name for messages (`environment`, `profile default`, …).
    var name: String { get }

    /// Fetches credentials.
    ///
    /// - Returns: `nil` when this source is not configured.
    /// - Throws: ``GridError/Code/unauthorized`` or ``GridError/Code/unavailable`` when it is configured but fails.
    func credentials() async throws -> AWSCredentials?
}

/// Fixed credentials, for tests and explicit configuration.
public struct StaticCredentialsProvider: AWSCredentialsProvider {
    /// The credentials handed out.
    public var value: AWSCredentials
    public var name: String { "static" }

    /// Wraps fixed credentials.
    public init(_ value: AWSCredentials) { self.value = value }

    public func credentials() async throws -> AWSCredentials? { value }
}

/// The standard credentials chain, cached and refreshed before expiry.
///
/// Order, as the AWS SDKs use it: environment variables, the shared credentials and config files
/// (`AWS_PROFILE`), web identity (IRSA on EKS), container credentials (EKS Pod Identity, ECS) and
/// instance metadata (IMDSv2). The first configured source wins and is kept; its credentials are
/// fetched again `refreshBefore` ahead of their expiry.
public actor AWSCredentialsChain {
    private let providers: [any AWSCredentialsProvider]
    private let refreshBefore: TimeInterval
    private let now: @Sendable () -> Date
    private var chosen: (any AWSCredentialsProvider)?
    private var cached: AWSCredentials?

    /// Creates a chain over explicit providers.
    ///
    /// - Parameters:
    ///   - refreshBefore: how long before expiry credentials are fetched again (default 5 minutes).
    ///   - now: the wall clock; tests inject one.
    public init(
        _ providers: [any AWSCredentialsProvider], refreshBefore: Duration = .seconds(300),
        now: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.providers = providers
        self.refreshBefore = refreshBefore.timeInterval
        self.now = now
    }

    /// The standard chain, reading the process environment.
    public static func standard(
        environment: [String: String] = ProcessInfo.processInfo.environment, http: AWSHTTP
    ) -> AWSCredentialsChain {
        AWSCredentialsChain([
            EnvironmentCredentialsProvider(environment: environment),
            ProfileCredentialsProvider(environment: environment),
            WebIdentityCredentialsProvider(environment: environment, http: http),
            ContainerCredentialsProvider(environment: environment, http: http),
            InstanceMetadataCredentialsProvider(environment: environment, http: http),
        ])
    }

    /// Current credentials, fetched again when they are about to expire.
    ///
    /// - Throws: ``GridError/Code/unauthorized`` when no source is configured, or the error of the
    ///   configured source that failed.
    public func credentials() async throws -> AWSCredentials {
        if let cached, !isStale(cached) { return cached }
        if let chosen {
            if let fresh = try await chosen.credentials() {
                cached = fresh
                return fresh
            }
        }
        for provider in providers {
            if let found = try await provider.credentials() {
                chosen = provider
                cached = found
                return found
            }
        }
        throw GridError(
            .unauthorized,
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or run where container or instance credentials are available",
            backend: "aws"
        )
    }

    /// The source in use, once one was found.
    public var source: String? { chosen?.name }

    private func isStale(_ credentials: AWSCredentials) -> Bool {
        guard let expiration = credentials.expiration else { return false }
        return expiration.timeIntervalSince(now()) <= refreshBefore
    }
}
