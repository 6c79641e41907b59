import Foundation
import GridKernel
import Logging
import Synchronization
import Testing

@testable import HTCCore

@Suite struct ExecHandlerTests {
    private func context(_ index: Int = 0) throws -> TaskContext {
        TaskContext(id: TaskID(session: try SessionID("s1"), index: index), attempt: 1, timeout: nil, logger: Logger(label: "test"))
    }

    @Test func inputOnStdinOutputFromStdout() async throws {
        let handler = try ExecHandler(command: "tr a-z A-Z")
        let output = try await handler.run(input: Array("hello grid".utf8), context: context())
        #expect(String(decoding: output, as: UTF8.self) == "HELLO GRID")
    }

    @Test func largeInputAndOutputDoNotDeadlock() async throws {
        let input = [UInt8](repeating: UInt8(ascii: "x"), count: 4 << 20)
        let output = try await ExecHandler(command: "cat").run(input: input, context: context())
        #expect(output == input)
    }

    @Test func taskIdentityIsInTheEnvironment() async throws {
        let output = try await ExecHandler(command: "printf '%s' \"$HTC_TASK_ID\"").run(input: [], context: context(7))
        #expect(String(decoding: output, as: UTF8.self) == "s1_7")
    }

    @Test func nonZeroExitFailsWithTheTailOfStderr() async throws {
        let handler = try ExecHandler(command: "echo progress; echo 'model diverged' >&2; exit 3")
        do {
            _ = try await handler.run(input: [], context: context())
            Issue.record("a failing command must throw")
        } catch let failure as ExecFailure {
            #expect(failure.message == "command exited with status 3: model diverged")
        }
    }

    @Test func cancellationKillsTheProcessGroup() async throws {
        try await withScratch { pidFile in
            // The shell starts a grandchild; cancellation must reach it too.
            let handler = try ExecHandler(command: "sleep 300 & echo $! > \(pidFile); wait", killGrace: .milliseconds(200))
            let context = try context()
            let run = Task { try await handler.run(input: [], context: context) }
            let pid = try await waitForPid(in: pidFile)
            let started = ContinuousClock.now
            run.cancel()
            await #expect(throws: CancellationError.self) { try await run.value }
            // Prompt, not after the 300 s the child would take (generous: the machine may be busy).
            #expect(ContinuousClock.now - started < .seconds(30))
            #expect(try await processEnds(pid))
        }
    }

    /// The shell dies of SIGTERM but its child ignores it: the child still gets SIGKILL after the grace
    /// period (it used to be skipped once the shell was reaped, and the child ran on, holding the task).
    @Test func aChildThatIgnoresSIGTERMIsKilledAfterTheGrace() async throws {
        try await withScratch { pidFile in
            let handler = try ExecHandler(
                command: "sh -c \"trap '' TERM; echo \\$$ > \(pidFile); exec sleep 300\"; echo after", killGrace: .milliseconds(300))
            let context = try context()
            let run = Task { try await handler.run(input: [], context: context) }
            let pid = try await waitForPid(in: pidFile)
            try await withDeadline(.seconds(30), "the cancelled command returns") {
                run.cancel()
                await #expect(throws: CancellationError.self) { try await run.value }
            }
            #expect(try await processEnds(pid), "the child that ignores SIGTERM is gone")
        }
    }

    /// A command that exits while a process it started in the background still holds its stdout: the
    /// task ends with the command, and the leftover is killed.
    @Test func aBackgroundLeftoverNeitherHoldsTheTaskNorOutlivesIt() async throws {
        try await withScratch { pidFile in
            let handler = try ExecHandler(command: "sleep 300 & echo $! > \(pidFile); printf done")
            let context = try context()
            try await withDeadline(.seconds(30), "the command's task ends when the command exits") {
                let output = try await handler.run(input: [], context: context)
                #expect(String(decoding: output, as: UTF8.self) == "done")
            }
            #expect(try await processEnds(try await waitForPid(in: pidFile)), "the background sleep is gone")
        }
    }

    /// Stdout is bounded: a command that writes without end fails its task with a message naming the
    /// limit, promptly, instead of growing the agent's memory.
    @Test func outputPastTheLimitFailsTheTask() async throws {
        let handler = try ExecHandler(command: "yes grid", maxOutputBytes: 1 << 20)
        let context = try context()
        try await withDeadline(.seconds(30), "the endless command is stopped") {
            do {
                _ = try await handler.run(input: [], context: context)
                Issue.record("an output past the limit must fail the task")
            } catch let failure as ExecFailure {
                #expect(failure.message.contains("more than 1 MiB to stdout"), "\(failure.message)")
                #expect(failure.message.contains("--max-output"), "\(failure.message)")
            }
        }
        // Exactly at the limit is fine.
        let exact = try await ExecHandler(command: "head -c 1048576 /dev/zero", maxOutputBytes: 1 << 20).run(input: [], context: context)
        #expect(exact.count == 1 << 20)
    }

