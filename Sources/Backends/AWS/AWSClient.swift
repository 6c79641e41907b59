import Foundation
import GridKernel
import Logging
import Synchronization

/// Signed, retried calls to one AWS service in one region: the part the three service clients share.
///
/// Every request is signed with SigV4 using the credentials chain's current credentials, sent through
/// ``AWSHTTP``, and retried by the ``AWSRetryPolicy``. Error answers become ``GridKernel/GridError``s
/// that name the action and the resource.
public struct AWSClient: Sendable {
    /// Where the service is.
    public let endpoint: AWSEndpoint
    /// The signer (region and signing name).
    public let signer: SigV4Signer
    let http: AWSHTTP
    let credentials: AWSCredentialsChain
    let retry: AWSRetryPolicy
    let timeout: Duration
    let meter: AWSRequestMeter
    let logger: Logger

    /// Creates a client of one service.
    ///
    /// - Parameters:
    ///   - service: the signing name (`sqs`, `dynamodb`, `s3`).
    ///   - meter: counts requests, for the cost model of `htc bench`.
    public init(
        service: String, region: String, endpoint: AWSEndpoint, credentials: AWSCredentialsChain, http: AWSHTTP = AWSHTTP(),
        retry: AWSRetryPolicy = AWSRetryPolicy(), timeout: Duration = .seconds(30), meter: AWSRequestMeter = AWSRequestMeter(),
        logger: Logger = Logger(label: "htc.aws")
    ) {
        self.endpoint = endpoint
        self.signer = SigV4Signer(region: region, service: service)
        self.http = http
        self.credentials = credentials
        self.retry = retry
        self.timeout = timeout
        self.meter = meter
        self.logger = logger
    }

    var service: String { signer.service }

    /// A request to sign and send.
    struct Call: Sendable {
        var method: String
        /// Percent-encoded path.
        var path: String = "/"
        var query: [(String, String)] = []
        var headers: [(String, String)] = []
        var body: [UInt8] = []
        /// The operation, for errors and metering.
        var action: String
        /// The object, for errors.
        var resource: String
        var repeatability: AWSRepeatability
        /// A host other than the endpoint's (S3 virtual-host addressing).
        var host: String? = nil
        /// The shortest time the exchange is given, when longer than the client's (a long poll).
        var timeout: Duration? = nil
    }

    /// Sends a call, retrying per the policy. Cancelling the calling task aborts the exchange under
    /// way (async-http-client closes the connection) and ends the call with `CancellationError`.
    ///
    /// - Parameter accept: statuses that are answers, not errors (default: 2xx).
    /// - Throws: ``GridKernel/GridError`` for an error answer or an unreachable service;
    ///   `CancellationError` when the task is cancelled.
    func send(_ call: Call, accept: (Int) -> Bool = { (200..<300).contains($0) }) async throws -> AWSHTTP.Response {
        let target = call.host.map { endpoint.withHost($0) } ?? endpoint
        var attempt = 0
        while true {
            attempt += 1
            let outcome: AWSRetryPolicy.Outcome
            let failure: any Error
            do {
                let request = try await signed(call, target: target)
                meter.count(service: service, action: call.action)
                let response = try await http.send(request, timeout: Swift.max(timeout, call.timeout ?? .zero))
                if accept(response.status) { return response }
                let error = AWSServiceError(
                    status: response.status, body: response.body, headers: response.headers, service: service, action: call.action,
                    resource: call.resource
                )
                outcome = error.isThrottling ? .throttled : error.status >= 500 ? .serverError : .clientError
                failure = error
            } catch let error as GridError {
                throw error
            } catch {
                // A cancelled task (an agent stopping) aborted the exchange: no retry.
                if Task.isCancelled { throw CancellationError() }
                outcome = .transportFailure
                failure = error
            }
            guard retry.shouldRetry(outcome, repeatability: call.repeatability, attempt: attempt) else {
                if let error = failure as? AWSServiceError { throw error.gridError }
                throw GridError.unavailable(
                    "\(service):\(call.action) on \(call.resource) could not reach \(target) after \(attempt) attempt(s)", backend: service,
                    underlying: failure
                )
            }
            let pause = retry.backoff(retry: attempt, random: Double.random(in: 0..<1))
            logger.debug("retrying \(service):\(call.action) after \(outcome) in \(pause)", metadata: ["attempt": "\(attempt)"])
            try await Task.sleep(for: pause)
        }
    }

