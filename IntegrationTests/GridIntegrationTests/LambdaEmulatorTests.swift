import Foundation
import GridKernel
import Testing

@testable import HTCCore

/// `htc-agent --lambda` against a stand-in for the Lambda Runtime Interface Emulator with the real one's
/// rules (IntegrationTests/lambda/fake_rie.py): one invocation at a time, a cancelled client does not stop
/// the function, and a second invocation while one runs crashes it, as `aws-lambda-rie` v1.14–v1.25 does.
/// A task cancelled or timed out in the middle of its invocation must not make the next one crash it.
@Suite(.serialized) struct LambdaEmulatorTests {
    static let standIn = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("lambda/fake_rie.py")

    /// The emulator runs apart from the agent (as in an HTC-Grid pod): a task is cancelled through the
    /// client while its function sleeps; the agent waits for the abandoned invocation to return before
    /// it sends the next, so the later tasks all succeed and the emulator never crashes.
    @Test func aCancelInTheMiddleDoesNotCrashTheEmulator() async throws {
        let grid = try await GridUnderTest.start(.sqlite, name: "lambda-cancel")
        defer { grid.stop() }
        let emulatorLog = grid.directory.appendingPathComponent("emulator.log")
        let emulator = try await StandIn.start(log: emulatorLog)
        defer { emulator.kill() }
        let agentLog = grid.directory.appendingPathComponent("agent.log")
        _ = FileManager.default.createFile(atPath: agentLog.path, contents: nil)
        let agent = try grid.start(
            "htc-agent",
            [
                "--lambda", "http://127.0.0.1:\(emulator.port)", "--lease-duration", "2", "--heartbeat-interval", "0.2",
                "--retry-delay", "0.1", "--reaper-interval", "0", "--log-level", "info",
            ], output: try FileHandle(forWritingTo: agentLog))
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }

