import Foundation
import GridKernel
import Testing

@testable import HTCCore

/// HTC-Grid's Python connector (its exact HTTP calls, encodings and Redis data-plane reads and writes,
/// IntegrationTests/htcgrid/connector_contract.py) against a real `htc-server --htcgrid-compat`, a real
/// `htc-agent --lambda` and the redis-server of scripts/with-redis.sh (HTC_TEST_REDIS).
@Suite(.serialized) struct HTCGridConnectorTests {
    static var redis: String? { ProcessInfo.processInfo.environment["HTC_TEST_REDIS"].flatMap { $0.isEmpty ? nil : $0 } }
    static var underMake: Bool { ProcessInfo.processInfo.environment["HTC_TEST_SUITE"] == "make" }

    @Test(.enabled(if: redis != nil || underMake, "HTC_TEST_REDIS is unset: run under scripts/with-redis.sh (make test does)"))
    func theConnectorWorksUnchanged() async throws {
        let redis = try #require(Self.redis, "HTC_TEST_REDIS is unset under make test; scripts/with-redis.sh should have started redis-server")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("htcgrid/connector_contract.py")
        let binaries = try AgentPool.agentBinary().deletingLastPathComponent()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script.path, "--bin", binaries.path, "--redis", redis]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        // Read the whole output on a thread of its own (the read blocks until the script exits).
        let output: String = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                let data = pipe.fileHandleForReading.readDataToEndOfFile()
                continuation.resume(returning: String(decoding: data, as: UTF8.self))
            }
        }
        process.waitUntilExit()
        print(output)
        #expect(process.terminationStatus == 0, "the connector contract failed:\n\(output)")
        #expect(output.contains("ok: htc-server and htc-agent stopped cleanly"), "\(output)")
    }
}
