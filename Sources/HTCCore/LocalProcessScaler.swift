import Foundation
import GridKernel
import Logging
import Synchronization

/// A ``Scaler`` that starts and stops `htc-agent` processes on this machine.
///
/// Each agent gets an id (`PREFIX-N`) and a status file in the scaler's directory, where it writes
/// `busy` while it owns tasks and `idle` otherwise (`htc-agent --status-file`). Scaling in sends SIGTERM
/// only to idle agents (an agent that became busy since it wrote its status still drains before it
/// exits, so no task is lost either way); when every agent is busy, the pool stays larger than asked
/// until some become idle. Agents that exit on their own are noticed at the next ``apply(desired:)``
/// and replaced.
public final class LocalProcessScaler: Scaler {
    private struct Member {
        var id: String
        var process: Process
        var exit: ProcessExit
        var statusFile: String
        var stopping = false
    }

    private struct State {
        var members: [Member] = []
        var desired = 0
        var started = 0
        var peak = 0
        var nextIndex = 0
    }

    private let binary: URL
    private let arguments: [String]
    private let perAgent: @Sendable (String) -> [String]
    private let environment: [String: String]
    private let directory: URL
    private let prefix: String
    private let logger: Logger
    private let state = Mutex(State())

    /// Creates a scaler; no agent runs until ``apply(desired:)``.
    ///
    /// - Parameters:
    ///   - binary: the `htc-agent` executable.
    ///   - arguments: the arguments of every agent (grid URLs, concurrency, …).
    ///   - perAgent: more arguments for the agent with a given id (e.g. its own `--record-runs` file).
    ///   - environment: the agents' environment.
    ///   - directory: where the agents' status files go; created if missing.
    ///   - prefix: agent ids are `prefix-0`, `prefix-1`, …
    public init(
        binary: URL,
        arguments: [String],
        perAgent: @escaping @Sendable (String) -> [String] = { _ in [] },
        environment: [String: String] = ProcessInfo.processInfo.environment,
        directory: URL,
        prefix: String = "local",
        logger: Logger = Logger(label: "htc.scaler")
    ) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        self.binary = binary
        self.arguments = arguments
        self.perAgent = perAgent
        self.environment = environment
        self.directory = directory
        self.prefix = prefix
        self.logger = logger
    }

    /// Agents started so far.
    public var started: Int { state.withLock { $0.started } }

    /// The most agents that ran at once (not counting draining ones).
    public var peak: Int { state.withLock { $0.peak } }

    /// The ids of the agents running and not asked to stop.
    public var running: [String] { state.withLock { $0.members.filter { !$0.stopping && !$0.exit.done }.map(\.id) } }

    /// The desired count last applied and the agents running (draining ones excluded).
    public func capacity() async throws -> AgentCapacity {
        state.withLock { state in
            AgentCapacity(desired: state.desired, current: state.members.filter { !$0.stopping && !$0.exit.done }.count)
        }
    }

    /// Starts agents up to `desired`, or asks idle agents to drain and exit down to it.
    ///
    /// - Throws: ``GridError/Code/invalidArgument`` for a negative count; ``GridError/Code/unavailable``
    ///   when an agent process cannot be started.
    public func apply(desired: Int) async throws {
        guard desired >= 0 else { throw GridError.invalidArgument("desired agents must not be negative, got \(desired)") }
        let (toStart, toStop): ([String], [Member]) = state.withLock { state in
            state.desired = desired
            state.members.removeAll { member in
                guard member.exit.done else { return false }
                if !member.stopping {
                    logger.warning("agent exited on its own; it will be replaced", metadata: ["agent": "\(member.id)", "status": "\(member.exit.status)"])
                }
                return true
            }
            let live = state.members.filter { !$0.stopping }
            if desired > live.count {
                let ids = (0..<(desired - live.count)).map { _ -> String in
                    defer { state.nextIndex += 1 }
                    return "\(prefix)-\(state.nextIndex)"
                }
                return (ids, [])
            }
            var stopping: [Member] = []
            for index in state.members.indices where !state.members[index].stopping && stopping.count < live.count - desired {
                guard isIdle(state.members[index]) else { continue }
                state.members[index].stopping = true
                stopping.append(state.members[index])
            }
            return ([], stopping)
        }
        for member in toStop {
            logger.info("stopping idle agent", metadata: ["agent": "\(member.id)"])
            member.process.terminate()
        }
        for id in toStart { try start(id) }
    }

    /// Asks every agent to drain and exit, and waits until they have.
    public func stopAll() async {
        let members = state.withLock { state in
            state.desired = 0
            for index in state.members.indices { state.members[index].stopping = true }
            return state.members
        }
        for member in members where member.process.isRunning { member.process.terminate() }
        for member in members { await member.exit.wait() }
        state.withLock { $0.members.removeAll() }
    }

    private func start(_ id: String) throws {
        let statusFile = directory.appendingPathComponent("\(id).status").path
        try? FileManager.default.removeItem(atPath: statusFile)
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments + ["--id", id, "--status-file", statusFile] + perAgent(id)
        process.environment = environment
        let exit = ProcessExit()
        process.terminationHandler = { exit.finish($0.terminationStatus) }
        do {
            try process.run()
        } catch {
            throw GridError.unavailable("cannot start \(binary.path): \(error)")
        }
        logger.info("started agent", metadata: ["agent": "\(id)", "pid": "\(process.processIdentifier)"])
        state.withLock { state in
            state.members.append(Member(id: id, process: process, exit: exit, statusFile: statusFile))
            state.started += 1
            state.peak = max(state.peak, state.members.filter { !$0.stopping }.count)
        }
    }

    /// An agent is idle unless its status file says `busy`; one that has not written it yet has not
    /// claimed anything.
    private func isIdle(_ member: Member) -> Bool {
        guard let text = try? String(contentsOfFile: member.statusFile, encoding: .utf8) else { return true }
        return !text.hasPrefix("busy")
    }
}

/// The exit of a child process, awaitable without blocking a thread.
final class ProcessExit: Sendable {
    private let state = Mutex<(status: Int32?, waiters: [CheckedContinuation<Void, Never>])>((nil, []))

    /// Whether the process has exited.
    var done: Bool { state.withLock { $0.status != nil } }

    /// The exit status, `-1` while running.
    var status: Int32 { state.withLock { $0.status ?? -1 } }

    func finish(_ status: Int32) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.status = status
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { state -> Bool in
                if state.status != nil { return true }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }
}
