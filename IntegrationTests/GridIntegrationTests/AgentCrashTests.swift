import Foundation
import GridKernel
import GridPlugins
import Logging
import Testing

@testable import HTCCore

/// The whole embedded grid with real `htc-agent` processes on one SQLite file.
@Suite(.serialized) struct AgentCrashTests {
    private func startAgent(_ index: Int, grid: String, directory: URL, arguments extra: [String] = []) throws -> Process {
        let process = Process()
        process.executableURL = try AgentPool.agentBinary()
        process.arguments = [
            "--grid", grid, "--id", "agent-\(index)", "--concurrency", "32",
            "--lease-duration", "2", "--heartbeat-interval", "0.5", "--reaper-interval", "0.5",
            "--record-runs", directory.appendingPathComponent("runs-\(index).txt").path,
            "--log-level", "warning",
        ] + extra
        try process.run()
        return process
    }

    @Test func sigkilledAgentLosesNoTaskAndDuplicatesNoResult() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-crash-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let grid = "sqlite://" + directory.appendingPathComponent("grid.db").path
        let backends = try await BackendRegistry.installed.makeBackends(GridURLs(grid: grid), context: BackendContext())
        let client = GridClient(backends: backends)
        let session = try await client.createSession()
        let total = 20_000
        let inputs = (0..<total).map { Workload.input(index: $0, bytes: 64) }

        // The victim's tasks take 200 ms each (an echo through a child process), so it always holds
        // running tasks when it is killed; the survivor echoes in process.
        let victim = try startAgent(0, grid: grid, directory: directory, arguments: ["--exec", "sleep 0.2; cat"])
        defer { if victim.isRunning { kill(victim.processIdentifier, SIGKILL) } }
        try await client.submit(session.id, inputs: inputs)
        // The survivor starts only once the victim holds tasks: on a loaded machine a slow-starting victim
        // could otherwise find the survivor done with everything, and the kill below would never happen.
        try await waitUntil(timeout: .seconds(120), "agent-0 owns tasks") {
            let processing = try await backends.state.tasks(session.id, state: .processing, after: nil, limit: 1_000)
            return processing.items.contains { $0.owner == AgentID("agent-0") }
        }
        let survivor = try startAgent(1, grid: grid, directory: directory)
        defer { if survivor.isRunning { kill(survivor.processIdentifier, SIGKILL) } }

        // Kill the victim while it owns running tasks, a quarter of the way through.
        try await waitUntil(timeout: .seconds(300), "a quarter of the tasks finished and agent-0 owns some") {
            guard try await client.counts(session.id)[.finished] >= total / 4 else { return false }
            let processing = try await backends.state.tasks(session.id, state: .processing, after: nil, limit: 1_000)
            return processing.items.contains { $0.owner == AgentID("agent-0") }
        }
        kill(victim.processIdentifier, SIGKILL)
        victim.waitUntilExit()
        #expect(victim.terminationReason == .uncaughtSignal)

        let retried = try await expectEveryOutput(client, session.id, inputs: inputs, pollInterval: .milliseconds(50), timeout: .seconds(180))
        // The tasks the victim held came back through the reaper: the recovery path really ran.
        #expect(retried > 0)

        survivor.terminate()
        survivor.waitUntilExit()
        #expect(survivor.terminationStatus == 0, "SIGTERM must drain and exit 0")
    }
}

/// Waits until every task of the session is terminal, then checks that all finished, that each is
/// listed once with the output its input gives (an echo), and returns how many were retried.
func expectEveryOutput(
    _ client: GridClient, _ session: SessionID, inputs: [[UInt8]], pollInterval: Duration, timeout: Duration
) async throws -> Int {
    let total = inputs.count
    let counts = try await client.wait(for: session, expected: total, pollInterval: pollInterval, timeout: timeout)
    #expect(counts[.finished] == total)
    #expect(counts[.pending] == 0 && counts[.processing] == 0 && counts[.failed] == 0)
    var seen = Set<Int>()
    var retried = 0
    var cursor: String?
    repeat {
        let page = try await client.results(session, state: .finished, after: cursor, limit: 1_000)
        for result in page.items {
            #expect(seen.insert(result.record.id.index).inserted, "task \(result.record.id) listed twice")
            #expect(result.output == inputs[result.record.id.index], "wrong output for \(result.record.id)")
            if result.record.retries > 0 { retried += 1 }
        }
        cursor = page.next
    } while cursor != nil
    #expect(seen.count == total, "outputs verified: \(seen.count) of \(total)")
    return retried
}

/// Polls `condition` every `interval` until it holds; records an issue and throws after `timeout`.
func waitUntil(timeout: Duration, every interval: Duration = .milliseconds(10), _ what: String, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("timed out waiting until \(what)")
            throw CancellationError()
        }
        try await Task.sleep(for: interval)
    }
}
