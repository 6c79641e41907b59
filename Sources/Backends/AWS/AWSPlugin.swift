import Foundation
import GridKernel

/// The `sqs://`, `dynamodb://` and `s3://` schemes: the task queue on SQS, the state store on
/// DynamoDB and the payload store on S3.
///
/// - `sqs://REGION/PREFIX?endpoint=URL&max_receive_count=N`
/// - `dynamodb://REGION/TABLE?endpoint=URL&task_shards=N&lease_shards=N`
/// - `s3://BUCKET/PREFIX?region=R&endpoint=URL&path_style=true|false&sse=aes256|kms&kms_key_id=ID&multipart_threshold=BYTES&max_payload_bytes=BYTES`
///
/// Endpoints come from the `endpoint` option, else `AWS_ENDPOINT_URL_<SERVICE>`, else
/// `AWS_ENDPOINT_URL`, else AWS. Credentials come from the standard chain (``AWSCredentialsChain``),
/// one per process, shared by the three services, as is the request meter `htc bench` reads.
public struct AWSPlugin: GridBackendPlugin {
    private let environment: [String: String]

    /// Creates the plugin, reading the process environment (or the given one, for tests).
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment
    }

    /// `sqs`, `dynamodb` and `s3`.
    public var schemes: [String] { ["sqs", "dynamodb", "s3"] }

    /// An ``SQSTaskQueue`` for `sqs://REGION/PREFIX`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a bad URL.
    public func makeQueue(_ url: BackendURL, context: BackendContext) async throws -> any TaskQueue {
        let (configuration, endpoint) = try AWSURLs.sqs(url, environment: environment)
        let client = try await client("sqs", region: configuration.region, endpoint: endpoint, context: context)
        return SQSTaskQueue(client: client, configuration: configuration, clock: context.clock)
    }

    /// A ``DynamoDBStateStore`` for `dynamodb://REGION/TABLE`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a bad URL.
    public func makeStateStore(_ url: BackendURL, context: BackendContext) async throws -> any StateStore {
        let (configuration, endpoint) = try AWSURLs.dynamoDB(url, environment: environment)
        let client = try await client("dynamodb", region: configuration.region, endpoint: endpoint, context: context)
        return DynamoDBStateStore(client: client, configuration: configuration)
    }

    /// An ``S3PayloadStore`` for `s3://BUCKET/PREFIX?region=…`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a bad URL.
    public func makePayloadStore(_ url: BackendURL, context: BackendContext) async throws -> any PayloadStore {
        let (configuration, endpoint) = try AWSURLs.s3(url, environment: environment)
        let client = try await client("s3", region: configuration.region, endpoint: endpoint, context: context)
        return S3PayloadStore(client: client, configuration: configuration)
    }

    /// The request meter shared by this process' AWS backends (for `htc bench`).
    public static func meter(_ resources: SharedResources) async throws -> AWSRequestMeter {
        try await resources.resource("aws:meter") { AWSRequestMeter() }
    }

    private func client(_ service: String, region: String, endpoint: AWSEndpoint, context: BackendContext) async throws -> AWSClient {
        let environment = environment
        let http = AWSHTTP()
        let credentials = try await context.resources.resource("aws:credentials") { AWSCredentialsChain.standard(environment: environment, http: http) }
        let meter = try await Self.meter(context.resources)
        return AWSClient(service: service, region: region, endpoint: endpoint, credentials: credentials, http: http, meter: meter, logger: context.logger)
    }
}

