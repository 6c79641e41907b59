import Foundation
import GridKernel
import GridPlugins
import Testing

@testable import HTCCore

/// Results in completion order and the counts kept with the transitions, on a whole grid: `htc-server`
/// and `htc-agent` processes on one SQLite file.
@Suite(.serialized) struct CompletionOrderTests {
    private func binary(_ name: String) throws -> URL {
        try AgentPool.agentBinary().deletingLastPathComponent().appendingPathComponent(name)
    }

    private func temporaryDirectory(_ name: String) throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-\(name)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    private func agent(_ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = try binary("htc-agent")
        process.arguments = arguments + ["--log-level", "error"]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Tasks finish in an order the test chooses (each waits for its own gate file), some while the
    /// server is down; a client that keeps its cursor reads every task once, in that order, across the
    /// restart; `htc results --follow` started before the last task prints everything and ends when the
    /// session is complete.
    @Test func aClientFollowsTheCompletionOrderAcrossAServerRestart() async throws {
        let directory = try temporaryDirectory("order")
        defer { try? FileManager.default.removeItem(at: directory) }
        let grid = "sqlite://" + directory.appendingPathComponent("grid.db").path
        let first = try await ServerProcess.start(executable: try binary("htc-server"), arguments: ["--grid", grid])
        defer { first.kill() }
        let port = try #require(first.base.port)
        // Task 3 fails for good; every other task echoes its index once its gate file exists.
        let script = """
            read x; while [ ! -e '\(directory.path)/go-'"$x" ]; do sleep 0.01; done
            if [ "$x" = 3 ]; then echo "three is bad" >&2; exit 3; fi; echo "done-$x"
            """
        let worker = try agent(["--grid", grid, "--exec", script, "--concurrency", "8"])
        defer { if worker.isRunning { kill(worker.processIdentifier, SIGKILL) } }

        var client = RemoteGridClient(baseURL: first.base, apiKey: nil)
        client.retryTimeout = .seconds(60)
        let session = try await client.createSession(SessionOptions(maxRetries: 0), id: nil).id
        _ = try await client.submit(session, inputs: (0..<8).map { Array("\($0)".utf8) }, key: nil)

        func release(_ indices: Int...) {
            for index in indices { _ = FileManager.default.createFile(atPath: directory.appendingPathComponent("go-\(index)").path, contents: nil) }
        }
        var cursor = 0
        var read: [TaskResult] = []
        /// Reads until `count` more results came, following the cursor.
        func readNext(_ count: Int) async throws -> [Int] {
            var got: [Int] = []
            let deadline = ContinuousClock.now + .seconds(60)
            while got.count < count {
                #expect(ContinuousClock.now < deadline, "\(count) completions after \(cursor) within 60 s")
                guard ContinuousClock.now < deadline else { break }
                let page = try await client.completions(session, after: cursor, limit: 10, outputs: true, wait: .seconds(5))
                for result in page.items {
                    cursor += 1
                    #expect(result.record.completionSequence == cursor, "numbers follow each other")
                    read.append(result)
                    got.append(result.record.id.index)
                }
            }
            return got
        }

        release(5)
        #expect(try await readNext(1) == [5])
        release(2, 7)
        #expect(Set(try await readNext(2)) == [2, 7])

        // The server dies; task 0 finishes meanwhile (the agent works on the file); a new server comes
        // up on the same port, and the client carries on from its cursor.
        first.kill()
        release(0)
        let second = try await ServerProcess.start(executable: try binary("htc-server"), arguments: ["--grid", grid], port: port)
        defer { second.kill() }
        #expect(try await readNext(1) == [0])
        release(3, 1)
        #expect(Set(try await readNext(2)) == [3, 1])

        // The CLI follows the stream from the start while two tasks are still running.
        let out = directory.appendingPathComponent("follow.out")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        let follow = Process()
        follow.executableURL = try binary("htc")
        follow.arguments = ["results", session.rawValue, "--follow", "--server", second.base.absoluteString, "--json"]
        follow.standardOutput = try FileHandle(forWritingTo: out)
        follow.standardError = FileHandle.nullDevice
        try follow.run()
        defer { if follow.isRunning { kill(follow.processIdentifier, SIGKILL) } }
        release(4, 6)
        #expect(Set(try await readNext(2)) == [4, 6])

        try await waitUntil(timeout: .seconds(60), "htc results --follow ends with the session") { !follow.isRunning }
        #expect(follow.terminationStatus == 2, "a failed task makes --follow exit with 2")
        let lines = try String(contentsOf: out, encoding: .utf8).split(separator: "\n").map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        #expect(lines.compactMap { $0["sequence"] as? Int } == Array(1...8))
        #expect(lines.compactMap { $0["task_id"] as? String } == read.map(\.record.id.rawValue), "the CLI reads the same order")

        // Every task exactly once, in the order released, with its outcome.
        #expect(read.map(\.record.id.index).count == 8)
        #expect(Set(read.map(\.record.id.index)) == Set(0..<8))
        for result in read {
            if result.record.id.index == 3 {
                #expect(result.record.state == .failed)
                #expect(result.record.lastError?.contains("three is bad") == true)
            } else {
                #expect(result.record.state == .finished)
                #expect(result.output == Array("done-\(result.record.id.index)\n".utf8))
            }
        }
        let end = try await client.completions(session, after: cursor, limit: 10, outputs: false, wait: .zero)
        #expect(end.items.isEmpty && end.complete && end.taskCount == 8)

        // The NDJSON stream of the complete session: eight results, then the last line.
        let (status, data) = await second.request("GET", "/v1/sessions/\(session.rawValue)/results/stream?outputs=false")
        #expect(status == 200)
        let streamed = String(decoding: data, as: UTF8.self).split(separator: "\n")
        #expect(streamed.count == 9)
        #expect(streamed.last == #"{"complete":true,"next":"8","task_count":8}"#)
    }

    /// Counts read from the counters stay what a scan of the records says, through retries, an agent
    /// killed with SIGKILL (its tasks reaped and run again), a cancel and a delete.
    @Test func countsStayExactThroughCrashesRetriesCancelAndDelete() async throws {
        let directory = try temporaryDirectory("counts")
        defer { try? FileManager.default.removeItem(at: directory) }
        let grid = "sqlite://" + directory.appendingPathComponent("grid.db").path
        let backends = try await BackendRegistry.installed.makeBackends(GridURLs(grid: grid), context: BackendContext())
        let client = GridClient(backends: backends)
        let state = backends.state
        let fast = ["--lease-duration", "2", "--heartbeat-interval", "0.5", "--reaper-interval", "0.5", "--retry-delay", "0.05"]

        // The first agent: multiples of 5 fail (retryable, two retries), multiples of 7 hang until killed;
        // it has a slot for every hanging task of both sessions (18 + 40), and a quarter of its slots free
        // besides (an agent leases again once a quarter of its slots are free).
        let hanging = try agent(
            ["--grid", grid, "--concurrency", "100", "--exec",
             #"read x; if [ $((x % 7)) = 0 ]; then sleep 600; fi; if [ $((x % 5)) = 0 ]; then exit 1; fi; echo "$x""#] + fast)
        defer { if hanging.isRunning { kill(hanging.processIdentifier, SIGKILL) } }
        let main = try await client.createSession(SessionOptions(maxRetries: 2))
        let other = try await client.createSession(SessionOptions(maxRetries: 2))
        let total = 120
        _ = try await client.submit(main.id, inputs: (0..<total).map { Array("\($0)".utf8) })
        _ = try await client.submit(other.id, inputs: (0..<40).map { _ in Array("7".utf8) })  // all hang

        func recount(_ session: SessionID) async throws -> StateCounts {
            var counts = StateCounts()
            for taskState in TaskState.allCases {
                var cursor: String?
                repeat {
                    let page = try await state.tasks(session, state: taskState, after: cursor, limit: 50)
                    counts[taskState] += page.items.count
                    cursor = page.next
                } while cursor != nil
            }
            return counts
        }
        func expectExact(_ session: SessionID, _ what: String) async throws {
            let counted = try await state.counts(session)
            let scanned = try await recount(session)
            for taskState in TaskState.allCases {
                #expect(counted[taskState] == scanned[taskState], "\(what): \(taskState) counted \(counted[taskState]), records \(scanned[taskState])")
            }
            let numbered = try await state.completions(session, after: 0, limit: 10_000)
            #expect(numbered.count == scanned.terminal, "\(what): one completion number per terminal task")
            #expect(numbered.map(\.completionSequence) == (0..<numbered.count).map { Optional($0 + 1) }, "\(what): numbers 1…n")
        }

        // Every non-hanging task of the main session is terminal; the hanging ones run.
        let hangingCount = (0..<total).filter { $0 % 7 == 0 }.count
        try await waitUntil(timeout: .seconds(120), "the first agent is done with all but the hanging tasks") {
            let counts = try await state.counts(main.id)
            return counts.terminal == total - hangingCount && counts[.processing] == hangingCount
        }
        try await expectExact(main.id, "before the crash")
        _ = try await client.cancel(other.id)
        try await expectExact(other.id, "after the cancel")
        #expect(try await state.counts(other.id)[.cancelled] == 40)

        // SIGKILL: the hanging tasks' leases lapse and a second agent's reaper gives them back.
        kill(hanging.processIdentifier, SIGKILL)
        hanging.waitUntilExit()
        let healthy = try agent(["--grid", grid, "--concurrency", "16", "--exec", #"read x; if [ $((x % 5)) = 0 ]; then exit 1; fi; echo "$x""#] + fast)
        defer { if healthy.isRunning { kill(healthy.processIdentifier, SIGKILL) } }
        let final = try await client.wait(for: main.id, timeout: .seconds(120))
        try await expectExact(main.id, "after the crash and the retries")
        let failing = (0..<total).filter { $0 % 5 == 0 }.count
        #expect(final[.failed] == failing, "every multiple of 5 failed for good after its retries")
        #expect(final[.finished] == total - failing)
        let reaped = try await state.tasks([TaskID(session: main.id, index: 7)]).first
        #expect(reaped?.state == .finished && reaped?.retries == 1, "task 7 was reaped (one retry) and ran again after its agent died")

        // Delete: nothing is counted any more, nothing is numbered.
        _ = try await client.deleteSession(other.id)
        #expect(try await state.counts(other.id).total == 0)
        #expect(try await state.completions(other.id, after: 0, limit: 10).isEmpty)
        try await expectExact(main.id, "after deleting the other session")
    }
}

/// Push, not poll: an idle agent (its lease call waiting) and a waiting client are woken by writes of
/// another process, with every fallback poll set to 30 s so that only a notification can wake them in
/// time.
@Suite(.serialized) struct WakeUpTests {
    @Test(.enabled(if: GridUnderTest.available(.redis)), arguments: [GridUnderTest.Kind.sqlite, .redis])
    func anIdleAgentIsWokenByASubmissionFromAnotherProcess(_ kind: GridUnderTest.Kind) async throws {
        let grid = try await GridUnderTest.start(kind, name: "wake")
        defer { grid.stop() }
        let base = try #require(grid.urls.grid)
        let url = base + (base.contains("?") ? "&" : "?") + "poll_interval=30"
        let backends = try await BackendRegistry.installed.makeBackends(GridURLs(grid: url), context: BackendContext())
        let client = GridClient(backends: backends)
        let agent = try grid.start("htc-agent", ["--concurrency", "1", "--reaper-interval", "0", "--log-level", "error"],
            backend: (["--grid", url], grid.environment))
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }

        let session = try await client.createSession().id
        for index in 0..<5 {
            let sent = ContinuousClock.now
            _ = try await client.submit(session, inputs: [Array("\(index)".utf8)])
            // The agent's lease call waits up to 20 s and its fallback look comes every 30 s; this
            // client's wait looks every 30 s: only the notifications bring the result back sooner.
            let done = try await client.backends.state.waitForCompletions(session, after: index, timeout: .seconds(60))
            let elapsed = ContinuousClock.now - sent
            #expect(done, "task \(index) completed")
            #expect(elapsed < .seconds(5), "task \(index) came back in \(elapsed): the agent or the waiter was not woken by the write")
        }
        #expect(try await client.counts(session)[.finished] == 5)
    }
}
