import ArgumentParser
import Foundation
import GridKernel
import Logging
import ServiceLifecycle

/// `htc-agent`: the worker process. Leases tasks from the grid, runs them and stores the results; also
/// runs a reaper so tasks of crashed agents come back without any other process.
public struct AgentCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "htc-agent",
        abstract: "Run HTC Grid tasks: lease, run, store results. SIGTERM drains and exits 0.",
        discussion: "Every option also reads an HTC_* environment variable; flags win over variables."
    )

    @OptionGroup var grid: GridOptions

    @Option(help: "Run this shell command per task: input on stdin, output from stdout (env HTC_EXEC). Without it the agent echoes its input.")
    var exec: String?

    @Option(help: "Tasks run at once (env HTC_CONCURRENCY, default 8).")
    var concurrency: Int?

    @Option(help: "Agent id stored as the task owner (env HTC_AGENT_ID or MY_POD_NAME; default host-pid-random).")
    var id: String?

    @Option(help: "Lease duration in seconds (env HTC_LEASE_DURATION, default 30).")
    var leaseDuration: Double?

    @Option(help: "Heartbeat interval in seconds; at most half the lease (env HTC_HEARTBEAT_INTERVAL, default 5).")
    var heartbeatInterval: Double?

    @Option(help: "Seconds running tasks get to finish after SIGTERM (env HTC_DRAIN_TIMEOUT, default 30).")
    var drainTimeout: Double?

    @Option(help: "Messages leased per call (env HTC_LEASE_BATCH, default 256).")
    var leaseBatch: Int?

    @Option(help: "Seconds between reaper passes; 0 turns this agent's reaper off (env HTC_REAPER_INTERVAL, default 5).")
    var reaperInterval: Double?

    @Option(help: "Seconds before a failed task is retried (env HTC_RETRY_DELAY, default 1).")
    var retryDelay: Double?

    @Option(help: "Append the id of every task whose handler ran to completion to this file (env HTC_RECORD_RUNS; used by htc bench).")
    var recordRuns: String?

    @Option(help: "Keep 'busy' or 'idle' in this file, by whether the agent owns tasks, so a local scaler stops only idle agents (env HTC_STATUS_FILE).")
    var statusFile: String?

    public init() {}

    public func run() async throws {
        let environment = Environment()
        LoggingSetup.bootstrap(level: try grid.level(environment))
        let logger = Logger(label: "htc.agent")
        let settings = try agentConfiguration(environment)
        let handler: any TaskHandler
        if let command = exec ?? environment.string("HTC_EXEC") {
            handler = try ExecHandler(command: command)
        } else {
            handler = EchoHandler()
        }
        let backends = try await grid.makeBackends(logger: logger)
        var configuration = settings.agent
        let recorder = try (recordRuns ?? environment.string("HTC_RECORD_RUNS")).map(RunRecorder.init(path:))
        if let recorder { configuration.onRunsCompleted = { recorder.record($0) } }
        let agent = try Agent(backends: backends, handler: handler, configuration: configuration, logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: AgentService(agent: agent), successTerminationBehavior: .gracefullyShutdownGroup)
        ]
        if let path = statusFile ?? environment.string("HTC_STATUS_FILE") {
            services.append(.init(service: AgentStatusService(agent: agent, path: path, logger: logger)))
        }
        if let interval = settings.reaperInterval {
            let reaper = Reaper(backends: backends, configuration: ReaperConfiguration(interval: interval), logger: logger)
            services.append(.init(service: ReaperService(reaper: reaper)))
        }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
        recorder?.close()
    }

    func agentConfiguration(_ environment: Environment) throws -> (agent: AgentConfiguration, reaperInterval: Duration?) {
        var configuration = AgentConfiguration()
        if let name = id ?? environment.string("HTC_AGENT_ID") ?? environment.string("MY_POD_NAME") {
            configuration.id = AgentID(name)
        }
        if let value = try concurrency ?? environment.int("HTC_CONCURRENCY") { configuration.concurrency = value }
        if let value = try leaseBatch ?? environment.int("HTC_LEASE_BATCH") { configuration.leaseBatchSize = value }
        if let value = try leaseDuration ?? environment.seconds("HTC_LEASE_DURATION") {
            configuration.leaseDuration = Duration(timeInterval: value)
        }
        if let value = try heartbeatInterval ?? environment.seconds("HTC_HEARTBEAT_INTERVAL") {
            configuration.heartbeatInterval = Duration(timeInterval: value)
        }
        if let value = try drainTimeout ?? environment.seconds("HTC_DRAIN_TIMEOUT") {
            configuration.drainTimeout = Duration(timeInterval: value)
        }
        if let value = try retryDelay ?? environment.seconds("HTC_RETRY_DELAY") {
            configuration.retryDelay = Duration(timeInterval: value)
        }
        try configuration.validate()
        let reaperSeconds = try reaperInterval ?? environment.seconds("HTC_REAPER_INTERVAL") ?? 5
        return (configuration, reaperSeconds > 0 ? Duration(timeInterval: reaperSeconds) : nil)
    }
}

/// Runs an ``Agent`` as a service: a graceful shutdown drains it.
struct AgentService: Service {
    let agent: Agent

    func run() async throws {
        await withGracefulShutdownHandler {
            await agent.run()
        } onGracefulShutdown: {
            agent.stop()
        }
    }
}

/// Keeps an agent's status file current: `busy` while it owns tasks, `idle` otherwise, written
/// atomically (a new file renamed over the old) whenever it changes, checked every 100 ms. A local
/// scaler reads it to choose which agents to stop (``LocalProcessScaler``).
struct AgentStatusService: Service {
    let agent: Agent
    let path: String
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown { await loop() }
    }

    private func loop() async {
        var written: Bool?
        while !Task.isCancelled {
            let busy = agent.ownedCount > 0
            if busy != written {
                do {
                    try Self.write(busy ? "busy\n" : "idle\n", to: path)
                    written = busy
                } catch {
                    logger.warning("cannot write the status file", metadata: ["path": "\(path)", "error": "\(error)"])
                }
            }
            guard (try? await Task.sleep(for: .milliseconds(100))) != nil else { return }
        }
    }

    static func write(_ text: String, to path: String) throws {
        let temporary = path + ".tmp"
        try Data(text.utf8).write(to: URL(fileURLWithPath: temporary))
        guard rename(temporary, path) == 0 else { throw GridError.unavailable("rename \(temporary) → \(path): errno \(errno)") }
    }
}

/// Runs a ``Reaper`` as a service until shutdown.
public struct ReaperService: Service {
    let reaper: Reaper

    /// Wraps a reaper.
    public init(reaper: Reaper) { self.reaper = reaper }

    /// Runs reaper passes until a graceful shutdown or cancellation.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await reaper.run()
        }
    }
}

/// Appends task ids to a file, one per line, for `htc bench`'s duplicate count.
final class RunRecorder: Sendable {
    private let handle: FileHandle

    init(path: String) throws {
        if !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
        }
        guard let handle = FileHandle(forWritingAtPath: path) else {
            throw GridError.invalidArgument("cannot open \(path) for writing (--record-runs)")
        }
        handle.seekToEndOfFile()
        self.handle = handle
    }

    func record(_ ids: [TaskID]) {
        var text = ""
        for id in ids {
            text += id.rawValue
            text += "\n"
        }
        handle.write(Data(text.utf8))
    }

    func close() {
        try? handle.close()
    }
}
