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
    /// Round-trip mode (`htc bench --rtt N`): N tasks one at a time, each submitted once the result of
    /// the one before came back; `tasks` is then N.
    var roundTrips: Int?

    /// The figures `htc bench --json` prints.
    struct Result: Codable, Sendable {
        struct Latency: Codable, Sendable {
            var p50: Double
            var p99: Double
        }

        struct RoundTrip: Codable, Sendable {
            var p50: Double
            var p99: Double
            var mean: Double
            var min: Double
        }

        var backend: String
        var tasks: Int
        var agents: Int
        var payload_bytes: Int
        var seconds: Double
        var tasks_per_second: Double
        var submit_per_second: Double
        var latency_ms: Latency
        /// Round-trip mode: submit → result back at the client, per task.
        var rtt_ms: RoundTrip? = nil
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
                + (rtt_ms.map { "\"rtt_ms\":{\"p50\":\(number($0.p50)),\"p99\":\(number($0.p99)),\"mean\":\(number($0.mean)),\"min\":\(number($0.min))}," } ?? "")
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
            if let roundTrips {
                measured = try await driveRoundTrips(roundTrips, backends: backends, logger: logger, progress: progress)
            } else {
                measured = try await drive(backends: backends, logger: logger, progress: progress)
            }
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
        func percentile(_ p: Double) -> Double { Self.percentile(p, of: latencies) }
        let roundTrips = measured.roundTrips.sorted()
        let rtt = roundTrips.isEmpty ? nil : Result.RoundTrip(
            p50: Self.percentile(0.5, of: roundTrips), p99: Self.percentile(0.99, of: roundTrips),
            mean: (roundTrips.reduce(0, +) / Double(roundTrips.count) * 1000).rounded() / 1000,
            min: (roundTrips[0] * 1000).rounded() / 1000)
        return Result(
            backend: (server == nil ? "" : "http+") + (backend == .custom ? (try? urls.resolved().queue.scheme) ?? "custom" : backend.rawValue),
            tasks: tasks,
            agents: agents,
            payload_bytes: payloadBytes,
            seconds: (measured.seconds * 1000).rounded() / 1000,
            tasks_per_second: (Double(tasks) / measured.seconds).rounded(),
            submit_per_second: (Double(tasks) / measured.submitSeconds).rounded(),
            latency_ms: Result.Latency(p50: percentile(0.5), p99: percentile(0.99)),
            rtt_ms: rtt,
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
        var roundTrips: [Double] = []
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

        // Every result as it completes (outputs included), from the completion stream: no counting.
        let stream = client.follow(session.id, after: 0, outputs: true)
        let (verified, latencies, counts) = try await Self.within(timeout, "session \(session.id): the results of \(tasks) tasks") {
            var verified = 0
            var latencies: [Double] = []
            latencies.reserveCapacity(tasks)
            var counts = StateCounts()
            var iterator = stream.makeAsyncIterator()
            while counts.terminal < tasks, let result = try await iterator.next() {
                counts[result.record.state] += 1
                if result.output == Self.input(index: result.record.id.index, bytes: payloadBytes) { verified += 1 }
                if let completed = result.record.completedAt {
                    latencies.append(completed.timeIntervalSince(result.record.submittedAt) * 1000)
                }
                if counts.terminal % 1_000 == 0 { progress?.update(counts, total: tasks) }
            }
            progress?.update(counts, total: tasks)
            return (verified, latencies, counts)
        }
        let seconds = (ContinuousClock.now - started).timeInterval
        progress?.finish()
        return Measured(seconds: seconds, submitSeconds: submitSeconds, verified: verified, failed: counts[.failed], latencies: latencies)
    }

    /// Round-trip mode: one task at a time, submitted when the result of the one before is back; the
    /// time from the submit call to the result in hand, per task, after ten unmeasured warm-up tasks.
    private func driveRoundTrips(_ count: Int, backends: GridBackends, logger: Logger, progress: ProgressReporter?) async throws -> Measured {
        let client: any GridService = server ?? GridClient(backends: backends, configuration: ClientConfiguration(), logger: logger)
        let session = try await client.createSession(SessionOptions(), id: nil)
        let warmUp = 10
        let started = ContinuousClock.now
        let (roundTrips, verified, failed, latencies) = try await Self.within(timeout, "\(count) round trips") {
            var roundTrips: [Double] = []
            roundTrips.reserveCapacity(count)
            var verified = 0
            var failed = 0
            var latencies: [Double] = []
            for index in 0..<(warmUp + count) {
                let input = Self.input(index: index, bytes: payloadBytes)
                let sent = ContinuousClock.now
                _ = try await client.submit(session.id, inputs: [input], key: nil)
                var page: CompletionPage
                repeat {
                    page = try await client.completions(session.id, after: index, limit: 1, outputs: true, wait: .seconds(10))
                } while page.items.isEmpty
                let back = ContinuousClock.now
                guard index >= warmUp else { continue }
                roundTrips.append((back - sent).timeInterval * 1000)
                let result = page.items[0]
                if result.record.state == .failed { failed += 1 }
                if result.output == input { verified += 1 }
                if let completed = result.record.completedAt { latencies.append(completed.timeIntervalSince(result.record.submittedAt) * 1000) }
                if (index - warmUp + 1) % 100 == 0 {
                    var counts = StateCounts()
                    counts[.finished] = verified
                    counts[.failed] = failed
                    progress?.update(counts, total: count)
                }
            }
            return (roundTrips, verified, failed, latencies)
        }
        let seconds = (ContinuousClock.now - started).timeInterval
        progress?.finish()
        return Measured(
            seconds: seconds, submitSeconds: seconds, verified: verified, failed: failed, latencies: latencies, roundTrips: roundTrips)
    }

    /// The `p` percentile of sorted values, rounded to 0.01.
    static func percentile(_ p: Double, of sorted: [Double]) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let rank = Int((p * Double(sorted.count)).rounded(.up)) - 1
        return (sorted[max(0, min(sorted.count - 1, rank))] * 100).rounded() / 100
    }

    /// Runs `body`, which must end within `timeout`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/timeout`` naming `what`; what `body` throws.
    static func within<T: Sendable>(_ timeout: Duration, _ what: String, _ body: @Sendable @escaping () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let answer = try await group.next() ?? nil
            group.cancelAll()
            guard let answer else { throw GridError(.timeout, "\(what) did not come back within \(timeout)") }
            return answer
        }
    }
}
