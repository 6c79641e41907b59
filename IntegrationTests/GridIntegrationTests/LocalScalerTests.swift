import Foundation
import GridKernel
import GridPlugins
import Logging
import Testing

@testable import HTCCore

/// The local process scaler with real `htc-agent` processes on one SQLite file.
@Suite(.serialized) struct LocalScalerTests {
    private struct Grid {
        let directory: URL
        let url: String
        let backends: GridBackends
        let client: GridClient

        static func make() async throws -> Grid {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-scaler-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let url = "sqlite://" + directory.appendingPathComponent("grid.db").path
            let backends = try await BackendRegistry.installed.makeBackends(GridURLs(grid: url), context: BackendContext())
            return Grid(directory: directory, url: url, backends: backends, client: GridClient(backends: backends))
        }

        func scaler(exec: String) throws -> LocalProcessScaler {
            let runs = directory.appendingPathComponent("runs")
            try FileManager.default.createDirectory(at: runs, withIntermediateDirectories: true)
            return try LocalProcessScaler(
                binary: try AgentPool.agentBinary(),
                arguments: [
                    "--grid", url, "--concurrency", "4", "--exec", exec, "--lease-duration", "10", "--heartbeat-interval", "0.5",
                    "--reaper-interval", "0.5", "--log-level", "warning",
                ],
                perAgent: { ["--record-runs", runs.appendingPathComponent("\($0).txt").path] },
                directory: directory.appendingPathComponent("agents")
            )
        }

        /// Handler runs per task id, from every agent's record file.
        func runs() throws -> [String: Int] {
            let runs = directory.appendingPathComponent("runs")
            var counts: [String: Int] = [:]
            for file in try FileManager.default.contentsOfDirectory(atPath: runs.path) {
                let text = try String(contentsOfFile: runs.appendingPathComponent(file).path, encoding: .utf8)
                for line in text.split(separator: "\n") { counts[String(line), default: 0] += 1 }
            }
            return counts
        }
    }

    @Test func aBurstGrowsThePoolToTheMaximumAndIdleTimeShrinksItToTheMinimum() async throws {
        let grid = try await Grid.make()
        defer { try? FileManager.default.removeItem(at: grid.directory) }
        let scaler = try grid.scaler(exec: "sleep 0.05; cat")
        let autoscaler = try Autoscaler(
            queue: grid.backends.queue, scaler: scaler,
            configuration: ScalingConfiguration(tasksPerAgent: 4, minimum: 1, maximum: 3, scaleInCooldown: .seconds(1)),
            interval: .milliseconds(100)
        )
        try await autoscaler.tick()
        #expect(scaler.running.count == 1, "an idle grid runs the minimum")
        let loop = Task { await autoscaler.run() }

        let session = try await grid.client.createSession()
        let total = 240
        let inputs = (0..<total).map { Workload.input(index: $0, bytes: 32) }
        let ids = try await grid.client.submit(session.id, inputs: inputs)
        try await waitUntil(timeout: .seconds(60), "the pool reached 3 agents") { scaler.running.count == 3 }
        let counts = try await grid.client.wait(for: session.id, expected: total, timeout: .seconds(180))
        #expect(counts[.finished] == total)
        try await waitUntil(timeout: .seconds(60), "the pool shrank back to 1 agent") { scaler.running.count == 1 }
        loop.cancel()
        await loop.value
        await scaler.stopAll()

        #expect(scaler.peak == 3)
        #expect(scaler.started == 3, "no agent was replaced: none exited on its own")
        var verified = 0
        for (id, input) in zip(ids, inputs) where try await grid.client.output(id) == input { verified += 1 }
        #expect(verified == total, "every output is its input")
        let runs = try grid.runs()
        #expect(runs.count == total && runs.values.allSatisfy { $0 == 1 }, "each task ran exactly once: \(runs.count) ids")
    }

    @Test func scalingInStopsOnlyIdleAgents() async throws {
        let grid = try await Grid.make()
        defer { try? FileManager.default.removeItem(at: grid.directory) }
        let scaler = try grid.scaler(exec: "sleep 3; cat")
        try await scaler.apply(desired: 2)
        #expect(scaler.running.count == 2)
        let session = try await grid.client.createSession()
        let id = try #require(try await grid.client.submit(session.id, inputs: [[7]]).first)
        var owner: String?
        try await waitUntil(timeout: .seconds(60), "one agent runs the task and says it is busy") {
            let record = try await grid.client.task(id)
            guard record.state == .processing, let name = record.owner?.rawValue else { return false }
            owner = name
            let status = try? String(contentsOf: grid.directory.appendingPathComponent("agents/\(name).status"), encoding: .utf8)
            return status?.hasPrefix("busy") == true
        }
        try await scaler.apply(desired: 0)
        #expect(scaler.running == [try #require(owner)], "the busy agent keeps running; the idle one was stopped")
        await scaler.stopAll()
        // The busy agent drained: its task finished before it exited.
        let record = try await grid.client.task(id)
        #expect(record.state == .finished)
        #expect(try await grid.client.output(id) == [7])
    }
}
