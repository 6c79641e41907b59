import Foundation
import GridKernel
import Testing

@testable import HTCCore

/// `htc submit | wait | status | results | cancel` against a SQLite grid served by a real `htc-agent`
/// running a shell command per task.
@Suite(.serialized) struct CommandLineFlowTests {
    private static let worker = """
        x=$(cat); case "$x" in fail*) echo "cannot do $x" >&2; exit 4;; slow*) sleep 60;; esac; printf '%s' "$x" | tr a-z A-Z
        """

    private func binary(_ name: String) throws -> URL {
        try AgentPool.agentBinary().deletingLastPathComponent().appendingPathComponent(name)
    }

    /// Runs `htc` with arguments; returns its exit status and stdout.
    private func htc(_ arguments: [String], grid: String) async throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = try binary("htc")
        process.arguments = arguments + ["--grid", grid]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = await withCheckedContinuation { (continuation: CheckedContinuation<Data, Never>) in
            DispatchQueue.global().async { continuation.resume(returning: pipe.fileHandleForReading.readDataToEndOfFile()) }
        }
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    private func json(_ text: String) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test func submitWaitResultsFailureAndCancel() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-cli-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let grid = "sqlite://" + directory.appendingPathComponent("grid.db").path

        let agent = Process()
        agent.executableURL = try binary("htc-agent")
        agent.arguments = [
            "--grid", grid, "--exec", Self.worker, "--concurrency", "4",
            "--lease-duration", "2", "--heartbeat-interval", "0.5", "--log-level", "warning",
        ]
        try agent.run()
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }

        // 1. Twenty tasks, all succeed.
        let inputs = directory.appendingPathComponent("tasks.jsonl")
        try (0..<20).map { "task number \($0)" }.joined(separator: "\n").write(to: inputs, atomically: true, encoding: .utf8)
        let submitted = try await htc(["submit", inputs.path, "--json"], grid: grid)
        #expect(submitted.status == 0)
        let session = try #require(try json(submitted.output)["session_id"] as? String)
        let waited = try await htc(["wait", session, "--timeout", "60", "--json"], grid: grid)
        #expect(waited.status == 0)
        #expect(try json(waited.output)["finished"] as? Int == 20)
        let results = try await htc(["results", session, "--all", "--json"], grid: grid)
        let lines = results.output.split(separator: "\n").map { try? json(String($0)) }
        #expect(lines.count == 20)
        for line in lines {
            let id = try TaskID(try #require(line?["task_id"] as? String))
            #expect(line?["output"] as? String == "TASK NUMBER \(id.index)")
        }
        let status = try await htc(["status", session], grid: grid)
        #expect(status.output.contains("finished     20"))

        // 2. A failing command: failed without retry, with the tail of its stderr kept.
        let failing = directory.appendingPathComponent("fail.jsonl")
        try "fail me".write(to: failing, atomically: true, encoding: .utf8)
        let failedSession = try #require(try json(try await htc(["submit", failing.path, "--max-retries", "0", "--json"], grid: grid).output)["session_id"] as? String)
        #expect(try await htc(["wait", failedSession, "--timeout", "60"], grid: grid).status == 2)
        let failed = try json(try await htc(["results", failedSession, "--task-state", "failed", "--json"], grid: grid).output)
        #expect(failed["error"] as? String == "command exited with status 4: cannot do fail me")

        // 3. Cancelling a running task stops its process.
        let slow = directory.appendingPathComponent("slow.jsonl")
        try "slow one".write(to: slow, atomically: true, encoding: .utf8)
        let slowSession = try #require(try json(try await htc(["submit", slow.path, "--json"], grid: grid).output)["session_id"] as? String)
        try await waitUntil(timeout: .seconds(60), "the slow task runs") {
            try json(try await htc(["status", slowSession, "--json"], grid: grid).output)["processing"] as? Int == 1
        }
        let cancelled = try json(try await htc(["cancel", slowSession, "--json"], grid: grid).output)
        #expect(cancelled["cancelled_processing"] as? Int == 1)
        #expect(cancelled["total_cancelled_tasks"] as? Int == 1)
        // Within about one heartbeat the agent kills `sleep 60` and is free again: a new task runs.
        let after = directory.appendingPathComponent("after.jsonl")
        try "after".write(to: after, atomically: true, encoding: .utf8)
        let afterSession = try #require(try json(try await htc(["submit", after.path, "--json"], grid: grid).output)["session_id"] as? String)
        #expect(try await htc(["wait", afterSession, "--timeout", "30"], grid: grid).status == 0)
        #expect(try json(try await htc(["status", slowSession, "--json"], grid: grid).output)["cancelled"] as? Int == 1)

        agent.terminate()
        agent.waitUntilExit()
        #expect(agent.terminationStatus == 0)
    }
}
