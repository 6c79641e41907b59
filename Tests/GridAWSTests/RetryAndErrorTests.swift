import Foundation
import GridKernel
import Testing

@testable import GridAWS

struct RetryPolicyTests {
    let policy = AWSRetryPolicy(maxAttempts: 5, base: .milliseconds(100), cap: .seconds(1))

    @Test func throttlingIsRetriedForEveryRequest() {
        #expect(policy.shouldRetry(.throttled, repeatability: .unsafe, attempt: 1))
        #expect(policy.shouldRetry(.throttled, repeatability: .safe, attempt: 4))
    }

    @Test func serverErrorsAndTransportFailuresOnlyForSafeRequests() {
        for outcome in [AWSRetryPolicy.Outcome.serverError, .transportFailure] {
            #expect(policy.shouldRetry(outcome, repeatability: .safe, attempt: 1))
            #expect(!policy.shouldRetry(outcome, repeatability: .unsafe, attempt: 1))
        }
    }

    @Test func clientErrorsAreNeverRetried() {
        #expect(!policy.shouldRetry(.clientError, repeatability: .safe, attempt: 1))
    }

    @Test func attemptsAreBounded() {
        #expect(!policy.shouldRetry(.throttled, repeatability: .safe, attempt: 5))
    }

    @Test func backoffIsFullJitterUnderAnExponentialCeilingAndTheCap() {
        #expect(policy.backoff(retry: 1, random: 0) == .zero)
        #expect(policy.backoff(retry: 1, random: 0.5) == .milliseconds(50))
        #expect(policy.backoff(retry: 3, random: 1) == .milliseconds(400))
        #expect(policy.backoff(retry: 3, random: 0.25) == .milliseconds(100))
        #expect(policy.backoff(retry: 10, random: 1) == .seconds(1), "the cap bounds the ceiling")
        #expect(policy.backoff(retry: 60, random: 0.5) == .milliseconds(500), "a large retry number does not overflow")
    }
}

struct ServiceErrorTests {
    @Test func jsonProtocolErrorsAreRead() {
        let body = Array(#"{"__type":"com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException","message":"The conditional request failed"}"#.utf8)
        let error = AWSServiceError(status: 400, body: body, headers: [], service: "dynamodb", action: "UpdateItem", resource: "task s_1")
        #expect(error.code == "ConditionalCheckFailedException")
        #expect(error.message == "The conditional request failed")
        #expect(!error.isThrottling && !error.isAccessDenied)
    }

    @Test func sqsQueryErrorHeaderGivesTheCode() {
        let error = AWSServiceError(
            status: 400, body: Array(#"{"message":"The specified queue does not exist."}"#.utf8),
            headers: [("x-amzn-query-error", "AWS.SimpleQueueService.NonExistentQueue;Sender")], service: "sqs", action: "GetQueueUrl",
            resource: "grid__0")
        #expect(error.code == "AWS.SimpleQueueService.NonExistentQueue")
        #expect(error.gridError.code == .unavailable)
        #expect(error.gridError.message.contains("htc aws init"))
    }

    @Test func accessDeniedNamesTheActionAndTheResource() {
        let xml = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        let error = AWSServiceError(
            status: 403, body: Array(xml.utf8), headers: [], service: "s3", action: "PutObject", resource: "s3://bucket/p/t_1-input")
        let grid = error.gridError
        #expect(grid.code == .unauthorized)
        #expect(grid.message.contains("s3:PutObject"))
        #expect(grid.message.contains("s3://bucket/p/t_1-input"))
    }

    @Test func throttlingAndServerErrorsAreRecognised() {
        let throttled = AWSServiceError(
            status: 400, body: Array(#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"slow down"}"#.utf8),
            headers: [], service: "dynamodb", action: "UpdateItem", resource: "t")
        #expect(throttled.isThrottling)
        let slowDown = AWSServiceError(
            status: 503, body: Array("<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>".utf8), headers: [],
            service: "s3", action: "PutObject", resource: "k")
        #expect(slowDown.isThrottling)
        #expect(slowDown.gridError.code == .unavailable)
    }
}

struct XMLTextTests {
    @Test func readsElementsAndDecodesEntities() {
        let xml = "<R><Key>a&amp;b &lt;c&gt; &#65;&#x42;</Key><Key>two</Key><UploadId>u-1</UploadId></R>"
        #expect(XMLText.values("Key", in: xml) == ["a&b <c> AB", "two"])
        #expect(XMLText.value("UploadId", in: xml) == "u-1")
        #expect(XMLText.value("Missing", in: xml) == nil)
        #expect(XMLText.escape("a&b<'\">") == "a&amp;b&lt;&apos;&quot;&gt;")
    }
}

struct EndpointTests {
    @Test func optionThenServiceVariableThenGeneralVariableThenAWS() throws {
        let environment = ["AWS_ENDPOINT_URL": "http://127.0.0.1:1000", "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:2000"]
        #expect(try AWSEndpoint.resolve(option: "http://127.0.0.1:3000", serviceVariable: "SQS", host: "x", environment: environment).port == 3000)
        #expect(try AWSEndpoint.resolve(option: nil, serviceVariable: "SQS", host: "x", environment: environment).port == 2000)
        #expect(try AWSEndpoint.resolve(option: nil, serviceVariable: "S3", host: "x", environment: environment).port == 1000)
        let aws = try AWSEndpoint.resolve(option: nil, serviceVariable: "S3", host: "s3.eu-west-1.amazonaws.com", environment: [:])
        #expect(aws.description == "https://s3.eu-west-1.amazonaws.com")
    }

    @Test func malformedEndpointIsAnInvalidArgument() {
        #expect(throws: GridError.self) { try AWSEndpoint("ftp://host") }
    }
}