    /// Only the tail of stderr is kept, however much the command writes there.
    @Test func onlyTheTailOfStderrIsKept() async throws {
        let handler = try ExecHandler(command: "head -c 3000000 /dev/zero | tr '\\0' e >&2; echo ' the end' >&2; exit 2", stderrTail: 100)
        do {
            _ = try await handler.run(input: [], context: context())
            Issue.record("a failing command must throw")
        } catch let failure as ExecFailure {
            #expect(failure.message.hasPrefix("command exited with status 2: eee"))
            #expect(failure.message.hasSuffix("e the end"))
            #expect(failure.message.count < 200)
        }
    }

    @Test func concurrentChildrenDoNotHoldEachOthersPipes() async throws {
        let gate = try ExecHandler(command: "x=$(cat); if [ \"$x\" = slow ]; then sleep 30; fi; printf '%s' \"$x\"")
        let context = try context()
        let slowFinished = Flag()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                _ = try await gate.run(input: Array("slow".utf8), context: context)
                slowFinished.set()
            }
            // Children spawned while the slow one runs must see their own end of output at once, not
            // when the slow sibling exits.
            try await Task.sleep(for: .milliseconds(100))
            for index in 0..<8 {
                let output = try await gate.run(input: Array("quick \(index)".utf8), context: context)
                #expect(String(decoding: output, as: UTF8.self) == "quick \(index)")
            }
            #expect(!slowFinished.isSet, "quick tasks finished only after the slow one: pipes were inherited")
            group.cancelAll()
            try? await group.waitForAll()
        }
    }

    @Test func manyConcurrentChildrenAllComplete() async throws {
        // More children than any thread pool has threads: each child's stdin, stdout, stderr and exit
        // must be served independently, or readers starve the writers the children wait for.
        let handler = try ExecHandler(command: "cat")
        let context = try context()
        try await withDeadline(.seconds(120), "64 concurrent children complete") {
            try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<64 {
                group.addTask {
                    let input = [UInt8](repeating: UInt8(index), count: 100_000)
                    return try await handler.run(input: input, context: context) == input
                }
            }
            var correct = 0
            for try await ok in group where ok { correct += 1 }
            #expect(correct == 64)
            }
        }
    }

    @Test func emptyCommandIsRejected() {
        #expect(throws: GridError.self) { try ExecHandler(command: "  ") }
    }
}

/// Runs `body` with the path of a file in a scratch directory, removed afterwards.
func withScratch(_ body: (String) async throws -> Void) async throws {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("exec-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    try await body(directory.appendingPathComponent("pid").path)
}

/// The pid a command wrote to `path`, once it has.
func waitForPid(in path: String, within limit: Duration = .seconds(20)) async throws -> pid_t {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if let text = try? String(contentsOfFile: path, encoding: .utf8), text.hasSuffix("\n"),
            let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines))
        {
            return pid
        }
        try await Task.sleep(for: .milliseconds(10))
    }
    throw DeadlineExceeded(what: "a pid in \(path)", limit: limit)
}

/// Whether process `pid` ends (or is a zombie about to be reaped by init) within `limit`.
func processEnds(_ pid: pid_t, within limit: Duration = .seconds(20)) async throws -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        let state = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))?.split(separator: " ").dropFirst(2).first
        if state == nil || state == "Z" { return true }
        try await Task.sleep(for: .milliseconds(10))
    }
    return false
}

/// A flag shared between tasks.
final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

/// Runs `body`, failing with a clear error instead of hanging when it takes longer than `limit`. The
/// body is cancelled then but not waited for, so that code that ignores cancellation (the very thing
/// some tests look for) fails the test instead of hanging it.
func withDeadline(_ limit: Duration, _ what: String, _ body: @escaping @Sendable () async throws -> Void) async throws {
    let work = Task { try await body() }
    let first = FirstOutcome()
    let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, any Error>?, Never>) in
        first.set(continuation)
        Task { first.resume(with: await work.result) }
        Task {
            try? await Task.sleep(for: limit)
            first.resume(with: nil)
        }
    }
    guard let outcome else {
        work.cancel()
        throw DeadlineExceeded(what: what, limit: limit)
    }
    try outcome.get()
}

/// Resumes a continuation once, with the first outcome offered.
private final class FirstOutcome: Sendable {
    private let continuation = Mutex<CheckedContinuation<Result<Void, any Error>?, Never>?>(nil)
    func set(_ continuation: CheckedContinuation<Result<Void, any Error>?, Never>) { self.continuation.withLock { $0 = continuation } }
    func resume(with outcome: Result<Void, any Error>?) { continuation.withLock { $0.take() }?.resume(returning: outcome) }
}

struct DeadlineExceeded: Error, CustomStringConvertible {
    let what: String
    let limit: Duration
    var description: String { "\(what): not done within \(limit)" }
}