        let client = GridClient(backends: grid.backends)
        let long = try await client.createSession(SessionOptions(maxRetries: 0))
        let slow = try await client.submit(long.id, inputs: [Array(#"{"sleep": 3, "name": "slow"}"#.utf8)])[0]
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(20), "the slow invocation runs in the emulator") {
            emulator.lines.contains { $0.hasPrefix("invoke") && $0.contains("slow") }
        }
        _ = try await client.cancel([slow])
        let later = try await client.createSession(SessionOptions(maxRetries: 2))
        let ids = try await client.submit(later.id, inputs: (1...5).map { Array(#"{"x": \#($0)}"#.utf8) })
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(50), "the later tasks end") {
            try await client.counts(later.id).terminal == ids.count
        }
        try await Self.expectSquares(ids, client)
        #expect(try await client.task(slow).state == .cancelled)
        #expect(!emulator.lines.contains { $0.hasPrefix("crash") }, "the emulator crashed: \(emulator.lines)")
        #expect(emulator.isRunning, "the emulator exited: \(emulator.lines)")
        agent.terminate()
        agent.waitUntilExit()
        #expect(agent.terminationStatus == 0)
        let log = (try? String(contentsOf: agentLog, encoding: .utf8)) ?? ""
        #expect(log.contains("waiting for the abandoned invocation of task \(slow) to return before the next one"), "\(log)")
        #expect(log.contains("the abandoned invocation of task \(slow) returned"), "\(log)")
    }

    /// The agent runs the emulator as its child (`--lambda-emulator`), two tasks at a time: a timed-out
    /// invocation kills and restarts it instead of waiting, an emulator that exits on its own is started
    /// again and fails only the task it ran; the other tasks all succeed, nothing ever crashes it, and
    /// the agent stops it when it stops.
    @Test func theAgentRestartsItsOwnEmulator() async throws {
        let grid = try await GridUnderTest.start(.sqlite, name: "lambda-child")
        defer { grid.stop() }
        let emulatorLog = grid.directory.appendingPathComponent("emulator.log")
        let port = try RedisServer.freePort()
        let agentLog = grid.directory.appendingPathComponent("agent.log")
        _ = FileManager.default.createFile(atPath: agentLog.path, contents: nil)
        let agent = try grid.start(
            "htc-agent",
            [
                "--lambda", "http://127.0.0.1:\(port)", "--lambda-timeout", "1", "--concurrency", "2",
                "--lambda-emulator", "exec python3 '\(Self.standIn.path)' --port \"$HTC_LAMBDA_PORT\" --log '\(emulatorLog.path)'",
                "--lease-duration", "4", "--heartbeat-interval", "0.5", "--retry-delay", "0.1", "--reaper-interval", "0", "--log-level", "info",
            ], output: try FileHandle(forWritingTo: agentLog))
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }
        func lines() -> [String] { StandIn.lines(of: emulatorLog) }

        let client = GridClient(backends: grid.backends)
        let doomed = try await client.createSession(SessionOptions(maxRetries: 0))
        let hung = try await client.submit(doomed.id, inputs: [Array(#"{"sleep": 30, "name": "hung"}"#.utf8)])[0]
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(20), "the hung invocation runs in the emulator") {
            lines().contains { $0.hasPrefix("invoke") && $0.contains("hung") }
        }
        let quick = try await client.createSession(SessionOptions(maxRetries: 2))
        let first = try await client.submit(quick.id, inputs: (1...4).map { Array(#"{"x": \#($0)}"#.utf8) })
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(50), "the first quick tasks end") {
            try await client.counts(quick.id).terminal == first.count
        }
        let crashing = try await client.submit(doomed.id, inputs: [Array(#"{"exit": 3}"#.utf8)])[0]
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(50), "the crashing task ends") {
            try await client.task(crashing).state.isTerminal
        }
        let second = try await client.submit(quick.id, inputs: (5...8).map { Array(#"{"x": \#($0)}"#.utf8) })
        let ids = first + second
        try await waitUntil(timeout: .seconds(60), every: .milliseconds(50), "the second quick tasks end") {
            try await client.counts(quick.id).terminal == ids.count
        }
        try await Self.expectSquares(ids, client)
        let timedOut = try await client.task(hung)
        #expect(timedOut.state == .failed && timedOut.lastError?.contains("longer than") == true, "\(timedOut)")
        let crashed = try await client.task(crashing)
        #expect(crashed.state == .failed, "\(crashed)")
        let events = lines()
        #expect(!events.contains { $0.hasPrefix("crash") }, "the emulator crashed: \(events)")
        let starts = events.filter { $0.hasPrefix("start") }
        #expect(starts.count == 3, "one emulator, one after the time-out, one after the exit: \(events)")
        // The hung function was killed with its emulator: it never ended.
        #expect(events.filter { $0.hasPrefix("end") }.count == ids.count, "\(events)")
        agent.terminate()
        agent.waitUntilExit()
        #expect(agent.terminationStatus == 0)
        let last = try #require(starts.last?.split(separator: " ").last.flatMap { Int32($0) })
        try await waitUntil(timeout: .seconds(10), every: .milliseconds(20), "the agent's emulator is gone") {
            Foundation.kill(last, 0) != 0
        }
        let log = (try? String(contentsOf: agentLog, encoding: .utf8)) ?? ""
        #expect(log.contains("restarting the Lambda emulator: the invocation of task \(hung) timed out"), "\(log)")
        #expect(log.contains("the Lambda emulator exited with status 3; starting it again"), "\(log)")
    }
}

extension LambdaEmulatorTests {
    /// Expects task `i` of `ids` (inputs `{"x": i + 1}`) finished with `(i + 1)²` as its output.
    static func expectSquares(_ ids: [TaskID], _ client: GridClient) async throws {
        for (index, id) in ids.enumerated() {
            let record = try await client.task(id)
            #expect(record.state == .finished, "task \(index + 1): \(record.state), \(record.lastError ?? "")")
            if record.state == .finished {
                #expect(String(decoding: try await client.output(id), as: UTF8.self) == String((index + 1) * (index + 1)))
            }
        }
    }
}

/// The emulator stand-in as a process apart, on a free port.
struct StandIn {
    let process: Process
    let port: Int
    let log: URL

    static func start(log: URL) async throws -> StandIn {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", LambdaEmulatorTests.standIn.path, "--port", "0", "--log", log.path]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let port: Int? = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var text = ""
                while !text.contains("\n") {
                    let data = pipe.fileHandleForReading.availableData
                    if data.isEmpty { break }
                    text += String(decoding: data, as: UTF8.self)
                }
                continuation.resume(returning: text.split(separator: " ").last.flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
            }
        }
        guard let port else {
            process.terminate()
            throw GridError.unavailable("the emulator stand-in did not report its port")
        }
        return StandIn(process: process, port: port, log: log)
    }

    /// The lines of its log: `start PID`, `invoke PID EVENT`, `end PID`, `crash PID …`.
    var lines: [String] { Self.lines(of: log) }

    /// The lines of a stand-in's log.
    static func lines(of log: URL) -> [String] {
        ((try? String(contentsOf: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    var isRunning: Bool { process.isRunning }

    func kill() {
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}
