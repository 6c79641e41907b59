import Foundation
import GridKernel
import GridPlugins
import Logging

/// The standard workload of `htc demo` and `htc bench`: every task echoes its input, the client
/// retrieves every output and checks it.
struct Workload: Sendable {
    /// Which grid to run on.
    enum Backend: String, Sendable {
        case memory
        case sqlite
        /// Whatever `--grid`/`--queue`/… name.
        case custom
    }

    var backend: Backend
    var urls: GridURLs
    var tasks: Int
    var agents: Int
    var payloadBytes: Int
    var concurrency: Int
    var batchSize = 5_000
    /// Give up when the tasks are not all terminal after this long.
    var timeout: Duration = .seconds(600)
    /// Drive the client side through `htc-server` instead of the backends.
    var server: RemoteGridClient?
    /// Start agent processes through the local process scaler instead of a fixed pool: the pool grows
    /// with the backlog to the maximum and, after the work, shrinks to the minimum.
    var scaling: ScalingConfiguration?
    /// How often the local scaler decides.
    var scalingInterval: Duration = .milliseconds(250)
    /// How often the client counts the session's tasks while it waits.
    var pollInterval: Duration = .milliseconds(50)

    /// The figures `htc bench --json` prints.
    struct Result: Codable, Sendable {
        struct Latency: Codable, Sendable {
            var p50: Double
            var p99: Double
        }

        var backend: String
        var tasks: Int
        var agents: Int
        var payload_bytes: Int
        var seconds: Double
        var tasks_per_second: Double
        var submit_per_second: Double
        var latency_ms: Latency
        var verified: Int
        var lost: Int
        var duplicates: Int
        var failed: Int
        /// With ``Workload/scaling``: agents started in all, the most at once, and whether the pool was
        /// back at its minimum after the work. Not part of the JSON line.
        var agents_started: Int? = nil
        var agents_peak: Int? = nil
        var shrunk_to_minimum: Bool? = nil
        /// On AWS backends: requests and DynamoDB write units per task, of the client and the agents.
        var aws: AWSCost? = nil

        /// One JSON line with the keys in the documented order (Foundation's encoder does not keep it).
        var jsonLine: String {
            func number(_ value: Double) -> String {
                value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
            }
            let escaped = backend.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            return "{\"backend\":\"\(escaped)\",\"tasks\":\(tasks),\"agents\":\(agents),\"payload_bytes\":\(payload_bytes),"
                + "\"seconds\":\(number(seconds)),\"tasks_per_second\":\(number(tasks_per_second)),"
                + "\"submit_per_second\":\(number(submit_per_second)),"
                + "\"latency_ms\":{\"p50\":\(number(latency_ms.p50)),\"p99\":\(number(latency_ms.p99))},"
                + "\"verified\":\(verified),\"lost\":\(lost),\"duplicates\":\(duplicates),\"failed\":\(failed)"
                + (aws.flatMap { cost in
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                    return (try? encoder.encode(cost)).map { ",\"aws\":" + String(decoding: $0, as: UTF8.self) }
                } ?? "") + "}"
        }
    }

    /// The input of task `index`: its index followed by a repeating pattern, `payloadBytes` long.
    static func input(index: Int, bytes: Int) -> [UInt8] {
        var value = Array("\(index):".utf8)
        if value.count >= bytes {
            // Too short for the index: a stable pseudo-random fill still catches mixed-up outputs.
            var state = UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15
            return (0..<bytes).map { _ in
                state ^= state >> 12
                state ^= state << 25
                state ^= state >> 27
                return UInt8(truncatingIfNeeded: state &* 0x2545_F491_4F6C_DD1D)
            }
        }
        var filler = UInt8(ascii: "a")
        while value.count < bytes {
            value.append(filler)
            filler = filler == UInt8(ascii: "z") ? UInt8(ascii: "a") : filler + 1
        }
        return value
    }