    private func signed(_ call: Call, target: AWSEndpoint) async throws -> AWSHTTP.Request {
        let payloadHash = SigV4Signer.sha256Hex(call.body)
        var headers = call.headers
        headers.append(("host", target.hostHeader))
        if service == "s3" { headers.append(("x-amz-content-sha256", payloadHash)) }
        let path = target.basePath + call.path
        let request = SigV4Signer.Request(method: call.method, path: path, query: call.query, headers: headers, payloadHash: payloadHash)
        let signed = signer.sign(request, credentials: try await credentials.credentials(), date: Date())
        return AWSHTTP.Request(
            method: call.method,
            url: "\(target.scheme)://\(target.hostHeader)\(path)\(call.query.isEmpty ? "" : "?" + request.encodedQuery)",
            headers: signed.headers.filter { $0.0 != "host" },
            body: call.body
        )
    }

    /// One call of a JSON protocol (`X-Amz-Target: <prefix>.<action>`, `application/x-amz-json-1.0`).
    ///
    /// - Throws: ``GridKernel/GridError``.
    /// - Parameter timeout: the shortest time the exchange is given (a long poll's wait and more),
    ///   when longer than the client's.
    func json(
        _ targetPrefix: String, _ action: String, _ body: JSON, resource: String, repeatability: AWSRepeatability, timeout: Duration? = nil
    ) async throws -> JSON {
        let response = try await send(
            Call(
                method: "POST",
                headers: [("content-type", "application/x-amz-json-1.0"), ("x-amz-target", "\(targetPrefix).\(action)")],
                body: body.bytes(), action: action, resource: resource, repeatability: repeatability, timeout: timeout
            )
        )
        return try JSON.parse(response.body, context: "\(service):\(action)")
    }
}

/// Counts AWS requests by service and action, and DynamoDB write units: the cost model that
/// `htc bench` reports.
public final class AWSRequestMeter: Sendable {
    private struct Totals {
        var requests: [String: Int] = [:]
        var writeUnits = DynamoDBWriteUnits()
    }

    private let state = Mutex<Totals>(Totals())

    /// Creates an empty meter.
    public init() {}

    func count(service: String, action: String) {
        state.withLock { $0.requests["\(service):\(action)", default: 0] += 1 }
    }

    func addWriteUnits(table: Double, indexes: Double) {
        state.withLock {
            $0.writeUnits.table += table
            $0.writeUnits.indexes += indexes
        }
    }

    func addReportedWriteUnits(_ units: Double) {
        state.withLock { $0.writeUnits.reported += units }
    }

    /// Requests so far, by `service:Action`.
    public var requests: [String: Int] { state.withLock { $0.requests } }

    /// Requests so far, by service.
    public var requestsByService: [String: Int] {
        requests.reduce(into: [:]) { totals, entry in
            totals[String(entry.key.split(separator: ":")[0]), default: 0] += entry.value
        }
    }

    /// DynamoDB write units so far.
    public var dynamoDBWriteUnits: DynamoDBWriteUnits { state.withLock { $0.writeUnits } }
}

/// DynamoDB write units, as the state store counts them by DynamoDB's billing rules, and as
/// DynamoDB reported them (`ReturnConsumedCapacity`; emulators report a constant).
public struct DynamoDBWriteUnits: Sendable, Hashable, Codable {
    /// Units written to the table: one per KiB of the item, at least one, also for a write whose
    /// condition failed.
    public var table: Double = 0
    /// Units written to secondary indexes (none in the current layout: kept so that a layout with an
    /// index reports what it costs).
    public var indexes: Double = 0
    /// The total DynamoDB reported.
    public var reported: Double = 0

    /// Creates a count.
    public init(table: Double = 0, indexes: Double = 0, reported: Double = 0) {
        self.table = table
        self.indexes = indexes
        self.reported = reported
    }

    /// Table and index units together.
    public var total: Double { table + indexes }
}
