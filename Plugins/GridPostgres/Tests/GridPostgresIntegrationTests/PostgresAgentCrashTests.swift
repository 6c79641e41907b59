import Foundation
import GridKernel
import GridPostgres
import Testing

/// The whole grid on PostgreSQL with real `htc-postgres-agent` processes: the plugin's agent
/// executable, built by this package with the grid's `AgentCommand` and the plugin.
@Suite(.serialized, .enabled(if: enabled, "HTC_TEST_POSTGRES is unset: run through scripts/with-postgres.sh (or make test)"))
struct PostgresAgentCrashTests {
    /// `HTC_AGENT_BIN`, or `htc-postgres-agent` next to the test runner (`swift build --build-tests` builds both).
    private static func agentBinary() throws -> URL {
        if let path = ProcessInfo.processInfo.environment["HTC_POSTGRES_AGENT_BIN"], !path.isEmpty { return URL(fileURLWithPath: path) }
        let runner = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let candidate = runner.deletingLastPathComponent().appendingPathComponent("htc-postgres-agent")
        guard FileManager.default.isExecutableFile(atPath: candidate.path) else {
            throw GridError.notFound("htc-postgres-agent not found next to \(runner.path); run swift build --build-tests first")
        }
        return candidate
    }

    private func startAgent(_ index: Int, grid: String, directory: URL, arguments extra: [String] = []) throws -> Process {
        let process = Process()
        process.executableURL = try Self.agentBinary()
        process.arguments = [
            "--grid", grid, "--id", "agent-\(index)", "--concurrency", "32",
            "--lease-duration", "2", "--heartbeat-interval", "0.5", "--reaper-interval", "0.5",
            "--record-runs", directory.appendingPathComponent("runs-\(index).txt").path,
            "--log-level", "warning",
        ] + extra
        try process.run()
        return process
    }

    /// The input of task `index`: its index, then filler up to 64 bytes, so a mixed-up output is caught.
    private static func input(_ index: Int) -> [UInt8] {
        var value = Array("\(index):".utf8)
        while value.count < 64 { value.append(UInt8(ascii: "a") + UInt8(value.count % 26)) }
        return value
    }

    @Test func sigkilledAgentLosesNoTaskAndDuplicatesNoResult() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-pg-crash-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let grid = (ProcessInfo.processInfo.environment["HTC_TEST_POSTGRES"] ?? "") + "?schema=crash_\(UUID().uuidString.prefix(8).lowercased())"
        let url = try BackendURL(grid)
        let context = BackendContext()
        let plugin = PostgresPlugin()
        let backends = GridBackends(
            queue: try await plugin.makeQueue(url, context: context),
            state: try await plugin.makeStateStore(url, context: context),
            payloads: try await plugin.makePayloadStore(url, context: context)
        )
        let client = GridClient(backends: backends)
        let session = try await client.createSession()
        let total = 20_000
        let inputs = (0..<total).map(Self.input)

        // The victim's tasks take 200 ms each (an echo through a child process), so it always holds
        // running tasks when it is killed; the survivor echoes in process.
        let victim = try startAgent(0, grid: grid, directory: directory, arguments: ["--exec", "sleep 0.2; cat"])
        defer { if victim.isRunning { kill(victim.processIdentifier, SIGKILL) } }
        try await client.submit(session.id, inputs: inputs)
        // The survivor starts only once the victim holds tasks, so the kill below always hits some.
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

        let counts = try await client.wait(for: session.id, expected: total, pollInterval: .milliseconds(50), timeout: .seconds(180))
        #expect(counts[.finished] == total)
        #expect(counts[.pending] == 0 && counts[.processing] == 0 && counts[.failed] == 0)

        var seen = Set<Int>()
        var retried = 0
        var cursor: String?
        repeat {
            let page = try await client.results(session.id, state: .finished, after: cursor, limit: 5_000)
            for result in page.items {
                #expect(seen.insert(result.record.id.index).inserted, "task \(result.record.id) listed twice")
                #expect(result.output == inputs[result.record.id.index], "wrong output for \(result.record.id)")
                if result.record.retries > 0 { retried += 1 }
            }
            cursor = page.next
        } while cursor != nil
        #expect(seen.count == total)
        // The tasks the victim held came back through the reaper: the recovery path really ran.
        #expect(retried > 0)
        // Every message was acknowledged once its task finished: nothing is left in the queue.
        let depth = try await backends.queue.depth()
        #expect(depth.values.reduce(0) { $0 + $1.waiting + $1.inFlight } == 0)

        survivor.terminate()
        survivor.waitUntilExit()
        #expect(survivor.terminationStatus == 0, "SIGTERM must drain and exit 0")
    }
}

/// Run when a server is given, and under `make test` (where a missing server fails).
private let enabled = ProcessInfo.processInfo.environment["HTC_TEST_POSTGRES"].map { !$0.isEmpty } ?? false
    || ProcessInfo.processInfo.environment["HTC_TEST_SUITE"] == "make"

func waitUntil(timeout: Duration, _ what: String, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("timed out waiting until \(what)")
            throw CancellationError()
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}