/// The URLs of the AWS backends, parsed into configurations and endpoints.
public enum AWSURLs {
    /// `sqs://REGION/PREFIX?endpoint=URL&max_receive_count=N`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` naming what is wrong.
    public static func sqs(_ url: BackendURL, environment: [String: String]) throws -> (SQSConfiguration, AWSEndpoint) {
        let region = try requireRegion(url.host, url)
        let prefix = try name(url, what: "queue prefix", example: "sqs://us-east-1/htc-grid")
        guard prefix.utf8.count <= 60, prefix.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw invalid(url, "the queue prefix '\(prefix)' may hold only letters, digits, '-' and '_', at most 60 characters")
        }
        var configuration = SQSConfiguration(region: region, prefix: prefix)
        if let value = url.query["max_receive_count"] {
            guard let count = Int(value), (1...1000).contains(count) else { throw invalid(url, "max_receive_count must be 1 to 1000") }
            configuration.maxReceiveCount = count
        }
        try rejectUnknown(url, allowed: ["endpoint", "max_receive_count"])
        return (configuration, try AWSEndpoint.resolve(option: url.query["endpoint"], serviceVariable: "SQS", host: "sqs.\(region).amazonaws.com", environment: environment))
    }

    /// `dynamodb://REGION/TABLE?endpoint=URL&task_shards=N&lease_shards=N&counter_shards=N`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` naming what is wrong.
    public static func dynamoDB(_ url: BackendURL, environment: [String: String]) throws -> (DynamoDBConfiguration, AWSEndpoint) {
        let region = try requireRegion(url.host, url)
        let table = try name(url, what: "table", example: "dynamodb://us-east-1/htc-grid")
        var configuration = DynamoDBConfiguration(region: region, table: table)
        for (option, keyPath) in [
            ("task_shards", \DynamoDBConfiguration.taskShards), ("lease_shards", \DynamoDBConfiguration.leaseShards),
            ("counter_shards", \DynamoDBConfiguration.counterShards),
        ] {
            if let value = url.query[option] {
                guard let count = Int(value), (1...64).contains(count) else { throw invalid(url, "\(option) must be 1 to 64") }
                configuration[keyPath: keyPath] = count
            }
        }
        try rejectUnknown(url, allowed: ["endpoint", "task_shards", "lease_shards", "counter_shards"])
        return (
            configuration,
            try AWSEndpoint.resolve(option: url.query["endpoint"], serviceVariable: "DYNAMODB", host: "dynamodb.\(region).amazonaws.com", environment: environment)
        )
    }

    /// `s3://BUCKET/PREFIX?region=R&endpoint=URL&path_style=…&sse=…&kms_key_id=…&multipart_threshold=…&max_payload_bytes=…`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` naming what is wrong.
    public static func s3(_ url: BackendURL, environment: [String: String]) throws -> (S3Configuration, AWSEndpoint) {
        let bucket = url.host
        guard (3...63).contains(bucket.count), bucket.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "-" || $0 == "." }) else {
            throw invalid(url, "'\(bucket)' is not an S3 bucket name (3 to 63 lower-case letters, digits, '-' and '.'); write s3://BUCKET/PREFIX")
        }
        let region = try requireRegion(url.query["region"] ?? environment["AWS_REGION"] ?? environment["AWS_DEFAULT_REGION"] ?? "us-east-1", url)
        let path = url.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        var configuration = S3Configuration(bucket: bucket, prefix: path.isEmpty ? "" : path + "/", region: region)
        let option = url.query["endpoint"]
        let endpoint = try AWSEndpoint.resolve(option: option, serviceVariable: "S3", host: "s3.\(region).amazonaws.com", environment: environment)
        let custom = option != nil || environment["AWS_ENDPOINT_URL_S3"] != nil || environment["AWS_ENDPOINT_URL"] != nil
        configuration.pathStyle = custom || bucket.contains(".")
        if let value = url.query["path_style"] {
            guard let flag = Bool(value) else { throw invalid(url, "path_style must be true or false") }
            configuration.pathStyle = flag
        }
        switch url.query["sse"]?.lowercased() {
        case nil, "", "none": configuration.encryption = url.query["kms_key_id"].map { .kms($0) } ?? .none
        case "aes256", "s3", "sse-s3": configuration.encryption = .s3
        case "kms", "aws:kms", "sse-kms": configuration.encryption = .kms(url.query["kms_key_id"])
        case let other?: throw invalid(url, "sse=\(other) is not one of none, aes256, kms")
        }
        for (option, keyPath, minimum) in [
            ("multipart_threshold", \S3Configuration.multipartThreshold, 5 << 20), ("max_payload_bytes", \S3Configuration.maxPayloadBytes, 1),
            ("part_size", \S3Configuration.partSize, 5 << 20),
        ] {
            if let value = url.query[option] {
                guard let bytes = Int(value), bytes >= minimum else { throw invalid(url, "\(option) must be a number of bytes, at least \(minimum)") }
                configuration[keyPath: keyPath] = bytes
            }
        }
        try rejectUnknown(url, allowed: ["region", "endpoint", "path_style", "sse", "kms_key_id", "multipart_threshold", "max_payload_bytes", "part_size"])
        return (configuration, endpoint)
    }

    private static func requireRegion(_ region: String, _ url: BackendURL) throws -> String {
        guard !region.isEmpty, region.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "-" }) else {
            throw invalid(url, "'\(region)' is not an AWS region such as us-east-1")
        }
        return region
    }

    private static func name(_ url: BackendURL, what: String, example: String) throws -> String {
        let name = url.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        guard !name.isEmpty, !name.contains("/") else { throw invalid(url, "the URL names no \(what); write e.g. \(example)") }
        return name
    }

    private static func rejectUnknown(_ url: BackendURL, allowed: Set<String>) throws {
        if let unknown = url.query.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw invalid(url, "unknown option '\(unknown)'; the options are \(allowed.sorted().joined(separator: ", "))")
        }
    }

    private static func invalid(_ url: BackendURL, _ message: String) -> GridError {
        GridError.invalidArgument("\(url): \(message)", backend: url.scheme)
    }
}
