import Foundation
import GridKernel
import GridPlugins
import Testing

@testable import HTCCore

@Suite struct CommandLineTests {
    @Test func flagsWinOverEnvironmentWhichWinsOverDefaults() throws {
        let command = try AgentCommand.parse(["--concurrency", "3", "--grid", "memory://x"])
        let environment = Environment([
            "HTC_CONCURRENCY": "9", "HTC_LEASE_DURATION": "12", "HTC_HEARTBEAT_INTERVAL": "2", "MY_POD_NAME": "pod-7",
            "HTC_SUBMISSION_GRACE": "30",
        ])
        let (configuration, reaper) = try command.agentConfiguration(environment)
        #expect(configuration.concurrency == 3)
        #expect(configuration.leaseDuration == .seconds(12))
        #expect(configuration.heartbeatInterval == .seconds(2))
        #expect(configuration.id == AgentID("pod-7"))
        #expect(reaper?.interval == .seconds(5))
        #expect(reaper?.submissionGrace == .seconds(30))
        #expect(try AgentCommand.parse(["--reaper-interval", "0"]).agentConfiguration(Environment([:])).reaper == nil)
        #expect(try AgentCommand.parse([]).agentConfiguration(Environment([:])).reaper?.submissionGrace == .seconds(120))
        #expect(command.grid.urls(environment) == GridURLs(grid: "memory://x"))
    }

    @Test func badEnvironmentValuesAreNamed() throws {
        let command = try AgentCommand.parse([])
        #expect {
            _ = try command.agentConfiguration(Environment(["HTC_CONCURRENCY": "many"]))
        } throws: { error in
            (error as? GridError)?.message.contains("HTC_CONCURRENCY") == true
        }
        #expect {
            _ = try command.agentConfiguration(Environment(["HTC_HEARTBEAT_INTERVAL": "20"]))
        } throws: { error in
            (error as? GridError)?.code == .invalidArgument
        }
    }

    @Test func componentURLsOverrideTheGridShorthand() throws {
        let urls = GridURLs(grid: "sqlite:///tmp/a.db", payload: "file:///tmp/p")
        let resolved = try urls.resolved()
        #expect(resolved.queue.scheme == "sqlite")
        #expect(resolved.state.path == "/tmp/a.db")
        #expect(resolved.payload.scheme == "file")
        #expect(throws: GridError.self) { try GridURLs(queue: "memory://").resolved() }
    }

    @Test func unknownSchemeListsTheKnownOnes() async throws {
        do {
            _ = try await BackendRegistry.installed.makeQueue(try BackendURL("nope://x"), context: BackendContext())
            Issue.record("an unknown scheme must be rejected")
        } catch let error as GridError {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("sqlite://"))
            #expect(error.message.contains("memory://"))
        }
    }

    @Test func passwordsAreMaskedInURLDescriptions() throws {
        let url = try BackendURL("redis://user:s3cret@localhost:6379/0")
        #expect(url.password == "s3cret")
        #expect(!url.description.contains("s3cret"))
    }

    @Test func workloadInputsAreDistinctAndSized() {
        for bytes in [1, 8, 64, 1000] {
            let inputs = (0..<200).map { Workload.input(index: $0, bytes: bytes) }
            #expect(inputs.allSatisfy { $0.count == bytes })
            if bytes >= 8 { #expect(Set(inputs).count == 200) }
        }
    }

    @Test func memoryBenchVerifiesEveryOutput() async throws {
        let workload = Workload(backend: .memory, urls: GridURLs(), tasks: 2_000, agents: 2, payloadBytes: 64, concurrency: 16)
        let result = try await workload.run(logger: .init(label: "test"), progress: nil)
        #expect(result.verified == 2_000)
        #expect(result.lost == 0)
        #expect(result.duplicates == 0)
        #expect(result.latency_ms.p99 >= result.latency_ms.p50)
    }

    @Test func progressLineShowsEveryCount() {
        var counts = StateCounts()
        counts[.finished] = 1_500
        counts[.processing] = 12
        counts[.failed] = 1
        let line = ProgressReporter.render(counts: counts, submitted: 100_000, total: 100_000, rate: 20_000)
        #expect(line.contains("1,501/100,000"))
        #expect(line.contains("running 12"))
        #expect(line.contains("failed 1"))
        #expect(line.contains("20,000 tasks/s"))
    }
}

@Suite struct BenchOutputTests {
    @Test func jsonLineHasTheDocumentedKeysInOrderAndParses() throws {
        let result = Workload.Result(
            backend: "sqlite", tasks: 20_000, agents: 2, payload_bytes: 64, seconds: 0.812, tasks_per_second: 24_631,
            submit_per_second: 150_000, latency_ms: .init(p50: 310.5, p99: 640.25), verified: 20_000, lost: 0, duplicates: 0, failed: 0
        )
        let line = result.jsonLine
        let keys = ["backend", "tasks", "agents", "payload_bytes", "seconds", "tasks_per_second", "submit_per_second", "latency_ms", "verified", "lost", "duplicates"]
        let positions = keys.map { line.range(of: "\"\($0)\":")?.lowerBound }
        #expect(positions.allSatisfy { $0 != nil })
        #expect(positions.compactMap { $0 } == positions.compactMap { $0 }.sorted())
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        #expect(object?["tasks_per_second"] as? Int == 24_631)
        #expect((object?["latency_ms"] as? [String: Any])?["p99"] as? Double == 640.25)
    }
}

@Suite struct CommandDefinitionTests {
    @Test(arguments: [
        ["demo"], ["bench", "--backend", "memory"], ["submit", "tasks.jsonl"], ["status", "s1"], ["wait", "s1"],
        ["results", "s1", "--task-state", "failed"], ["cancel", "s1"],
    ])
    func everySubcommandParses(_ arguments: [String]) throws {
        _ = try HTCCommand.parseAsRoot(arguments + ["--grid", "memory://x"].filter { _ in arguments[0] != "demo" })
    }

    @Test func agentParses() throws {
        _ = try AgentCommand.parse(["--grid", "sqlite:///tmp/g.db", "--exec", "cat", "--concurrency", "2"])
    }
}

@Suite struct RemoteOptionPlacementTests {
    @Test func serverAndKeyMayComeBeforeTheSubcommand() throws {
        let moved = HTCCommand.remoteOptionsAfterSubcommand(["--server", "http://grid:8080", "--api-key=k1", "submit", "--json", "tasks.jsonl"])
        #expect(moved == ["submit", "--server", "http://grid:8080", "--api-key=k1", "--json", "tasks.jsonl"])
        let command = try #require(try HTCCommand.parseAsRoot(moved) as? SubmitCommand)
        #expect(command.options.server == "http://grid:8080")
        #expect(command.options.apiKey == "k1")
        let status = try HTCCommand.parseAsRoot(HTCCommand.remoteOptionsAfterSubcommand(["--server=http://g:1", "sessions"]))
        #expect((status as? SessionsCommand) != nil)
        // Anything else is left alone.
        for arguments in [["submit", "--server", "http://g", "f"], ["--server"], ["demo", "--tasks", "10"], []] {
            #expect(HTCCommand.remoteOptionsAfterSubcommand(arguments) == arguments)
        }
    }
}
