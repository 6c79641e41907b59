import Foundation
import GridKernel

/// An error answer from an AWS service, before it becomes a ``GridKernel/GridError``.
struct AWSServiceError: Error, CustomStringConvertible, Sendable {
    /// The HTTP status.
    var status: Int
    /// The AWS error code (`ConditionalCheckFailedException`, `NoSuchKey`, `AccessDenied`, …).
    var code: String
    /// The service's message.
    var message: String
    /// `sqs`, `dynamodb`, `s3`, `sts`.
    var service: String
    /// The operation (`SendMessageBatch`, `UpdateItem`, `PutObject`).
    var action: String
    /// What the request was about (a queue URL, a table, `bucket/key`).
    var resource: String
    /// Why each item of a cancelled DynamoDB `TransactWriteItems` was refused, in the order of the
    /// items (`None` for an item that was not the cause); empty for other errors.
    var cancellationReasons: [CancellationReason] = []

    /// One entry of a `TransactionCanceledException`'s `CancellationReasons`.
    struct CancellationReason: Sendable {
        /// `None`, `ConditionalCheckFailed`, `TransactionConflict`, `ThrottlingError`, …
        var code: String
        /// The item as it was, when the condition failed and the request asked for `ALL_OLD`.
        var item: [String: JSON]?
    }

    var description: String { "\(service):\(action) on \(resource): HTTP \(status) \(code): \(message)" }

    /// Reads the error of a JSON-protocol answer (`__type`, `message`) or an XML one (`<Code>`, `<Message>`).
    init(status: Int, body: [UInt8], headers: [(String, String)], service: String, action: String, resource: String) {
        self.status = status
        self.service = service
        self.action = action
        self.resource = resource
        let text = String(decoding: body, as: UTF8.self)
        var code = ""
        var message = ""
        if text.hasPrefix("{"), let json = try? JSON.parse(body, context: service) {
            let type = json["__type"]?.string ?? json["code"]?.string ?? ""
            code = String(type.split(separator: "#").last ?? "").split(separator: ":").first.map(String.init) ?? ""
            message = json["message"]?.string ?? json["Message"]?.string ?? ""
            cancellationReasons = (json["CancellationReasons"]?.array ?? []).map {
                CancellationReason(code: $0["Code"]?.string ?? "None", item: $0["Item"]?.object)
            }
        } else if text.contains("<") {
            code = XMLText.value("Code", in: text) ?? ""
            message = XMLText.value("Message", in: text) ?? ""
        }
        if code.isEmpty, let query = headers.first(where: { $0.0.lowercased() == "x-amzn-query-error" })?.1 {
            code = String(query.split(separator: ";").first ?? "")
        }
        if code.isEmpty { code = Self.codeForStatus(status) }
        self.code = code
        self.message = message.isEmpty ? "(no message)" : message
    }

    private static func codeForStatus(_ status: Int) -> String {
        switch status {
        case 403: "AccessDenied"
        case 404: "NotFound"
        case 503: "ServiceUnavailable"
        default: "HTTP\(status)"
        }
    }

    /// Whether AWS refused the request for rate.
    var isThrottling: Bool {
        status == 429
            || [
                "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "TooManyRequestsException",
                "ProvisionedThroughputExceededException", "TransactionInProgressException", "RequestLimitExceeded",
                "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
                "EC2ThrottledException", "AWS.SimpleQueueService.RequestThrottled", "RequestTimeout", "RequestTimeoutException",
            ].contains(code)
    }

    /// Whether the caller's credentials or permissions are the problem.
    var isAccessDenied: Bool {
        status == 403
            || [
                "AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId", "SignatureDoesNotMatch",
                "InvalidSignatureException", "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "MissingAuthenticationToken",
                "AuthFailure", "InvalidToken", "IncompleteSignature",
            ].contains(code)
    }

    /// The ``GridKernel/GridError`` for callers, with what to do.
    var gridError: GridError {
        if isAccessDenied {
            return GridError(
                .unauthorized,
                "AWS refused \(service):\(action) on \(resource) (\(code): \(message)); check the credentials in use and that their IAM policy allows \(service):\(action) on that resource",
                backend: service, underlying: self
            )
        }
        if isThrottling || status >= 500 {
            return GridError.unavailable("\(service):\(action) on \(resource) kept failing with \(code) (HTTP \(status)): \(message)", backend: service, underlying: self)
        }
        if ["ResourceNotFoundException", "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue", "NoSuchBucket"].contains(code) {
            return GridError.unavailable(
                "\(resource) does not exist (\(service):\(action) said \(code): \(message)); create it with `htc aws init` or the Terraform in deployment/",
                backend: service, underlying: self
            )
        }
        if ["ValidationException", "InvalidParameterValue", "InvalidArgument", "MalformedXML", "InvalidRequest"].contains(code) {
            return GridError(.invalidArgument, "\(service):\(action) on \(resource) rejected the request: \(code): \(message)", backend: service, underlying: self)
        }
        return GridError(.internalError, "\(service):\(action) on \(resource) failed: HTTP \(status) \(code): \(message)", backend: service, underlying: self)
    }
}
