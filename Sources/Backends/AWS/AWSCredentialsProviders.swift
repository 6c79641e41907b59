import Foundation
import GridKernel

/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, for temporary keys, `AWS_SESSION_TOKEN`.
public struct EnvironmentCredentialsProvider: AWSCredentialsProvider {
    let environment: [String: String]
    public var name: String { "environment" }

    /// Reads the given environment.
    public init(environment: [String: String]) { self.environment = environment }

    public func credentials() async throws -> AWSCredentials? {
        guard let id = environment["AWS_ACCESS_KEY_ID"], !id.isEmpty else { return nil }
        guard let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty else {
            throw GridError(.unauthorized, "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; set both", backend: "aws")
        }
        let token = environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        return AWSCredentials(accessKeyId: id, secretAccessKey: secret, sessionToken: token)
    }
}

/// The shared files: `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`) and `~/.aws/config`
/// (`AWS_CONFIG_FILE`), profile `AWS_PROFILE` or `default`. Static keys only; the credentials file
/// wins over the config file for the same profile.
public struct ProfileCredentialsProvider: AWSCredentialsProvider {
    let environment: [String: String]
    /// The profile read.
    public var profile: String { environment["AWS_PROFILE"].flatMap { $0.isEmpty ? nil : $0 } ?? "default" }
    public var name: String { "profile \(profile)" }

    /// Reads the files the given environment names.
    public init(environment: [String: String]) { self.environment = environment }

    public func credentials() async throws -> AWSCredentials? {
        let home = environment["HOME"] ?? NSHomeDirectory()
        let credentialsFile = environment["AWS_SHARED_CREDENTIALS_FILE"] ?? "\(home)/.aws/credentials"
        let configFile = environment["AWS_CONFIG_FILE"] ?? "\(home)/.aws/config"
        let fromCredentials = Self.section(profile, in: credentialsFile, configStyle: false)
        let fromConfig = Self.section(profile, in: configFile, configStyle: true)
        guard fromCredentials != nil || fromConfig != nil else {
            if environment["AWS_PROFILE"] != nil {
                throw GridError(.unauthorized, "AWS_PROFILE is '\(profile)' but neither \(credentialsFile) nor \(configFile) has that profile", backend: "aws")
            }
            return nil
        }
        let values = (fromConfig ?? [:]).merging(fromCredentials ?? [:]) { $1 }
        guard let id = values["aws_access_key_id"], let secret = values["aws_secret_access_key"] else {
            if environment["AWS_PROFILE"] != nil {
                throw GridError(
                    .unauthorized, "profile '\(profile)' has no aws_access_key_id and aws_secret_access_key (only static keys are read from profiles)",
                    backend: "aws")
            }
            return nil
        }
        return AWSCredentials(accessKeyId: id, secretAccessKey: secret, sessionToken: values["aws_session_token"])
    }

    /// The keys of `[name]` (credentials file) or `[profile name]` / `[default]` (config file).
    static func section(_ name: String, in path: String, configStyle: Bool) -> [String: String]? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let wanted: Set<String> = configStyle && name != "default" ? ["profile \(name)"] : [name]
        var current: String?
        var values: [String: String]?
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("["), line.hasSuffix("]") {
                current = line.dropFirst().dropLast().split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
                if let current, wanted.contains(current), values == nil { values = [:] }
                continue
            }
            guard let current, wanted.contains(current), let equals = line.firstIndex(of: "=") else { continue }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces).lowercased()
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            values?[key] = value
        }
        return values
    }
}

/// Web identity (IRSA on EKS): the token in `AWS_WEB_IDENTITY_TOKEN_FILE` exchanged for temporary
/// credentials of `AWS_ROLE_ARN` through STS AssumeRoleWithWebIdentity (an unsigned call). The file
/// is read again at each refresh, because the kubelet rotates it.
public struct WebIdentityCredentialsProvider: AWSCredentialsProvider {
    let environment: [String: String]
    let http: AWSHTTP
    public var name: String { "web identity" }

