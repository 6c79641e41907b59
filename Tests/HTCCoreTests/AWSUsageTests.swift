import Foundation
import GridAWS
import Testing

@testable import HTCCore

/// The cost model `htc bench` reports: agents' usage files add up, per-task figures and the price.
@Suite struct AWSUsageTests {
    @Test func usageFilesAddUpAndBrokenOnesCountAsNothing() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-usage-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try AWSUsage(requests: ["sqs:ReceiveMessage": 30, "dynamodb:UpdateItem": 200], dynamodb_write_units: DynamoDBWriteUnits(table: 200, indexes: 100))
            .write(to: directory.appendingPathComponent("agent-0.json").path)
        try AWSUsage(requests: ["sqs:ReceiveMessage": 10], dynamodb_write_units: DynamoDBWriteUnits(table: 100, indexes: 100, reported: 7))
            .write(to: directory.appendingPathComponent("agent-1.json").path)
        try Data("{not json".utf8).write(to: directory.appendingPathComponent("agent-2.json"))
        let total = AWSUsage.sum(directory: directory)
        #expect(total.requests == ["sqs:ReceiveMessage": 40, "dynamodb:UpdateItem": 200])
        #expect(total.dynamodb_write_units == DynamoDBWriteUnits(table: 300, indexes: 200, reported: 7))
    }

    @Test func perTaskFiguresAndTheirPrice() {
        let usage = AWSUsage(
            requests: ["sqs:SendMessageBatch": 100, "sqs:ReceiveMessage": 150, "sqs:DeleteMessageBatch": 100, "dynamodb:UpdateItem": 2_000],
            dynamodb_write_units: DynamoDBWriteUnits(table: 3_000, indexes: 2_000))
        let cost = usage.perTask(1_000)
        #expect(cost.requests_per_task == ["sqs": 0.35, "dynamodb": 2, "s3": 0])
        #expect(cost.dynamodb_write_units_per_task == AWSCost.WriteUnits(table: 3, indexes: 2, total: 5))
        // 0.35 × $0.40 + 5 × $0.625 per million tasks.
        #expect(cost.dollarsPerMillionTasks == 3.27)
        var result = Workload.Result(
            backend: "sqs", tasks: 1_000, agents: 2, payload_bytes: 64, seconds: 1, tasks_per_second: 1_000, submit_per_second: 1_000,
            latency_ms: .init(p50: 1, p99: 2), verified: 1_000, lost: 0, duplicates: 0, failed: 0)
        #expect(!result.jsonLine.contains("\"aws\""))
        result.aws = cost
        let line = result.jsonLine
        #expect(line.hasSuffix("}}}") && line.contains(",\"aws\":{\"dynamodb_write_units_per_task\":{\"indexes\":2,\"table\":3,\"total\":5}"), "\(line)")
        #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) != nil, "one JSON object: \(line)")
    }
}
