import Foundation
import GridKernel
import Testing

@testable import HTCCore

/// Submissions cut off by SIGKILL — of `htc submit`, of `htc-server` in the middle of requests — leave no
/// session unfinished and no task twice, on SQLite and Redis. Sent again with their idempotency key,
/// they complete without a duplicate; left alone, the reaper repairs them after the grace period.
@Suite(.serialized) struct InterruptedSubmissionTests {
    static let kinds = [GridUnderTest.Kind.sqlite, .redis].filter(GridUnderTest.available)

    @Test(arguments: kinds)
    func aKilledSubmitterLeavesNoSessionUnfinished(_ kind: GridUnderTest.Kind) async throws {
        let grid = try await GridUnderTest.start(kind, name: "submitter")
        defer { grid.stop() }
        let client = GridClient(backends: grid.backends)
        let total = 100_000
        let file = grid.directory.appendingPathComponent("tasks.jsonl")
        try Data((0..<total).map { "{\"x\":\($0)}\n" }.joined().utf8).write(to: file)
        func input(_ index: Int) -> [UInt8] { Array("{\"x\":\(index)}".utf8) }

        // 1. Killed, then sent again with its key: complete, no index reserved twice.
        let resumed = try await client.createSession().id
        let submit = ["submit", file.path, "--session", resumed.rawValue, "--idempotency-key", "tasks-v1"]
        let first = try grid.start("htc", submit, output: FileHandle.nullDevice)
        try await killOnceRecordsExist(first, grid, resumed)
        let again = try grid.start("htc", submit, output: FileHandle.nullDevice)
        again.waitUntilExit()
        #expect(again.terminationStatus == 0, "the same submission sent again completes")
        #expect(try await client.session(resumed).taskCount == total, "no index is reserved twice")

        // 2. Killed and left alone: the reaper repairs it once the grace period passed.
        let abandoned = try await client.createSession().id
        let lone = try grid.start("htc", ["submit", file.path, "--session", abandoned.rawValue], output: FileHandle.nullDevice)
        try await killOnceRecordsExist(lone, grid, abandoned)
        let reserved = try await client.session(abandoned).taskCount
        #expect(reserved == total, "the killed submission reserved every index")

        let runs = grid.directory.appendingPathComponent("runs.txt")
        let agent = try grid.start(
            "htc-agent",
            ["--concurrency", "64", "--submission-grace", "2", "--reaper-interval", "0.5", "--record-runs", runs.path, "--log-level", "error"])
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }
        for session in [resumed, abandoned] {
            let counts = try await client.wait(for: session, pollInterval: .milliseconds(100), timeout: .seconds(240))
            #expect(counts.total == total, "every reserved index of \(session) has a task")
            #expect(counts[.pending] == 0 && counts[.processing] == 0)
        }
        let complete = try await client.counts(resumed)
        #expect(complete[.finished] == total, "the resumed submission's tasks all ran")
        let repaired = try await client.counts(abandoned)
        print("abandoned submission on \(kind): \(repaired[.finished]) finished, \(repaired[.failed]) failed by the repair")
        #expect(repaired[.failed] > 0, "the abandoned submission was repaired")
        try await expectOutputs(client, resumed, input)
        try await expectOutputs(client, abandoned, input)
        var cursor: String?
        repeat {
            let page = try await client.results(abandoned, state: .failed, after: cursor, limit: 10_000)
            for result in page.items {
                #expect([Reaper.neverWritten, Reaper.inputLost].contains(result.record.lastError), "error of \(result.record.id)")
            }
            cursor = page.next
        } while cursor != nil
        agent.terminate()
        agent.waitUntilExit()
        try expectNoRunTwice(runs)
    }

    @Test(arguments: kinds)
    func aKilledServerLeavesNoSessionUnfinished(_ kind: GridUnderTest.Kind) async throws {
        let grid = try await GridUnderTest.start(kind, name: "server")
        defer { grid.stop() }
        let client = GridClient(backends: grid.backends)
        let executable = try AgentPool.agentBinary().deletingLastPathComponent().appendingPathComponent("htc-server")
        let serverArguments = grid.arguments + ["--reaper-interval", "0.5", "--submission-grace", "2"]
        var server = try await ServerProcess.start(executable: executable, arguments: serverArguments, environment: grid.environment)
        defer { server.kill() }
        let perRequest = 10_000
        let sessions = 12
        let bodies = (0..<sessions).map { session in
            let tasks = (0..<perRequest).map { #"{"payload_json":{"s":\#(session),"x":\#($0)}}"# }
            return Data(#"{"tasks":[\#(tasks.joined(separator: ","))]}"#.utf8)
        }
        var ids: [SessionID] = []
        for _ in 0..<sessions {
            let (status, data) = await server.request("POST", "/v1/sessions", body: Data("{}".utf8))
            #expect(status == 201)
            let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            ids.append(try SessionID(try #require(object["id"] as? String)))
        }
        // Half the requests carry an idempotency key and are sent again after the restart.
        let keyed: @Sendable (Int) -> Bool = { $0 % 2 == 0 }
        let posted = Task { [server, ids] in
            await withTaskGroup(of: Void.self) { group in
                for (index, id) in ids.enumerated() {
                    group.addTask {
                        let headers = keyed(index) ? ["Idempotency-Key": "batch-\(index)"] : [:]
                        _ = await server.request("POST", "/v1/sessions/\(id.rawValue)/tasks", body: bodies[index], headers: headers)
                    }
                }
            }
        }
        try await waitUntil(timeout: .seconds(120), every: .milliseconds(5), "the server wrote some tasks") {
            var created = 0
            for id in ids { created += try await grid.backends.state.counts(id).total }
            return created > 0
        }
        server.kill()
        await posted.value
        var interrupted = 0
        for id in ids where try await client.counts(id).total < perRequest { interrupted += 1 }
        print("killed htc-server on \(kind) with \(interrupted) of \(sessions) submissions unfinished")
        #expect(interrupted > 0, "the server was killed in the middle of submissions")

        // The restarted server runs no reaper: on a loaded machine its start can take longer than the
        // grace period, and a reaper would then rightly repair the keyed submissions before they are
        // sent again (and refuse their key). The agent's reaper repairs the others afterwards.
        server = try await ServerProcess.start(executable: executable, arguments: grid.arguments + ["--reaper-interval", "0"], environment: grid.environment)
        for (index, id) in ids.enumerated() where keyed(index) {
            let (status, data) = await server.request(
                "POST", "/v1/sessions/\(id.rawValue)/tasks", body: bodies[index], headers: ["Idempotency-Key": "batch-\(index)"])
            #expect(status == 201, "the keyed request sent again: \(String(decoding: data, as: UTF8.self))")
            let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            #expect((object["task_ids"] as? [String]) == (0..<perRequest).map { "\(id.rawValue)_\($0)" }, "the same task ids")
        }
        let runs = grid.directory.appendingPathComponent("runs.txt")
        let agent = try grid.start(
            "htc-agent", [
                "--concurrency", "64", "--reaper-interval", "0.5", "--submission-grace", "2", "--record-runs", runs.path, "--log-level", "error",
            ])
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }
        for (index, id) in ids.enumerated() {
            let counts = try await client.wait(for: id, pollInterval: .milliseconds(100), timeout: .seconds(240))
            let record = try await client.session(id)
            #expect(counts.total == record.taskCount, "every reserved index of session \(index) has a task")
            #expect(counts[.pending] == 0 && counts[.processing] == 0)
            if keyed(index) {
                #expect(record.taskCount == perRequest && counts[.finished] == perRequest, "session \(index), sent again with its key: \(counts)")
            }
        }
        agent.terminate()
        agent.waitUntilExit()
        try expectNoRunTwice(runs)
    }

    /// SIGKILLs a submitting process once some of its records exist, and checks it was cut off.
    private func killOnceRecordsExist(_ process: Process, _ grid: GridUnderTest, _ session: SessionID) async throws {
        try await waitUntil(timeout: .seconds(120), every: .milliseconds(2), "the submitter wrote some tasks") {
            try await grid.backends.state.counts(session).total > 0 || !process.isRunning
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal, "the submitter was killed before it finished")
    }

    /// Every finished task of the session has the output its input gives (an echo).
    private func expectOutputs(_ client: GridClient, _ session: SessionID, _ input: (Int) -> [UInt8]) async throws {
        var cursor: String?
        repeat {
            let page = try await client.results(session, state: .finished, after: cursor, limit: 10_000)
            for result in page.items where result.output != input(result.record.id.index) {
                Issue.record("wrong output for \(result.record.id)")
            }
            cursor = page.next
        } while cursor != nil
    }

    /// No task's handler completed twice.
    private func expectNoRunTwice(_ runs: URL) throws {
        let lines = (try? String(contentsOf: runs, encoding: .utf8))?.split(separator: "\n") ?? []
        var seen = Set<Substring>()
        let twice = lines.filter { !seen.insert($0).inserted }
        #expect(twice.isEmpty, "tasks run twice: \(twice.prefix(5))")
    }
}
