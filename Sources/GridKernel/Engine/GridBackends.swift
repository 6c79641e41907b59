/// The three data backends a grid runs on; any mix is legal (queue on SQS, state in DynamoDB,
/// payloads in Redis, …).
public struct GridBackends: Sendable {
    /// Where task messages wait for agents.
    public var queue: any TaskQueue
    /// The durable truth about sessions and tasks.
    public var state: any StateStore
    /// Task inputs and outputs.
    public var payloads: any PayloadStore

    /// Bundles three backends.
    public init(queue: any TaskQueue, state: any StateStore, payloads: any PayloadStore) {
        self.queue = queue
        self.state = state
        self.payloads = payloads
    }
}
