import ArgumentParser
import Foundation
import GridKernel
import GridPlugins
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

    @Option(help: "The most bytes an --exec command may write to stdout; past it the task fails (env HTC_MAX_OUTPUT; default 67108864, 64 MiB).")
    var maxOutput: Int?

    @Option(help: "Invoke this AWS Lambda Runtime Interface Emulator per task, e.g. http://localhost:8080: the input is the event, the response the output (env HTC_LAMBDA or LAMBDA_ENDPOINT_URL).")
    var lambda: String?

    @Option(help: "Function name in the invocation path, for --lambda (env HTC_LAMBDA_FUNCTION or LAMBDA_FONCTION_NAME, default function).")
    var lambdaFunction: String?

    @Option(help: "Seconds an invocation may take before it fails and is retried, for --lambda; also the longest the next invocation waits for an abandoned one to return (env HTC_LAMBDA_TIMEOUT, default 2000).")
    var lambdaTimeout: Double?

    @Option(help: "Start the Lambda emulator as the agent's child with this shell command, listening on the --lambda URL's port ($HTC_LAMBDA_PORT); a cancelled or timed-out invocation kills and restarts it (env HTC_LAMBDA_EMULATOR).")
    var lambdaEmulator: String?

    @Option(help: "Tasks run at once (env HTC_CONCURRENCY, default 8; 1 with --lambda, as the emulator runs one invocation at a time: more tasks queue for it).")
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

    @Option(help: "Seconds a submission may go without progress before the reaper repairs it as interrupted (env HTC_SUBMISSION_GRACE, default 120).")
    var submissionGrace: Double?

    @Option(help: "Seconds before a failed task is retried (env HTC_RETRY_DELAY, default 1).")
    var retryDelay: Double?

    @Option(help: "Serve the agent's metrics (Prometheus text) at http://HOST:PORT/metrics, e.g. 0.0.0.0:9100 (env HTC_METRICS_LISTEN; off by default).")
    var metricsListen: String?

    @Option(help: "Append the id of every task whose handler ran to completion to this file (env HTC_RECORD_RUNS; used by htc bench).")
    var recordRuns: String?

    @Option(help: "When the agent stops, write the AWS requests and DynamoDB write units it made to this file, as JSON (env HTC_USAGE_FILE; used by htc bench).")
    var usageFile: String?

    @Option(help: "Keep 'busy' or 'idle' in this file, by whether the agent owns tasks, so a local scaler stops only idle agents (env HTC_STATUS_FILE).")
    var statusFile: String?

    @Option(help: "Mark this agent's pod with controller.kubernetes.io/pod-deletion-cost while it owns tasks, so Kubernetes scales in idle pods first: auto (in a pod with MY_POD_NAME), on or off (env HTC_POD_DELETION_COST, default auto).")
    var podDeletionCost: String?

    public init() {}

    public func run() async throws {
        let environment = Environment()
        LoggingSetup.bootstrap(level: try grid.level(environment))
        let logger = Logger(label: "htc.agent")
        // Before the agent and the reaper make their counters.
        let metrics = try (metricsListen ?? environment.string("HTC_METRICS_LISTEN")).map { try MetricsEndpoint.bootstrap(listen: $0, logger: logger) }
        let settings = try agentConfiguration(environment)
        let (handler, emulator) = try makeHandler(environment, logger: logger)
        let context = BackendContext(logger: logger)
        let backends = try await BackendRegistry.installed.makeBackends(grid.urls(environment), context: context)
        for warning in await backends.durabilityWarnings() { logger.warning("\(warning)") }
        var configuration = settings.agent
        let recorder = try (recordRuns ?? environment.string("HTC_RECORD_RUNS")).map(RunRecorder.init(path:))
        if let recorder { configuration.onRunsCompleted = { recorder.record($0) } }
        let agent = try Agent(backends: backends, handler: handler, configuration: configuration, logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        // Before the agent: a group shuts its services down in reverse order, so the emulator stops
        // after the agent has drained. It failing to start at all stops the agent.
        if let emulator { services.append(.init(service: emulator, failureTerminationBehavior: .gracefullyShutdownGroup)) }
        services.append(.init(service: AgentService(agent: agent), successTerminationBehavior: .gracefullyShutdownGroup))
        let statusPath = statusFile ?? environment.string("HTC_STATUS_FILE")
        let pod = try PodDeletionCost.make(setting: podDeletionCost, environment: environment)
        if statusPath != nil || pod != nil {
            services.append(.init(service: AgentStatusService(agent: agent, path: statusPath, pod: pod, logger: logger)))
        }
        if let reaperConfiguration = settings.reaper {
            let reaper = Reaper(backends: backends, configuration: reaperConfiguration, logger: logger)
            services.append(.init(service: ReaperService(reaper: reaper)))
        }
        if let metrics { services.append(.init(service: metrics)) }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
        recorder?.close()
        if let path = usageFile ?? environment.string("HTC_USAGE_FILE") {
            try await AWSUsage.metered(context).write(to: path)
        }
    }

    /// The Lambda emulator URL from `--lambda` or the environment.
    private func lambdaURL(_ environment: Environment) -> String? {
        lambda ?? environment.string("HTC_LAMBDA") ?? environment.string("LAMBDA_ENDPOINT_URL")
    }

    /// The task handler: `--lambda`, `--exec`, or the echo handler; and the emulator the agent runs
    /// itself (`--lambda-emulator`), if any.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for both `--lambda` and `--exec`,
    ///   `--lambda-emulator` without `--lambda`, or a bad value.
    func makeHandler(_ environment: Environment, logger: Logger) throws -> (handler: any TaskHandler, emulator: LambdaEmulatorProcess?) {
        let command = exec ?? environment.string("HTC_EXEC")
        let emulatorCommand = lambdaEmulator ?? environment.string("HTC_LAMBDA_EMULATOR")
        guard let url = lambdaURL(environment) else {
            guard emulatorCommand == nil else {
                throw GridError.invalidArgument("--lambda-emulator needs --lambda http://127.0.0.1:PORT, the address the emulator listens on")
            }
            guard let command else { return (EchoHandler(), nil) }
            let limit = try maxOutput ?? environment.int("HTC_MAX_OUTPUT") ?? ExecHandler.defaultMaxOutputBytes
            return (try ExecHandler(command: command, maxOutputBytes: limit), nil)
        }
        guard command == nil else { throw GridError.invalidArgument("give either --lambda or --exec, not both") }
        let function = lambdaFunction ?? environment.string("HTC_LAMBDA_FUNCTION") ?? environment.string("LAMBDA_FONCTION_NAME") ?? "function"
        let seconds = try lambdaTimeout ?? environment.seconds("HTC_LAMBDA_TIMEOUT") ?? 2_000
        let emulator = try emulatorCommand.map { command in
            let (host, port) = try LambdaHandler.address(url)
            return try LambdaEmulatorProcess(command: command, host: host, port: port, logger: logger)
        }
        let handler = try LambdaHandler(url: url, function: function, timeout: Duration(timeInterval: seconds), emulator: emulator)
        return (handler, emulator)
    }

    func agentConfiguration(_ environment: Environment) throws -> (agent: AgentConfiguration, reaper: ReaperConfiguration?) {
        var configuration = AgentConfiguration()
        if let name = id ?? environment.string("HTC_AGENT_ID") ?? environment.string("MY_POD_NAME") {
            configuration.id = AgentID(name)
        }
        if lambdaURL(environment) != nil { configuration.concurrency = 1 }
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
        return (configuration, try ReaperConfiguration.settings(interval: reaperInterval, submissionGrace: submissionGrace, environment))
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

/// Publishes whether an agent is busy (owns tasks) or idle, checked every 100 ms, on each change: in a
/// status file (`busy`/`idle`, written atomically: a new file renamed over the old) that a local scaler
/// reads to choose which agents to stop (``LocalProcessScaler``), and as the pod's deletion cost in
/// Kubernetes (``PodDeletionCost``). A failed update is logged and tried again at the next check.
struct AgentStatusService: Service {
    let agent: Agent
    let path: String?
    let pod: PodDeletionCost?
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown { await loop() }
        await pod?.shutdown()
    }

    private func loop() async {
        var written: Bool?
        var marked: Bool?
        var podRetryAt = ContinuousClock.now
        while !Task.isCancelled {
            let busy = agent.ownedCount > 0
            if let path, busy != written {
                do {
                    try Self.write(busy ? "busy\n" : "idle\n", to: path)
                    written = busy
                } catch {
                    logger.warning("cannot write the status file", metadata: ["path": "\(path)", "error": "\(error)"])
                }
            }
            if let pod, busy != marked, ContinuousClock.now >= podRetryAt {
                do {
                    try await pod.mark(busy: busy)
                    marked = busy
                } catch {
                    // Not every 100 ms: a missing Role would flood the log.
                    logger.warning("cannot set the pod's deletion cost; retrying in 5 s", metadata: ["error": "\(error)"])
                    podRetryAt = ContinuousClock.now + .seconds(5)
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