    /// Reads the given environment; STS is reached at `AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL` or
    /// the regional STS endpoint.
    public init(environment: [String: String], http: AWSHTTP) {
        self.environment = environment
        self.http = http
    }

    public func credentials() async throws -> AWSCredentials? {
        guard let tokenFile = environment["AWS_WEB_IDENTITY_TOKEN_FILE"], !tokenFile.isEmpty else { return nil }
        guard let role = environment["AWS_ROLE_ARN"], !role.isEmpty else {
            throw GridError(.unauthorized, "AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not", backend: "sts")
        }
        let token: String
        do {
            token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            throw GridError(.unauthorized, "cannot read the web identity token file \(tokenFile): \(error)", backend: "sts")
        }
        let region = environment["AWS_REGION"] ?? environment["AWS_DEFAULT_REGION"]
        let endpoint = try AWSEndpoint.resolve(
            option: nil, serviceVariable: "STS", host: region.map { "sts.\($0).amazonaws.com" } ?? "sts.amazonaws.com", environment: environment)
        let session = environment["AWS_ROLE_SESSION_NAME"].flatMap { $0.isEmpty ? nil : $0 } ?? "htc-grid-\(Int(Date().timeIntervalSince1970))"
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"), ("Version", "2011-06-15"), ("RoleArn", role), ("RoleSessionName", session),
            ("WebIdentityToken", token),
        ]
        .map { "\($0.0)=\(SigV4Signer.encode($0.1, keepSlash: false))" }.joined(separator: "&")
        let response = try await CredentialsEndpoint.fetch(
            http, AWSHTTP.Request(
                method: "POST", url: endpoint.url(path: "/", query: ""),
                headers: [("content-type", "application/x-www-form-urlencoded; charset=utf-8"), ("accept", "application/xml")],
                body: Array(form.utf8)), what: "STS AssumeRoleWithWebIdentity for \(role)")
        let xml = response.text
        guard let id = XMLText.value("AccessKeyId", in: xml), let secret = XMLText.value("SecretAccessKey", in: xml) else {
            throw GridError(.unauthorized, "STS AssumeRoleWithWebIdentity for \(role) answered without credentials", backend: "sts")
        }
        return AWSCredentials(
            accessKeyId: id, secretAccessKey: secret, sessionToken: XMLText.value("SessionToken", in: xml),
            expiration: XMLText.value("Expiration", in: xml).flatMap(CredentialsEndpoint.parseDate))
    }
}

/// Container credentials (EKS Pod Identity, ECS): `AWS_CONTAINER_CREDENTIALS_FULL_URI`, or
/// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` under the ECS agent's address, with the authorization
/// token from `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (read at each refresh) or
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
public struct ContainerCredentialsProvider: AWSCredentialsProvider {
    let environment: [String: String]
    let http: AWSHTTP
    let relativeBase: String
    public var name: String { "container" }

    /// Reads the given environment.
    ///
    /// - Parameter relativeBase: where relative URIs point (the ECS agent; tests use a local server).
    public init(environment: [String: String], http: AWSHTTP, relativeBase: String = "http://169.254.170.2") {
        self.environment = environment
        self.http = http
        self.relativeBase = relativeBase
    }

