import Foundation
import GridKernel
import Testing

@testable import HTCCore

/// An agent stopped (SIGSTOP) past its lease while its tasks' outputs, over the inline limit, are being
/// made; another agent takes the tasks over and finishes them; then the first agent resumes and stores
/// what its stale runs produced. No output may change once its task finished. On SQLite, Redis and
/// AWS (moto).
///
/// To make sure the stopped agent really tries to store its stale outputs (and does not merely learn
/// first that it lost its tasks), it resumes while it cannot reach the grid — SQLite's write lock held
/// by another process, or a paused proxy between it and Redis or moto — so its runs end before any
/// heartbeat can tell it; then the grid is given back to it.
@Suite(.serialized) struct StaleAgentTests {
    @Test(arguments: GridUnderTest.Kind.allCases.filter(GridUnderTest.available))
    func aStoppedAgentNeverChangesAFinishedTask(_ kind: GridUnderTest.Kind) async throws {
        let grid = try await GridUnderTest.start(kind, name: "stale")
        defer { grid.stop() }
        let slow = kind == .aws
        let client = GridClient(backends: grid.backends)
        let session = try await client.createSession(SessionOptions(maxRetries: 3))
        let total = 20
        let ids = try await client.submit(session.id, inputs: (0..<total).map { Array("input \($0)".utf8) })
        let lease = slow ? "4" : "2"
        let heartbeat = slow ? "1" : "0.5"
        // Every output is the agent's letter, the input, and 9,000 more bytes: over the 8 KiB inline limit.
        func exec(_ letter: String, sleep: Double) -> String { "sleep \(sleep); printf \(letter); cat; head -c 9000 /dev/zero" }
        let proxy = try grid.serverPort.map { try PausableProxy(target: $0) }
        defer { proxy?.close() }
        let logA = grid.directory.appendingPathComponent("agent-a.log")
        _ = FileManager.default.createFile(atPath: logA.path, contents: nil)
        let statusA = grid.directory.appendingPathComponent("agent-a.status").path
        let agentA = try grid.start(
            "htc-agent",
            [
                "--id", "agent-a", "--concurrency", String(total), "--lease-duration", lease, "--heartbeat-interval", heartbeat,
                "--reaper-interval", "0", "--status-file", statusA, "--log-level", "info", "--exec", exec("A", sleep: slow ? 6 : 2),
            ], output: try FileHandle(forWritingTo: logA), backend: proxy.map { grid.through(proxy: $0.port) })
        defer { if agentA.isRunning { kill(agentA.processIdentifier, SIGKILL) } }
        try await waitUntil(timeout: .seconds(120), every: .milliseconds(slow ? 500 : 20), "agent A runs every task") {
            try await grid.backends.state.counts(session.id)[.processing] == total
                && (try? String(contentsOfFile: statusA, encoding: .utf8)) == "busy\n"
        }
        // Agent A stops while its children go on: their outputs wait in its pipes.
        kill(agentA.processIdentifier, SIGSTOP)
        let agentB = try grid.start(
            "htc-agent",
            [
                "--id", "agent-b", "--concurrency", String(total), "--lease-duration", lease, "--heartbeat-interval", heartbeat,
                "--reaper-interval", "0.5", "--log-level", "warning", "--exec", exec("B", sleep: 0),
            ])
        defer { if agentB.isRunning { kill(agentB.processIdentifier, SIGKILL) } }
        try await waitUntil(timeout: .seconds(300), every: .milliseconds(slow ? 1_000 : 50), "agent B finished every task") {
            try await grid.backends.state.counts(session.id)[.finished] == total
        }
        var committed: [TaskID: [UInt8]] = [:]
        for id in ids { committed[id] = try await client.output(id) }
        for (id, output) in committed {
            #expect(output.first == UInt8(ascii: "B") && output.count == 9_001 + "input \(id.index)".utf8.count, "output of \(id) is agent B's")
        }

        // Agent A's runs end while it is stopped; it resumes cut off from the grid, so it finds their
        // outputs before any heartbeat can tell it that it lost the tasks.
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(50), "agent A's children exited") {
            Self.liveChildren(of: agentA.processIdentifier) == 0
        }
        let lock = try proxy == nil ? SQLiteWriteLock(path: grid.urls.grid!.replacingOccurrences(of: "sqlite://", with: "")) : nil
        proxy?.pause()
        kill(agentA.processIdentifier, SIGCONT)
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(20), "agent A reaped its children") {
            Self.children(of: agentA.processIdentifier) == 0
        }
        if let proxy {
            try await waitUntil(timeout: .seconds(60), every: .milliseconds(20), "agent A sent its outputs towards the grid") {
                proxy.bytesSincePause >= 9_000
            }
        }
        lock?.release()
        proxy?.resume()
        try await waitUntil(timeout: .seconds(120), every: .milliseconds(100), "agent A let go of its stale runs") {
            (try? String(contentsOfFile: statusA, encoding: .utf8)) == "idle\n"
        }
        for id in ids {
            #expect(try await client.output(id) == committed[id], "the output of \(id) changed after its task finished")
            let record = try await client.task(id)
            #expect(record.state == .finished && record.attempt == 2 && record.lastError == nil, "record of \(id): \(record)")
            #expect(try await grid.backends.payloads.get([PayloadKey.output(id, attempt: 1)]).isEmpty, "the stale output of \(id) is removed")
        }
        let log = (try? String(contentsOf: logA, encoding: .utf8)) ?? ""
        let refused = log.split(separator: "\n").filter { $0.contains("finishes of attempts that lost their task were refused") }
        print("stale agent on \(kind): \(refused.count) batch(es) of stale finishes refused: \(refused.prefix(2))")
        #expect(!refused.isEmpty, "agent A tried to store its stale outputs (the case this test is about)")
        for agent in [agentA, agentB] {
            agent.terminate()
            agent.waitUntilExit()
        }
    }

    /// The children of `pid` that have not exited (zombies excluded).
    static func liveChildren(of pid: Int32) -> Int {
        childStates(of: pid).filter { $0 != "Z" }.count
    }

    /// The children of `pid`, zombies included.
    static func children(of pid: Int32) -> Int { childStates(of: pid).count }

    /// The states (`R`, `S`, `Z`, …) of the children of `pid`, from /proc.
    private static func childStates(of pid: Int32) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> String? in
            guard Int32(entry) != nil, let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            // After the command name: state, then the parent's pid.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 1, Int32(fields[1]) == pid else { return nil }
            return String(fields[0])
        }
    }
}

/// SQLite's write lock on a file, held by a `sqlite3` process in an open `BEGIN IMMEDIATE` transaction
/// until ``release()``: every other writer of the file waits meanwhile.
final class SQLiteWriteLock: Sendable {
    private let process: Process
    private let input: FileHandle

    init(path: String) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        process.arguments = [path]
        let stdin = Pipe()
        let stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        try process.run()
        input = stdin.fileHandleForWriting
        input.write(Data(".timeout 30000\nBEGIN IMMEDIATE;\nSELECT 'locked';\n".utf8))
        var text = ""
        while !text.contains("locked") {
            let data = stdout.fileHandleForReading.availableData
            guard !data.isEmpty else { throw ProxyError(text: "sqlite3 exited before it held the write lock") }
            text += String(decoding: data, as: UTF8.self)
        }
    }

    func release() {
        input.write(Data("COMMIT;\n.quit\n".utf8))
        process.waitUntilExit()
    }
}
