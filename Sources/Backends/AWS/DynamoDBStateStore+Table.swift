import Foundation
import GridKernel

extension DynamoDBStateStore {
    /// The attribute DynamoDB's time to live reads (epoch seconds); the store does not set it, so
    /// records stay until a session is deleted unless an operator sets it (see docs/backends.md).
    public static let timeToLiveAttribute = "expires_at"

    /// Creates the table (key `pk` + `sk`, the `completions` index on `sid` + `cseq`) and turns on time
    /// to live, if the table does not exist (idempotent); adds the index to a table made by an earlier
    /// version (`UpdateTable`; DynamoDB fills it from the existing items in the background); and waits
    /// until the table and its indexes are active.
    ///
    /// - Throws: ``GridKernel/GridError``.
    public func createTable(timeout: Duration = .seconds(300)) async throws {
        let resource = "table \(configuration.table)"
        let definition: JSON = [
            "TableName": .string(configuration.table),
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": Self.attributeDefinitions,
            "KeySchema": [["AttributeName": "pk", "KeyType": "HASH"], ["AttributeName": "sk", "KeyType": "RANGE"]],
            "GlobalSecondaryIndexes": [Self.completionIndex],
        ]
        do {
            _ = try await client.json("DynamoDB_20120810", "CreateTable", definition, resource: resource, repeatability: .safe)
        } catch let error as GridError where (error.underlying as? AWSServiceError)?.code == "ResourceInUseException" {
            // The table exists already.
        }
        let deadline = ContinuousClock.now + timeout
        var indexAsked = false
        while true {
            let answer = try await client.json(
                "DynamoDB_20120810", "DescribeTable", ["TableName": .string(configuration.table)], resource: resource, repeatability: .safe)
            let table = answer["Table"] ?? [:]
            let indexes = table["GlobalSecondaryIndexes"]?.array ?? []
            let hasIndex = indexes.contains { $0["IndexName"]?.string == DynamoDBItem.completionIndex }
            if table["TableStatus"]?.string == "ACTIVE" && !hasIndex && !indexAsked {
                _ = try await client.json(
                    "DynamoDB_20120810", "UpdateTable",
                    [
                        "TableName": .string(configuration.table), "AttributeDefinitions": Self.attributeDefinitions,
                        "GlobalSecondaryIndexUpdates": [["Create": Self.completionIndex]],
                    ], resource: resource, repeatability: .safe)
                indexAsked = true
                continue
            }
            let indexesActive = indexes.allSatisfy { $0["IndexStatus"]?.string == "ACTIVE" }
            if table["TableStatus"]?.string == "ACTIVE" && hasIndex && indexesActive { break }
            guard ContinuousClock.now < deadline else {
                throw GridError(.timeout, "table \(configuration.table) is not active after \(timeout)", backend: "dynamodb")
            }
            try await Task.sleep(for: .seconds(2))
        }
        do {
            _ = try await client.json(
                "DynamoDB_20120810", "UpdateTimeToLive",
                ["TableName": .string(configuration.table), "TimeToLiveSpecification": ["AttributeName": .string(Self.timeToLiveAttribute), "Enabled": true]],
                resource: "table \(configuration.table)", repeatability: .safe)
        } catch let error as GridError where (error.underlying as? AWSServiceError)?.message.contains("already enabled") == true {
            // Time to live is on already.
        }
    }

    private static let attributeDefinitions: JSON = .array(
        [("pk", "S"), ("sk", "S"), ("sid", "S"), ("cseq", "N")].map { ["AttributeName": .string($0.0), "AttributeType": .string($0.1)] })

    /// The completion order: terminal tasks by session and number, every attribute projected, so that
    /// ``completions(_:after:limit:)`` is one query.
    private static let completionIndex: JSON = [
        "IndexName": .string(DynamoDBItem.completionIndex),
        "KeySchema": [["AttributeName": "sid", "KeyType": "HASH"], ["AttributeName": "cseq", "KeyType": "RANGE"]],
        "Projection": ["ProjectionType": "ALL"],
    ]
}
