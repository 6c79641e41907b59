import Foundation
import GridKernel

extension DynamoDBStateStore {
    /// The attribute DynamoDB's time to live reads (epoch seconds); the store does not set it, so
    /// records stay until a session is deleted unless an operator sets it (see docs/backends.md).
    public static let timeToLiveAttribute = "expires_at"

    /// Creates the table (key `pk` + `sk`, no secondary index) and turns on time to live, if the
    /// table does not exist (idempotent), and waits until it is active.
    ///
    /// - Throws: ``GridKernel/GridError``.
    public func createTable(timeout: Duration = .seconds(300)) async throws {
        let definition: JSON = [
            "TableName": .string(configuration.table),
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": .array(
                [("pk", "S"), ("sk", "S")].map {
                    ["AttributeName": .string($0.0), "AttributeType": .string($0.1)]
                }),
            "KeySchema": [["AttributeName": "pk", "KeyType": "HASH"], ["AttributeName": "sk", "KeyType": "RANGE"]],
        ]
        do {
            _ = try await client.json("DynamoDB_20120810", "CreateTable", definition, resource: "table \(configuration.table)", repeatability: .safe)
        } catch let error as GridError where (error.underlying as? AWSServiceError)?.code == "ResourceInUseException" {
            // The table exists already.
        }
        let deadline = ContinuousClock.now + timeout
        while true {
            let answer = try await client.json(
                "DynamoDB_20120810", "DescribeTable", ["TableName": .string(configuration.table)], resource: "table \(configuration.table)",
                repeatability: .safe)
            let table = answer["Table"] ?? [:]
            let indexesActive = (table["GlobalSecondaryIndexes"]?.array ?? []).allSatisfy { $0["IndexStatus"]?.string == "ACTIVE" }
            if table["TableStatus"]?.string == "ACTIVE" && indexesActive { break }
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
}
