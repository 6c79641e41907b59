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
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("exec-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let pidFile = directory.appendingPathComponent("pid").path
        // The shell starts a grandchild; cancellation must reach it too.
        let handler = try ExecHandler(command: "sleep 300 & echo $! > \(pidFile); wait", killGrace: .milliseconds(200))
        let context = try context()
        let run = Task { try await handler.run(input: [], context: context) }
        let deadline = ContinuousClock.now + .seconds(10)
        while (try? String(contentsOfFile: pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ?? true {
            #expect(ContinuousClock.now < deadline)
            if ContinuousClock.now >= deadline { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        let pid = pid_t(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))!
        let started = ContinuousClock.now
        run.cancel()
        await #expect(throws: CancellationError.self) { try await run.value }
        // Prompt, not after the 300 s the child would take (generous: the machine may be busy).
        #expect(ContinuousClock.now - started < .seconds(30))
        // The grandchild is gone (or a zombie about to be reaped by init).
        var gone = false
        while ContinuousClock.now < deadline {
            let state = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))?.split(separator: " ").dropFirst(2).first
            if state == nil || state == "Z" { gone = true; break }
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(gone)
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

/// A flag shared between tasks.
final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

/// Runs `body`, failing with a clear error instead of hanging when it takes longer than `limit`.
func withDeadline(_ limit: Duration, _ what: String, _ body: @escaping @Sendable () async throws -> Void) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            throw DeadlineExceeded(what: what, limit: limit)
        }
        defer { group.cancelAll() }
        try await group.next()
    }
}

struct DeadlineExceeded: Error, CustomStringConvertible {
    let what: String
    let limit: Duration
    var description: String { "\(what): not done within \(limit)" }
}
