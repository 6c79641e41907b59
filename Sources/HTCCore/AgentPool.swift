import Foundation
import GridKernel
import GridPlugins
import Logging
import Synchronization

/// Agents started for `htc demo` and `htc bench`: `htc-agent` processes on a shared grid, or, for the
/// in-memory backend, agents inside this process.
final class AgentPool: Sendable {
    private enum Members: Sendable {
        case processes([Process], recordFiles: [String])
        case inProcess([Agent], runs: RunCounter, task: Task<Void, Never>)
        case scaled(LocalProcessScaler, autoscaler: Task<Void, Never>, recordFiles: URL)
    }

    private let members: Members

    private init(_ members: Members) { self.members = members }

    /// Starts `count` `htc-agent` processes on the grid given by `urls`.
    static func processes(
        count: Int,
        urls: GridURLs,
        concurrency: Int,
        workDirectory: URL,
        extraArguments: [String] = []
    ) throws -> AgentPool {
        let binary = try agentBinary()
        var processes: [Process] = []
        var records: [String] = []
        for index in 0..<count {
            let record = workDirectory.appendingPathComponent("runs-\(index).txt").path
            let process = Process()
            process.executableURL = binary
            process.arguments = [
                "--concurrency", String(concurrency), "--record-runs", record, "--id", "agent-\(index)",
                "--usage-file", usageDirectory(workDirectory).appendingPathComponent("agent-\(index).json").path,
            ] + LocalProcessScaler.gridArguments(urls) + extraArguments
            process.environment = agentEnvironment()
            try process.run()
            processes.append(process)
            records.append(record)
        }
        return AgentPool(.processes(processes, recordFiles: records))
    }

    /// Starts `htc-agent` processes through a ``LocalProcessScaler`` driven by an ``Autoscaler``: the
    /// pool grows with the backlog up to `scaling.maximum` and shrinks to `scaling.minimum` once idle.
    static func scaled(
        scaling: ScalingConfiguration,
        interval: Duration,
        backends: GridBackends,
        urls: GridURLs,
        concurrency: Int,
        workDirectory: URL,
        logger: Logger
    ) async throws -> AgentPool {
        let arguments = ["--concurrency", String(concurrency)] + LocalProcessScaler.gridArguments(urls)
        let environment = agentEnvironment()
        let records = workDirectory.appendingPathComponent("runs")
        try FileManager.default.createDirectory(at: records, withIntermediateDirectories: true)
        let scaler = try LocalProcessScaler(
            binary: try agentBinary(), arguments: arguments,
            perAgent: {
                [
                    "--record-runs", records.appendingPathComponent("\($0).txt").path,
                    "--usage-file", usageDirectory(workDirectory).appendingPathComponent("\($0).json").path,
                ]
            },
            environment: environment, directory: workDirectory.appendingPathComponent("agents"), prefix: "agent", logger: logger
        )
        let autoscaler = try Autoscaler(queue: backends.queue, scaler: scaler, configuration: scaling, interval: interval, logger: logger)
        try await autoscaler.tick()
        // The pool owns this task and cancels it in `stop()`.
        let task = Task { await autoscaler.run() }
        return AgentPool(.scaled(scaler, autoscaler: task, recordFiles: records))
    }