    public func credentials() async throws -> AWSCredentials? {
        let url: String
        if let relative = environment["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"], !relative.isEmpty {
            url = relativeBase + relative
        } else if let full = environment["AWS_CONTAINER_CREDENTIALS_FULL_URI"], !full.isEmpty {
            url = full
        } else {
            return nil
        }
        var headers: [(String, String)] = [("accept", "application/json")]
        if let file = environment["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"], !file.isEmpty {
            do {
                headers.append(("authorization", try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
            } catch {
                throw GridError(.unauthorized, "cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE \(file): \(error)", backend: "aws")
            }
        } else if let token = environment["AWS_CONTAINER_AUTHORIZATION_TOKEN"], !token.isEmpty {
            headers.append(("authorization", token))
        }
        let response = try await CredentialsEndpoint.fetch(http, AWSHTTP.Request(method: "GET", url: url, headers: headers, body: []), what: "container credentials at \(url)")
        return try CredentialsEndpoint.parseJSON(response.body, what: "container credentials at \(url)")
    }
}

/// EC2 instance metadata, IMDSv2: a session token from `PUT /latest/api/token`, then the role's
/// credentials. `AWS_EC2_METADATA_DISABLED=true` turns it off; `AWS_EC2_METADATA_SERVICE_ENDPOINT`
/// moves it. Unreachable metadata means "not on EC2": the chain ends without it.
public struct InstanceMetadataCredentialsProvider: AWSCredentialsProvider {
    let environment: [String: String]
    let http: AWSHTTP
    public var name: String { "instance metadata" }

    /// Reads the given environment.
    public init(environment: [String: String], http: AWSHTTP) {
        self.environment = environment
        self.http = http
    }

    public func credentials() async throws -> AWSCredentials? {
        if environment["AWS_EC2_METADATA_DISABLED"]?.lowercased() == "true" { return nil }
        let base = (environment["AWS_EC2_METADATA_SERVICE_ENDPOINT"].flatMap { $0.isEmpty ? nil : $0 } ?? "http://169.254.169.254")
            .trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        let tokenResponse: AWSHTTP.Response
        do {
            tokenResponse = try await http.send(
                AWSHTTP.Request(method: "PUT", url: "\(base)/latest/api/token", headers: [("x-aws-ec2-metadata-token-ttl-seconds", "21600")], body: []),
                timeout: .seconds(1))
        } catch {
            return nil
        }
        guard tokenResponse.status == 200 else { return nil }
        let token = tokenResponse.text
        let path = "\(base)/latest/meta-data/iam/security-credentials/"
        let roles = try await CredentialsEndpoint.fetch(
            http, AWSHTTP.Request(method: "GET", url: path, headers: [("x-aws-ec2-metadata-token", token)], body: []), what: "instance metadata role")
        guard let role = roles.text.split(whereSeparator: \.isNewline).first.map(String.init), !role.isEmpty else {
            throw GridError(.unauthorized, "instance metadata lists no IAM role: attach an instance profile", backend: "aws")
        }
        let response = try await CredentialsEndpoint.fetch(
            http, AWSHTTP.Request(method: "GET", url: path + role, headers: [("x-aws-ec2-metadata-token", token)], body: []),
            what: "instance metadata credentials of \(role)")
        return try CredentialsEndpoint.parseJSON(response.body, what: "instance metadata credentials of \(role)")
    }
}

/// What the HTTP credentials sources share.
enum CredentialsEndpoint {
    static func fetch(_ http: AWSHTTP, _ request: AWSHTTP.Request, what: String) async throws -> AWSHTTP.Response {
        let response: AWSHTTP.Response
        do {
            response = try await http.send(request, timeout: .seconds(5))
        } catch {
            throw GridError.unavailable("\(what) could not be fetched", backend: "aws", underlying: error)
        }
        guard response.status == 200 else {
            let detail = XMLText.value("Message", in: response.text) ?? String(response.text.prefix(200))
            throw GridError(.unauthorized, "\(what) failed with HTTP \(response.status): \(detail)", backend: "aws")
        }
        return response
    }

    /// `{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}`, as the container endpoint and IMDS answer.
    static func parseJSON(_ body: [UInt8], what: String) throws -> AWSCredentials {
        let json = try JSON.parse(body, context: what)
        guard let id = json["AccessKeyId"]?.string, let secret = json["SecretAccessKey"]?.string else {
            throw GridError(.unauthorized, "\(what) answered without AccessKeyId and SecretAccessKey", backend: "aws")
        }
        return AWSCredentials(
            accessKeyId: id, secretAccessKey: secret, sessionToken: json["Token"]?.string,
            expiration: json["Expiration"]?.string.flatMap(parseDate))
    }

    /// ISO 8601 with or without fractional seconds.
    static func parseDate(_ text: String) -> Date? {
        if let date = try? Date(text, strategy: .iso8601) { return date }
        return try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
}
