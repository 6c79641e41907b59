import ArgumentParser
import Foundation
import GridAWS
import GridKernel

/// `htc aws`: AWS resources for development.
struct AWSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "aws",
        abstract: "AWS resources of a grid (development; production uses the Terraform in deployment/).",
        subcommands: [AWSInitCommand.self]
    )
}

/// `htc aws init`: creates the queues, the table and the bucket of a grid, idempotently.
struct AWSInitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create the SQS queues, the DynamoDB table (indexes, time to live) and the S3 bucket of a grid; existing ones are kept.",
        discussion: "Queues are PREFIX__<priority> with the dead-letter queue PREFIX__dlq, the table is PREFIX and the bucket PREFIX (or --bucket). Credentials come from the standard AWS chain; the endpoint from --endpoint, AWS_ENDPOINT_URL_<SERVICE> or AWS_ENDPOINT_URL."
    )

    @Option(help: "Name prefix of the queues, and the table's (and by default the bucket's) name.") var prefix: String
    @Option(help: "AWS region.") var region: String
    @Option(help: "Endpoint of every service (e.g. a local emulator); default AWS.") var endpoint: String?
    @Option(help: "Bucket name; default the prefix.") var bucket: String?
    @Option(help: "Priorities to create queues for, comma-separated (others are created on first use).") var priorities = "0"

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let options = endpoint.map { "?endpoint=\($0.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? $0)" } ?? ""
        let bucketName = bucket ?? prefix.lowercased()
        let levels = try priorities.split(separator: ",").map { text -> Int in
            guard let value = Int(text.trimmingCharacters(in: .whitespaces)) else { throw ValidationError("--priorities: '\(text)' is not an integer") }
            return value
        }
        let queueURL = "sqs://\(region)/\(prefix)\(options)"
        let stateURL = "dynamodb://\(region)/\(prefix)\(options)"
        let payloadURL = "s3://\(bucketName)?region=\(region)\(options.isEmpty ? "" : "&" + options.dropFirst())"
        let setup = AWSSetup(environment: environment)
        try await setup.create(queue: BackendURL(queueURL), priorities: levels, state: BackendURL(stateURL), payload: BackendURL(payloadURL))
        print("""
            created (or found) queues \(prefix)__{\(levels.map(String.init).joined(separator: ","))} and \(prefix)__dlq, table \(prefix), bucket \(bucketName)
            --queue '\(queueURL)' --state '\(stateURL)' --payload '\(payloadURL)'
            """)
    }
}