    /// Where agents started for a workload write their AWS usage (``AWSUsage``) when they stop.
    static func usageDirectory(_ workDirectory: URL) -> URL {
        let directory = workDirectory.appendingPathComponent("usage")
        try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    /// The environment of the agents started for a workload: this process's, quieter by default.
    private static func agentEnvironment() -> [String: String] {
        var environment = ProcessInfo.processInfo.environment
        if environment["HTC_LOG_LEVEL"] == nil { environment["HTC_LOG_LEVEL"] = "warning" }
        return environment
    }

    /// Starts `count` agents inside this process.
    static func inProcess(count: Int, backends: GridBackends, concurrency: Int, logger: Logger) throws -> AgentPool {
        let runs = RunCounter()
        let agents = try (0..<count).map { index in
            try Agent(
                backends: backends,
                handler: EchoHandler(),
                configuration: AgentConfiguration(
                    id: AgentID("agent-\(index)"),
                    concurrency: concurrency,
                    onRunsCompleted: { runs.add($0) }
                ),
                logger: logger
            )
        }
        let reaper = Reaper(backends: backends, logger: logger)
        // The pool owns this task and awaits it in `stop()`.
        let task = Task {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    await withTaskGroup(of: Void.self) { pool in
                        for agent in agents { pool.addTask { await agent.run() } }
                    }
                }
                group.addTask { await reaper.run() }
                // The reaper runs until every agent has drained.
                await group.next()
                group.cancelAll()
            }
        }
        return AgentPool(.inProcess(agents, runs: runs, task: task))
    }

    /// The number of agents.
    var count: Int {
        switch members {
        case .processes(let processes, _): processes.count
        case .inProcess(let agents, _, _): agents.count
        case .scaled(let scaler, _, _): scaler.peak
        }
    }

    /// Stops every agent (SIGTERM for processes, which drain and exit) and returns how many handler runs
    /// completed per task id.
    func stop() async throws -> [String: Int] {
        switch members {
        case .processes(let processes, let records):
            for process in processes where process.isRunning { process.terminate() }
            for process in processes { await waitForExit(process) }
            return Self.countRuns(records)
        case .scaled(let scaler, let autoscaler, let directory):
            autoscaler.cancel()
            await autoscaler.value
            await scaler.stopAll()
            let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
            return Self.countRuns(files.map { directory.appendingPathComponent($0).path })
        case .inProcess(let agents, let runs, let task):
            for agent in agents { agent.stop() }
            await task.value
            return runs.snapshot()
        }
    }

    /// Waits until the scaled pool has shrunk to `count` agents, or `timeout` passed; returns whether it
    /// did. Always true for fixed pools.
    func waitUntilScaled(to count: Int, timeout: Duration) async -> Bool {
        guard case .scaled(let scaler, _, _) = members else { return true }
        let deadline = ContinuousClock.now + timeout
        while scaler.running.count > count {
            guard ContinuousClock.now < deadline, (try? await Task.sleep(for: .milliseconds(50))) != nil else { return false }
        }
        return true
    }

    /// Agents the scaled pool started in all, and the most at once; `nil` for fixed pools.
    var scaling: (started: Int, peak: Int)? {
        guard case .scaled(let scaler, _, _) = members else { return nil }
        return (scaler.started, scaler.peak)
    }

    private static func countRuns(_ files: [String]) -> [String: Int] {
        var runs: [String: Int] = [:]
        for file in files {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") { runs[String(line), default: 0] += 1 }
        }
        return runs
    }

    /// Whether any agent process exited on its own (it crashed or was killed).
    var exitedEarly: [Int32] {
        guard case .processes(let processes, _) = members else { return [] }
        return processes.filter { !$0.isRunning }.map(\.processIdentifier)
    }

    private func waitForExit(_ process: Process) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                process.waitUntilExit()
                continuation.resume()
            }
        }
    }

    /// `HTC_AGENT_BIN`, or the agent executable of the current ``HTCInstallation`` (`htc-agent` unless
    /// a plugin package built its own) next to the running executable.
    static func agentBinary(_ environment: Environment = Environment()) throws -> URL {
        if let path = environment.string("HTC_AGENT_BIN") { return URL(fileURLWithPath: path) }
        let name = HTCInstallation.current.agentExecutable
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let candidate = executable.deletingLastPathComponent().appendingPathComponent(name)
        guard FileManager.default.isExecutableFile(atPath: candidate.path) else {
            throw GridError.notFound("\(name) not found next to \(executable.path); build it (swift build) or set HTC_AGENT_BIN")
        }
        return candidate
    }
}

/// Counts completed handler runs per task id, for in-process agents.
final class RunCounter: Sendable {
    private let counts = Mutex<[String: Int]>([:])

    func add(_ ids: [TaskID]) {
        counts.withLock { counts in
            for id in ids { counts[id.rawValue, default: 0] += 1 }
        }
    }

    func snapshot() -> [String: Int] { counts.withLock { $0 } }
}

