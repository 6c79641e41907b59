import Foundation
import GridKernel
import Testing

@testable import HTCCore

/// `htc wait --server` across a restart of `htc-server` (SIGKILL, then a new process on the same port and
/// database, as Kubernetes replaces a pod behind its Service): the command keeps retrying, says so on
/// stderr, and ends with the right counts once the server is back; an `htc submit --server` started while
/// the server is down goes through once it is back, and `htc results --server` reads every output.
@Suite(.serialized) struct ServerRestartTests {
    private func binary(_ name: String) throws -> URL {
        try AgentPool.agentBinary().deletingLastPathComponent().appendingPathComponent(name)
    }

    /// Starts `htc` with the API key in the environment; stdout and stderr go to files.
    private func htc(_ arguments: [String], key: String, stdout: URL, stderr: URL) throws -> Process {
        _ = FileManager.default.createFile(atPath: stdout.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderr.path, contents: nil)
        let process = Process()
        process.executableURL = try binary("htc")
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["HTC_API_KEY"] = key
        process.environment = environment
        process.standardOutput = try FileHandle(forWritingTo: stdout)
        process.standardError = try FileHandle(forWritingTo: stderr)
        try process.run()
        return process
    }

    private func text(_ file: URL) -> String {
        (try? String(contentsOf: file, encoding: .utf8)) ?? ""
    }

    @Test func htcWaitSurvivesAServerRestart() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-restart-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let grid = "sqlite://" + directory.appendingPathComponent("grid.db").path
        let keys = directory.appendingPathComponent("keys").path
        try "acme:acme-secret\n".write(toFile: keys, atomically: true, encoding: .utf8)
        let serverArguments = ["--grid", grid, "--api-keys", keys]

        let first = try await ServerProcess.start(executable: try binary("htc-server"), arguments: serverArguments)
        defer { first.kill() }
        let port = try #require(first.base.port)

        // Tasks that run until the test lets them finish, so the session is still open across the restart.
        let gate = directory.appendingPathComponent("go")
        let agent = Process()
        agent.executableURL = try binary("htc-agent")
        agent.arguments = [
            "--grid", grid, "--exec", "while [ ! -e '\(gate.path)' ]; do sleep 0.05; done; cat", "--concurrency", "4", "--log-level", "warning",
        ]
        try agent.run()
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }

        let total = 6
        let inputs = directory.appendingPathComponent("tasks.jsonl")
        try (0..<total).map { "task \($0)" }.joined(separator: "\n").write(to: inputs, atomically: true, encoding: .utf8)
        let submitOut = directory.appendingPathComponent("submit.out")
        let submit = try htc(
            ["submit", inputs.path, "--server", first.base.absoluteString, "--json"], key: "acme-secret",
            stdout: submitOut, stderr: directory.appendingPathComponent("submit.err"))
        submit.waitUntilExit()
        #expect(submit.terminationStatus == 0)
        let submitted = try #require(JSONSerialization.jsonObject(with: Data(text(submitOut).utf8)) as? [String: Any])
        let session = try #require(submitted["session_id"] as? String)
        try await waitUntil(timeout: .seconds(60), "the agent runs 4 tasks") {
            let (_, data) = await first.request("GET", "/v1/sessions/\(session)", headers: ["x-api-key": "acme-secret"])
            let counts = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["counts"] as? [String: Int]
            return counts?["processing"] == 4
        }

        let waitOut = directory.appendingPathComponent("wait.out")
        let waitErr = directory.appendingPathComponent("wait.err")
        let wait = try htc(
            ["wait", session, "--server", first.base.absoluteString, "--json", "--timeout", "120"],
            key: "acme-secret", stdout: waitOut, stderr: waitErr)
        defer { if wait.isRunning { kill(wait.processIdentifier, SIGKILL) } }

        // The server goes away while `htc wait` polls it.
        first.kill()
        try await waitUntil(timeout: .seconds(30), "htc wait notices the server is gone") {
            !wait.isRunning || text(waitErr).contains("retrying")
        }
        #expect(wait.isRunning, "htc wait must keep retrying while the server is down; it exited with \(wait.terminationStatus): \(text(waitErr))")
        // A submission started while the server is down waits for it too.
        let lateOut = directory.appendingPathComponent("late.out")
        let lateErr = directory.appendingPathComponent("late.err")
        let late = try htc(["submit", inputs.path, "--server", first.base.absoluteString, "--json"], key: "acme-secret", stdout: lateOut, stderr: lateErr)
        defer { if late.isRunning { kill(late.processIdentifier, SIGKILL) } }
        try await waitUntil(timeout: .seconds(30), "htc submit finds no server") { !late.isRunning || text(lateErr).contains("retrying") }
        #expect(late.isRunning, "htc submit must keep retrying while the server is down: \(text(lateErr))")

        // A new server on the same port and database; then the tasks may finish.
        let second = try await ServerProcess.start(executable: try binary("htc-server"), arguments: serverArguments, port: port)
        defer { second.kill() }
        try await waitUntil(timeout: .seconds(60), "htc submit ends") { !late.isRunning }
        #expect(late.terminationStatus == 0, "stderr: \(text(lateErr))")
        let lateSession = try #require(
            (try? JSONSerialization.jsonObject(with: Data(text(lateOut).utf8)) as? [String: Any])?["session_id"] as? String, "stdout: \(text(lateOut))")
        let (_, lateData) = await second.request("GET", "/v1/sessions/\(lateSession)", headers: ["x-api-key": "acme-secret"])
        let lateRecord = try #require(try JSONSerialization.jsonObject(with: lateData) as? [String: Any])
        #expect(lateRecord["task_count"] as? Int == total, "the submission sent again created no task twice")
        _ = FileManager.default.createFile(atPath: gate.path, contents: nil)
        try await waitUntil(timeout: .seconds(90), "htc wait ends") { !wait.isRunning }

        #expect(wait.terminationStatus == 0, "stderr: \(text(waitErr))")
        let counts = try #require(JSONSerialization.jsonObject(with: Data(text(waitOut).utf8)) as? [String: Int], "stdout: \(text(waitOut))")
        #expect(counts["finished"] == total)
        #expect(counts["failed"] == 0)
        #expect(text(waitErr).contains("answers again"), "stderr: \(text(waitErr))")
        print("htc wait across a server restart, stderr:\n\(text(waitErr))")

        // Every output reads back through the new server.
        let resultsOut = directory.appendingPathComponent("results.out")
        let results = try htc(
            ["results", session, "--server", second.base.absoluteString, "--all", "--json"], key: "acme-secret", stdout: resultsOut,
            stderr: directory.appendingPathComponent("results.err"))
        results.waitUntilExit()
        #expect(results.terminationStatus == 0)
        let outputs = text(resultsOut).split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["output"] as? String
        }
        #expect(outputs == (0..<total).map { "task \($0)" })

        second.process.terminate()
        second.process.waitUntilExit()
        agent.terminate()
        agent.waitUntilExit()
    }
}
