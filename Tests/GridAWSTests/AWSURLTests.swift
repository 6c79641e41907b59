import Foundation
import GridKernel
import Testing

@testable import GridAWS

struct AWSURLTests {
    @Test func sqsURL() throws {
        let (configuration, endpoint) = try AWSURLs.sqs(BackendURL("sqs://eu-west-1/grid-a?max_receive_count=50"), environment: [:])
        #expect(configuration.region == "eu-west-1" && configuration.prefix == "grid-a" && configuration.maxReceiveCount == 50)
        #expect(endpoint.description == "https://sqs.eu-west-1.amazonaws.com")
        #expect(SQSTaskQueue.queueName(prefix: "grid-a", priority: -3) == "grid-a__-3")
    }

    @Test func dynamoDBURLWithEndpointOptionAndShards() throws {
        let (configuration, endpoint) = try AWSURLs.dynamoDB(
            BackendURL("dynamodb://us-east-1/grid?endpoint=http://127.0.0.1:4566&task_shards=4&lease_shards=16"), environment: [:])
        #expect(configuration.table == "grid" && configuration.taskShards == 4 && configuration.leaseShards == 16)
        #expect(endpoint.description == "http://127.0.0.1:4566")
    }

    @Test func s3URLFromTheEnvironmentWithEncryption() throws {
        let environment = ["AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000", "AWS_REGION": "eu-central-1"]
        let (configuration, endpoint) = try AWSURLs.s3(BackendURL("s3://grid-bucket/runs/a?sse=kms&kms_key_id=alias/grid"), environment: environment)
        #expect(configuration.bucket == "grid-bucket" && configuration.prefix == "runs/a/" && configuration.region == "eu-central-1")
        #expect(configuration.encryption == .kms("alias/grid"))
        #expect(configuration.pathStyle, "a custom endpoint means path-style addressing")
        #expect(endpoint.port == 9000)
        let (onAWS, _) = try AWSURLs.s3(BackendURL("s3://grid-bucket?region=us-west-2&sse=aes256"), environment: [:])
        #expect(!onAWS.pathStyle && onAWS.encryption == .s3 && onAWS.prefix == "" && onAWS.region == "us-west-2")
    }

    @Test func badURLsSayWhatIsWrong() {
        for text in [
            "sqs://eu-west-1/", "sqs://EU/grid", "sqs://eu-west-1/grid?colour=red", "dynamodb://us-east-1/t?task_shards=0",
            "s3://Bad_Bucket/p", "s3://bucket?sse=des", "s3://bucket?multipart_threshold=10", "sqs://eu-west-1/a/b",
        ] {
            #expect(throws: GridError.self, "\(text)") {
                let url = try BackendURL(text)
                switch url.scheme {
                case "sqs": _ = try AWSURLs.sqs(url, environment: [:])
                case "dynamodb": _ = try AWSURLs.dynamoDB(url, environment: [:])
                default: _ = try AWSURLs.s3(url, environment: [:])
                }
            }
        }
    }

    @Test func messageBatchesHoldTenMessagesAndRespectTheSizeLimit() throws {
        let session = SessionID.random()
        let small = (0..<25).map { QueuedTask(id: TaskID(session: session, index: $0), priority: 0, payload: [1]) }
        #expect(try SQSTaskQueue.batches(small, maxBytes: 256 * 1024).map(\.count) == [10, 10, 5])
        let large = (0..<3).map { QueuedTask(id: TaskID(session: session, index: $0), priority: 0, payload: [UInt8](repeating: 7, count: 90_000)) }
        #expect(try SQSTaskQueue.batches(large, maxBytes: 256 * 1024).map(\.count) == [2, 1])
        let tooLarge = [QueuedTask(id: TaskID(session: session, index: 0), priority: 0, payload: [UInt8](repeating: 7, count: 300_000))]
        #expect(throws: GridError.self) { try SQSTaskQueue.batches(tooLarge, maxBytes: 256 * 1024) }
    }

    @Test func messageBodiesKeepNilAndEmptyApart() throws {
        let id = TaskID(session: .random(), index: 4)
        for payload in [nil, [], [0, 255]] as [[UInt8]?] {
            let decoded = try SQSTaskQueue.decode(SQSTaskQueue.encode(QueuedTask(id: id, priority: 2, payload: payload)))
            #expect(decoded.id == id && decoded.payload == payload)
        }
    }
}
