import Foundation
import GridKernel
import GridPlugins
import Testing

@testable import HTCCore

/// Worker processes never outlive their task or their agent: `htc-agent --exec` with commands that
/// ignore SIGTERM, and an agent killed with SIGKILL while its commands run.
@Suite(.serialized) struct RunawayWorkerTests {
    /// A marker that makes the test's worker processes findable in `/proc`: a `sleep` of an odd length.
    private static func marker() -> String { "sleep 9\(Int.random(in: 10_000...99_999)).5" }

    /// The pids of processes whose command line starts with `text` (the `sleep` itself, not the shells
    /// that started it).
    private static func processes(matching text: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> Int32? in
            guard let pid = Int32(entry),
                let raw = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"), !raw.isEmpty
            else { return nil }
            let command = String(decoding: raw.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
            // Zombies have an empty command line and are skipped above; their parent reaps them.
            return command.hasPrefix(text) ? pid : nil
        }
    }

    private func startAgent(_ grid: GridUnderTest, command: String, concurrency: Int) throws -> Process {
        try grid.start("htc-agent", [
            "--id", "runaway", "--exec", command, "--concurrency", "\(concurrency)", "--lease-duration", "10",
            "--heartbeat-interval", "1", "--log-level", "warning",
        ])
    }

    /// `--timeout 2 --max-retries 0` with a worker that ignores SIGTERM, behind a shell that does not:
    /// the task fails at its limit and no process of it is left. (It used to stay `processing` for
    /// good while the orphaned worker ran on, re-parented to init.)
    @Test func aWorkerThatIgnoresSIGTERMEndsAtItsTimeLimit() async throws {
        let grid = try await GridUnderTest.start(.sqlite, name: "sigterm")
        defer { grid.stop() }
        let marker = Self.marker()
        defer { for pid in Self.processes(matching: marker) { kill(pid, SIGKILL) } }
        let agent = try startAgent(grid, command: "sh -c \"trap '' TERM; exec \(marker)\"; echo unreachable", concurrency: 1)
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }
        let client = GridClient(backends: grid.backends)
        let session = try await client.createSession(SessionOptions(maxRetries: 0, taskTimeout: .seconds(2)))
        let id = try await client.submit(session.id, inputs: [[1]])[0]
        try await waitUntil(timeout: .seconds(60), "the worker runs") { !Self.processes(matching: marker).isEmpty }
        try await waitUntil(timeout: .seconds(30), "the task ends at its time limit") { try await client.task(id).state.isTerminal }
        let record = try await client.task(id)
        #expect(record.state == .failed)
        #expect(record.lastError?.contains("time limit") == true, "\(record.lastError ?? "no error")")
        try await waitUntil(timeout: .seconds(10), "no worker process is left") { Self.processes(matching: marker).isEmpty }
        agent.terminate()
        agent.waitUntilExit()
        #expect(agent.terminationStatus == 0)
    }

    /// An agent SIGKILLed while four of its commands run: every one of them dies with it.
    @Test func aKilledAgentLeavesNoWorkerBehind() async throws {
        let grid = try await GridUnderTest.start(.sqlite, name: "orphans")
        defer { grid.stop() }
        let marker = Self.marker()
        defer { for pid in Self.processes(matching: marker) { kill(pid, SIGKILL) } }
        let agent = try startAgent(grid, command: "\(marker); cat", concurrency: 4)
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }
        let client = GridClient(backends: grid.backends)
        let session = try await client.createSession()
        try await client.submit(session.id, inputs: (0..<4).map { [UInt8($0)] })
        try await waitUntil(timeout: .seconds(60), "four workers run") { Self.processes(matching: marker).count == 4 }
        kill(agent.processIdentifier, SIGKILL)
        // Not `waitUntilExit()`: Foundation learns of the exit when a socket the agent inherited closes,
        // and the agent's orphaned workers would hold it open, hanging the test instead of failing it.
        try await waitUntil(timeout: .seconds(10), every: .milliseconds(10), "the agent is dead") {
            let state = (try? String(contentsOfFile: "/proc/\(agent.processIdentifier)/stat", encoding: .utf8))?.split(separator: " ").dropFirst(2).first
            return state == nil || state == "Z"
        }
        try await waitUntil(timeout: .seconds(10), "the killed agent's workers are gone") { Self.processes(matching: marker).isEmpty }
    }

    /// 300 tasks, one of which writes a 70 MB output (allowed by `--max-output`, over the payload
    /// store's 64 MiB): that task fails with a message, the other 299 finish. (94 tasks used to stay
    /// `processing` for good while the agent retried its whole flush batch.)
    @Test func anOutputOverThePayloadLimitFailsOnlyItsOwnTask() async throws {
        let grid = try await GridUnderTest.start(.sqlite, name: "bigoutput")
        defer { grid.stop() }
        let agent = try grid.start("htc-agent", [
            "--id", "big", "--concurrency", "8", "--max-output", "100000000", "--log-level", "error",
            "--exec", "x=$(cat); if [ \"$x\" = big ]; then head -c 73400320 /dev/zero; else printf '%s' \"$x\"; fi",
        ])
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }
        let client = GridClient(backends: grid.backends)
        let session = try await client.createSession()
        let inputs = (0..<300).map { Array(($0 == 150 ? "big" : "task \($0)").utf8) }
        let ids = try await client.submit(session.id, inputs: inputs)
        try await waitUntil(timeout: .seconds(180), every: .milliseconds(100), "every task ended") {
            let counts = try await client.counts(session.id)
            return counts[.finished] + counts[.failed] == 300
        }
        let big = try await client.task(ids[150])
        #expect(big.state == .failed)
        #expect(big.lastError?.contains("the task's output could not be stored") == true, "\(big.lastError ?? "no error")")
        #expect(big.lastError?.contains("64 MiB") == true, "\(big.lastError ?? "no error")")
        for id in ids where id != ids[150] {
            #expect(try await client.output(id) == inputs[id.index])
        }
        agent.terminate()
        agent.waitUntilExit()
        #expect(agent.terminationStatus == 0)
    }
}
