import Foundation
import GridAWS
import GridKernel
import GridPlugins
import Testing

@testable import HTCCore

/// The whole grid on SQS + DynamoDB + S3 (moto_server, started by scripts/with-moto.sh under `make
/// test`): a client and two `htc-agent` processes, 2,000 tasks, one agent killed with SIGKILL while it holds tasks.
/// Skipped without HTC_TEST_AWS_ENDPOINT, except under `make test`, where that is a failure.
@Suite(.serialized) struct AWSCrashTests {
    static let environment = ProcessInfo.processInfo.environment
    static var enabled: Bool { environment["HTC_TEST_AWS_ENDPOINT"] != nil || environment["HTC_TEST_SUITE"] == "make" }

    @Test(.enabled(if: enabled, "needs moto: scripts/with-moto.sh swift test --filter AWSCrashTests"))
    func sigkilledAgentOnAWSLosesNoTask() async throws {
        let endpoint = try #require(Self.environment["HTC_TEST_AWS_ENDPOINT"], "scripts/with-moto.sh should have set HTC_TEST_AWS_ENDPOINT")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-aws-crash-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let name = "crash-\(UUID().uuidString.prefix(8).lowercased())"
        var environment = Self.environment
        environment["AWS_ACCESS_KEY_ID"] = "testing"
        environment["AWS_SECRET_ACCESS_KEY"] = "testing"
        environment["AWS_ENDPOINT_URL"] = endpoint
        environment["AWS_EC2_METADATA_DISABLED"] = "true"
        let urls = GridURLs(
            queue: "sqs://us-east-1/\(name)", state: "dynamodb://us-east-1/\(name)?lease_shards=1", payload: "s3://\(name)/payloads?region=us-east-1")
        try await AWSSetup(environment: environment).create(
            queue: BackendURL(urls.queue!), priorities: [0], state: BackendURL(urls.state!), payload: BackendURL(urls.payload!))

        let registry = BackendRegistry([AWSPlugin(environment: environment)])
        let backends = try await registry.makeBackends(urls, context: BackendContext())
        let client = GridClient(backends: backends)
        let session = try await client.createSession()
        let total = 2_000
        // Every tenth input is above the client's inline limit, so S3 carries it.
        let inputs = (0..<total).map { Workload.input(index: $0, bytes: $0 % 10 == 0 ? 10_000 : 64) }

        func start(_ index: Int, _ extra: [String]) throws -> Process {
            let process = Process()
            process.executableURL = try AgentPool.agentBinary()
            process.environment = environment
            process.arguments = [
                "--queue", urls.queue!, "--state", urls.state!, "--payload", urls.payload!, "--id", "agent-\(index)", "--concurrency", "16",
                "--lease-duration", "4", "--heartbeat-interval", "1", "--reaper-interval", "2", "--log-level", "error",
            ] + extra
            try process.run()
            return process
        }
        // The victim's tasks take 200 ms each, so it holds running tasks when it is killed. The test polls
        // every two seconds: moto serves one request at a time, and each check reads the session (about
        // 90 ms of moto per 500 tasks).
        let victim = try start(0, ["--exec", "sleep 0.2; cat"])
        defer { if victim.isRunning { kill(victim.processIdentifier, SIGKILL) } }
        try await client.submit(session.id, inputs: inputs)
        try await waitUntil(timeout: .seconds(120), every: .seconds(2), "agent-0 owns tasks") {
            try await backends.state.tasks(session.id, state: .processing, after: nil, limit: 1_000).items.contains { $0.owner == AgentID("agent-0") }
        }
        let survivor = try start(1, [])
        defer { if survivor.isRunning { kill(survivor.processIdentifier, SIGKILL) } }
        try await waitUntil(timeout: .seconds(300), every: .seconds(2), "a tenth of the tasks finished and agent-0 owns some") {
            guard try await client.counts(session.id)[.finished] >= total / 10 else { return false }
            return try await backends.state.tasks(session.id, state: .processing, after: nil, limit: 1_000).items.contains { $0.owner == AgentID("agent-0") }
        }
        kill(victim.processIdentifier, SIGKILL)
        victim.waitUntilExit()
        #expect(victim.terminationReason == .uncaughtSignal)

        let retried = try await expectEveryOutput(client, session.id, inputs: inputs, pollInterval: .seconds(2), timeout: .seconds(600))
        #expect(retried > 0, "the victim's tasks came back through the reaper")
        survivor.terminate()
        survivor.waitUntilExit()
        #expect(survivor.terminationStatus == 0, "SIGTERM must drain and exit 0")
    }
}