    /// Runs the workload: starts agents, submits, waits, verifies, stops the agents.
    func run(logger: Logger, progress: ProgressReporter?) async throws -> Result {
        let workDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: workDirectory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: workDirectory) }

        var urls = self.urls
        if backend == .sqlite && urls.grid == nil && urls.queue == nil && urls.state == nil {
            urls.grid = "sqlite://\(workDirectory.appendingPathComponent("grid.db").path)"
            urls.payload = urls.payload ?? "file://\(workDirectory.appendingPathComponent("payloads").path)"
        }
        if backend == .memory { urls = GridURLs(grid: "memory://bench") }

        let context = BackendContext(logger: logger)
        let backends = try await BackendRegistry.installed.makeBackends(urls, context: context)
        let pool: AgentPool
        if backend == .memory {
            pool = try AgentPool.inProcess(count: agents, backends: backends, concurrency: concurrency, logger: logger)
        } else if let scaling {
            pool = try await AgentPool.scaled(
                scaling: scaling, interval: scalingInterval, backends: backends, urls: urls, concurrency: concurrency,
                workDirectory: workDirectory, logger: logger
            )
        } else {
            pool = try AgentPool.processes(count: agents, urls: urls, concurrency: concurrency, workDirectory: workDirectory)
        }
        let measured: Measured
        do {
            measured = try await drive(backends: backends, logger: logger, progress: progress)
        } catch {
            _ = try? await pool.stop()
            throw error
        }
        var shrunk: Bool?
        if let scaling {
            shrunk = await pool.waitUntilScaled(to: scaling.minimum, timeout: scaling.scaleInCooldown + .seconds(30))
        }
        let scaled = pool.scaling
        let runs = try await pool.stop()
        let usage = try await AWSUsage.metered(context).adding(AWSUsage.sum(directory: AgentPool.usageDirectory(workDirectory)))
        let duplicates = runs.values.filter { $0 > 1 }.count
        var latencies = measured.latencies
        latencies.sort()
        func percentile(_ p: Double) -> Double {
            guard !latencies.isEmpty else { return 0 }
            let rank = Int((p * Double(latencies.count)).rounded(.up)) - 1
            return (latencies[max(0, min(latencies.count - 1, rank))] * 100).rounded() / 100
        }
        return Result(
            backend: (server == nil ? "" : "http+") + (backend == .custom ? (try? urls.resolved().queue.scheme) ?? "custom" : backend.rawValue),
            tasks: tasks,
            agents: agents,
            payload_bytes: payloadBytes,
            seconds: (measured.seconds * 1000).rounded() / 1000,
            tasks_per_second: (Double(tasks) / measured.seconds).rounded(),
            submit_per_second: (Double(tasks) / measured.submitSeconds).rounded(),
            latency_ms: Result.Latency(p50: percentile(0.5), p99: percentile(0.99)),
            verified: measured.verified,
            lost: tasks - measured.verified,
            duplicates: duplicates,
            failed: measured.failed,
            agents_started: scaled?.started,
            agents_peak: scaled?.peak,
            shrunk_to_minimum: shrunk,
            aws: usage.isEmpty ? nil : usage.perTask(tasks)
        )
    }

    private struct Measured {
        var seconds: Double
        var submitSeconds: Double
        var verified: Int
        var failed: Int
        var latencies: [Double]
    }

    /// Submits, waits and verifies; the timed part of the workload.
    private func drive(backends: GridBackends, logger: Logger, progress: ProgressReporter?) async throws -> Measured {
        let client: any GridService =
            server ?? GridClient(backends: backends, configuration: ClientConfiguration(submitBatchSize: batchSize), logger: logger)
        let session = try await client.createSession(SessionOptions(), id: nil)
        let started = ContinuousClock.now
        var submitted = 0
        while submitted < tasks {
            let end = min(submitted + batchSize, tasks)
            let inputs = (submitted..<end).map { Self.input(index: $0, bytes: payloadBytes) }
            _ = try await client.submit(session.id, inputs: inputs, key: nil)
            submitted = end
            progress?.submitted(submitted, of: tasks)
        }
        let submitSeconds = (ContinuousClock.now - started).timeInterval

        let counts = try await client.wait(for: session.id, expected: tasks, pollInterval: pollInterval, timeout: timeout) { counts in
            progress?.update(counts, total: tasks)
        }

        var verified = 0
        var latencies: [Double] = []
        latencies.reserveCapacity(tasks)
        var cursor: String?
        repeat {
            let page = try await client.results(session.id, state: .finished, after: cursor, limit: 5_000)
            for result in page.items {
                if result.output == Self.input(index: result.record.id.index, bytes: payloadBytes) { verified += 1 }
                if let completed = result.record.completedAt {
                    latencies.append(completed.timeIntervalSince(result.record.submittedAt) * 1000)
                }
            }
            cursor = page.next
        } while cursor != nil
        let seconds = (ContinuousClock.now - started).timeInterval
        progress?.finish()
        return Measured(seconds: seconds, submitSeconds: submitSeconds, verified: verified, failed: counts[.failed], latencies: latencies)
    }
}
