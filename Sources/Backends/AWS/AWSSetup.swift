import Foundation
import GridKernel

/// Creates a grid's AWS resources from its backend URLs, idempotently: what `htc aws init` does.
public struct AWSSetup: Sendable {
    private let environment: [String: String]

    /// Creates the set-up, reading credentials and endpoints from `environment`.
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment
    }

    /// Creates the queues (each priority's and the dead-letter queue), the table with its indexes and
    /// time to live, and the bucket. Existing ones are kept; a table of an earlier version gets its
    /// index and its sessions their counters and completion order (``DynamoDBStateStore/upgrade()``).
    ///
    /// - Throws: ``GridKernel/GridError`` (``GridKernel/GridError/Code/unauthorized`` names the action
    ///   that was refused).
    public func create(queue: BackendURL, priorities: [Int], state: BackendURL, payload: BackendURL) async throws {
        let plugin = AWSPlugin(environment: environment)
        let context = BackendContext()
        guard let sqs = try await plugin.makeQueue(queue, context: context) as? SQSTaskQueue,
            let dynamoDB = try await plugin.makeStateStore(state, context: context) as? DynamoDBStateStore,
            let s3 = try await plugin.makePayloadStore(payload, context: context) as? S3PayloadStore
        else {
            throw GridError(.internalError, "the AWS plugin built an unexpected backend type", backend: "aws")
        }
        try await sqs.createQueues(priorities: priorities)
        try await dynamoDB.createTable()
        _ = try await dynamoDB.upgrade()
        try await s3.createBucket()
    }
}
