import ArgumentParser
import Foundation
import GridKernel
import GridPlugins
import Logging

/// `htc demo`: an embedded grid in a temporary directory, agents as processes, 100,000 tasks verified.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run 100,000 tasks on an embedded grid (SQLite + local disk) with agent processes the local scaler starts and stops, and verify every output.",
        discussion: "The local process scaler starts one agent, grows the pool with the backlog up to --agents, and stops idle agents once the work is done and the scale-in cool-down has passed."
    )

    @Option(help: "Number of tasks.") var tasks = 100_000
    @Option(help: "Most agent processes at once.") var agents = 2
    @Option(help: "Seconds the pool waits, once idle, before it shrinks back to one agent.") var scaleInCooldown = 2.0
    @Option(help: "Input size of each task in bytes.") var payloadBytes = 64
    @Option(help: "Tasks each agent runs at once.") var concurrency = 1024

    func run() async throws {
        LoggingSetup.bootstrap(level: .warning)
        let logger = Logger(label: "htc.demo")
        let directory = FileManager.default.temporaryDirectory.path
        print("HTC Grid demo: \(tasks.grouped) tasks of \(payloadBytes) bytes, 1 to \(agents) agent processes × \(concurrency) slots (local process scaler), SQLite + local disk in a temporary directory under \(directory)")
        guard agents >= 1, scaleInCooldown >= 0 else { throw ValidationError("--agents must be at least 1 and --scale-in-cooldown not negative") }
        var workload = Workload(
            backend: .sqlite, urls: GridURLs(), tasks: tasks, agents: agents, payloadBytes: payloadBytes, concurrency: concurrency
        )
        // One agent's share of the backlog is its slots: the pool reaches --agents as soon as the work
        // needs more than one agent's slots.
        workload.scaling = ScalingConfiguration(
            tasksPerAgent: concurrency, minimum: 1, maximum: agents, scaleInCooldown: Duration(timeInterval: scaleInCooldown)
        )
        let result = try await workload.run(logger: logger, progress: ProgressReporter())
        print("""
            done in \(String(format: "%.2f", result.seconds)) s: \(Int(result.tasks_per_second).grouped) tasks/s end to end \
            (submission \(Int(result.submit_per_second).grouped) tasks/s)
            latency from submission to result: p50 \(result.latency_ms.p50) ms, p99 \(result.latency_ms.p99) ms
            verified \(result.verified.grouped) of \(result.tasks.grouped) outputs · lost \(result.lost) · duplicates \(result.duplicates) · failed \(result.failed)
            agents: \(result.agents_started ?? 0) started by the local scaler, \(result.agents_peak ?? 0) at most at once, \
            \(result.shrunk_to_minimum == true ? "back to 1 once idle" : "not back to 1 within the cool-down")
            """)
        guard result.verified == result.tasks, result.duplicates == 0 else {
            throw ExitCode.failure
        }
    }
}

/// `htc bench`: the standard workload, measured.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure the standard workload (echo tasks, every output retrieved and checked).",
        discussion: "With --backend memory the agents run in this process; otherwise they are htc-agent processes on the grid. Without --grid, sqlite uses a temporary file. With --server the client side (submit, wait, results) goes through htc-server's API v1 while the agents work on --grid, which must be the server's grid."
    )

    @Option(help: "memory or sqlite; any other backend through --grid/--queue/--state/--payload.") var backend: String?
    @OptionGroup var grid: GridOptions
    @Option(help: "Number of tasks.") var tasks = 20_000
    @Option(help: "Number of agents.") var agents = 2
    @Option(help: "Input size of each task in bytes.") var payloadBytes = 64
    @Option(help: "Tasks each agent runs at once.") var concurrency = 1024
    @Option(help: "Give up after this many seconds.") var timeout: Double = 600
    @Flag(help: "Print one JSON line instead of text.") var json = false
    @Option(help: ArgumentHelp("Ignored (kept for old scripts): the client follows the completion stream instead of counting the session.", visibility: .hidden))
    var pollInterval: Double = 0.05
    @Option(help: "Drive the workload through htc-server at this URL (env HTC_SERVER); needs --grid, the server's grid.") var server: String?
    @Option(help: "API key for --server (env HTC_API_KEY).") var apiKey: String?
    @Option(help: "Round-trip mode: run this many tasks one at a time (each submitted when the previous result is back, after 10 unmeasured) and report the round trip's p50/p99 (rtt_ms); --tasks is ignored.")
    var rtt: Int?

    func run() async throws {
        LoggingSetup.bootstrap(level: try grid.level(default: .warning))
        if let rtt, rtt < 1 { throw ValidationError("--rtt must be at least 1") }
        let environment = Environment()
        let urls = grid.urls()
        var remote: RemoteGridClient?
        if let server = server ?? environment.string("HTC_SERVER") {
            guard let url = URL(string: server), url.scheme == "http" || url.scheme == "https", url.host != nil else {
                throw ValidationError("--server \(server) is not an http:// or https:// URL")
            }
            guard urls != GridURLs(), backend?.lowercased() != "memory" else {
                throw ValidationError("--server needs --grid URL (or HTC_GRID): the grid the server serves, where the agents run")
            }
            remote = RemoteGridClient(baseURL: url, apiKey: apiKey ?? environment.string("HTC_API_KEY"))
        }
        let kind: Workload.Backend
        switch backend?.lowercased() {
        case "memory"?: kind = .memory
        case "sqlite"?: kind = .sqlite
        case nil where urls != GridURLs(): kind = .custom
        case let other?:
            guard urls != GridURLs() else {
                throw ValidationError("--backend \(other) needs the grid's URL: pass --grid URL (or HTC_GRID)")
            }
            kind = .custom
        case nil:
            throw ValidationError("pass --backend memory|sqlite, or --grid URL")
        }
        var workload = Workload(
            backend: kind, urls: urls, tasks: rtt ?? tasks, agents: agents, payloadBytes: payloadBytes, concurrency: concurrency,
            timeout: Duration(timeInterval: timeout)
        )
        workload.roundTrips = rtt
        if let remote {
            workload.server = remote
            workload.batchSize = remote.submitBatchSize
        }
        let result = try await workload.run(logger: Logger(label: "htc.bench"), progress: json ? nil : ProgressReporter())
        if json {
            print(result.jsonLine)
        } else {
            print("""
                \(result.backend): \(result.tasks.grouped) tasks, \(result.agents) agents, \(result.payload_bytes) B payloads
                \(String(format: "%.3f", result.seconds)) s · \(Int(result.tasks_per_second).grouped) tasks/s end to end · \
                submit \(Int(result.submit_per_second).grouped) tasks/s
                latency p50 \(result.latency_ms.p50) ms · p99 \(result.latency_ms.p99) ms\(result.rtt_ms.map { "\nround trip p50 \($0.p50) ms · p99 \($0.p99) ms · mean \($0.mean) ms · min \($0.min) ms" } ?? "")
                verified \(result.verified.grouped) · lost \(result.lost) · duplicates \(result.duplicates) · failed \(result.failed)
                """)
            if let aws = result.aws {
                let requests = aws.requests_per_task.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: " · ")
                let units = aws.dynamodb_write_units_per_task
                print("""
                    AWS per task: requests \(requests) · DynamoDB write units \(units.total) (table \(units.table), index \(units.indexes))
                    ≈ $\(String(format: "%.2f", aws.dollarsPerMillionTasks)) per million tasks at list prices (SQS requests, DynamoDB writes, S3 requests)
                    """)
            }
        }
        if result.lost > 0 || result.duplicates > 0 { throw ExitCode.failure }
    }
}
