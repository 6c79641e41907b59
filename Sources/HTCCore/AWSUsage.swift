import Foundation
import GridAWS
import GridKernel

/// What processes of a grid spent on AWS: requests by `service:Action` and DynamoDB write units.
/// Agents write theirs with `--usage-file` when they stop; `htc bench` adds them to its own and
/// reports them per task (the cost model of docs/backends.md).
struct AWSUsage: Codable, Sendable, Equatable {
    var requests: [String: Int] = [:]
    var dynamodb_write_units = DynamoDBWriteUnits()

    /// The usage a process' AWS backends metered so far (empty when it has none).
    static func metered(_ context: BackendContext) async throws -> AWSUsage {
        let meter = try await AWSPlugin.meter(context.resources)
        return AWSUsage(requests: meter.requests, dynamodb_write_units: meter.dynamoDBWriteUnits)
    }

    var isEmpty: Bool { requests.isEmpty }

    /// The two usages together.
    func adding(_ other: AWSUsage) -> AWSUsage {
        AWSUsage(
            requests: requests.merging(other.requests, uniquingKeysWith: +),
            dynamodb_write_units: DynamoDBWriteUnits(
                table: dynamodb_write_units.table + other.dynamodb_write_units.table,
                indexes: dynamodb_write_units.indexes + other.dynamodb_write_units.indexes,
                reported: dynamodb_write_units.reported + other.dynamodb_write_units.reported))
    }

    /// Writes the usage as JSON.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` when the file cannot be written.
    func write(to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        do {
            try encoder.encode(self).write(to: URL(fileURLWithPath: path))
        } catch {
            throw GridError.invalidArgument("cannot write the usage file \(path) (--usage-file): \(error)")
        }
    }

    /// The sum of the usage files (`*.json`) in a directory; files that are missing or unreadable
    /// (an agent that was killed) count as nothing.
    static func sum(directory: URL) -> AWSUsage {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return files.filter { $0.hasSuffix(".json") }.reduce(AWSUsage()) { total, file in
            guard let data = try? Data(contentsOf: directory.appendingPathComponent(file)),
                let usage = try? JSONDecoder().decode(AWSUsage.self, from: data)
            else { return total }
            return total.adding(usage)
        }
    }

    /// Requests by service (`sqs`, `dynamodb`, `s3`; every one of the three, zero included).
    var requestsByService: [String: Int] {
        requests.reduce(into: ["sqs": 0, "dynamodb": 0, "s3": 0]) { totals, entry in
            totals[String(entry.key.split(separator: ":")[0]), default: 0] += entry.value
        }
    }

    /// The per-task figures `htc bench` reports.
    func perTask(_ tasks: Int) -> AWSCost {
        let count = Double(max(1, tasks))
        func rounded(_ value: Double) -> Double { (value * 1_000).rounded() / 1_000 }
        return AWSCost(
            requests_per_task: requestsByService.mapValues { rounded(Double($0) / count) },
            dynamodb_write_units_per_task: AWSCost.WriteUnits(
                table: rounded(dynamodb_write_units.table / count), indexes: rounded(dynamodb_write_units.indexes / count),
                total: rounded(dynamodb_write_units.total / count)),
            requests: requests)
    }
}

/// AWS cost per task, as `htc bench --json` prints it under `"aws"`.
struct AWSCost: Codable, Sendable, Equatable {
    struct WriteUnits: Codable, Sendable, Equatable {
        var table: Double
        var indexes: Double
        var total: Double
    }

    /// Requests per task by service.
    var requests_per_task: [String: Double]
    /// DynamoDB write units per task, by DynamoDB's billing rules.
    var dynamodb_write_units_per_task: WriteUnits
    /// All requests of the run by `service:Action`.
    var requests: [String: Int]

    /// List prices (us-east-1, on demand, November 2026) in dollars: SQS standard queue requests and
    /// DynamoDB write request units per million, S3 PUT requests per thousand.
    static let sqsPerMillion = 0.40
    static let dynamoDBWritePerMillion = 0.625
    static let s3PutPerThousand = 0.005

    /// Dollars per million tasks for their SQS requests, DynamoDB writes and S3 requests (priced as
    /// PUTs, the dearer kind); DynamoDB reads, storage and transfer are left out.
    var dollarsPerMillionTasks: Double {
        let sqs = (requests_per_task["sqs"] ?? 0) * Self.sqsPerMillion
        let dynamoDB = dynamodb_write_units_per_task.total * Self.dynamoDBWritePerMillion
        let s3 = (requests_per_task["s3"] ?? 0) * Self.s3PutPerThousand * 1_000
        return ((sqs + dynamoDB + s3) * 100).rounded() / 100
    }
}
