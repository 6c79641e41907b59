import Foundation
import GridKernel
import GridPlugins
import Testing

@testable import HTCCore

/// The whole grid on Redis with two `htc-agent` processes, and redis-server restarted in the middle.
///
/// The test owns its redis-server (appendonly yes, appendfsync everysec, on 127.0.0.1 and a free
/// port) because it stops and restarts it. It runs when `redis-server` is installed, and always under
/// `make test`, where a missing server is a failure.
@Suite(.serialized) struct RedisRestartTests {
    static var enabled: Bool {
        RedisServer.installed || ProcessInfo.processInfo.environment["HTC_TEST_SUITE"] == "make"
    }

    @Test(.enabled(if: enabled, "redis-server is not installed (scripts/install-deps.sh installs it)"))
    func restartMidRunLosesNothingAndDuplicatesNothing() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-redis-restart-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var server = try await RedisServer.start(directory: directory, port: nil)
        defer { server.kill() }
        let grid = "redis://127.0.0.1:\(server.port)/0?prefix=restart"
        let urls = GridURLs(grid: grid)
        let backends = try await BackendRegistry.installed.makeBackends(urls, context: BackendContext())
        let client = GridClient(backends: backends)
        let session = try await client.createSession()
        let total = 20_000
        let inputs = (0..<total).map { Workload.input(index: $0, bytes: 64) }
        let pool = try AgentPool.processes(
            count: 2, urls: urls, concurrency: 64, workDirectory: directory,
            extraArguments: ["--lease-duration", "2", "--heartbeat-interval", "0.5", "--reaper-interval", "0.5", "--log-level", "error"]
        )
        try await client.submit(session.id, inputs: inputs)

        try await waitUntil(timeout: .seconds(120), "a quarter of the tasks finished") {
            try await client.counts(session.id)[.finished] >= total / 4
        }
        let before = try await client.counts(session.id)[.finished]
        #expect(before < total, "the run ended before Redis could be restarted; make it longer")
        try await server.stop()
        server = try await RedisServer.start(directory: directory, port: server.port)

        let counts = try await client.wait(for: session.id, expected: total, pollInterval: .milliseconds(50), timeout: .seconds(180))
        #expect(counts[.finished] == total)
        #expect(counts[.pending] == 0 && counts[.processing] == 0 && counts[.failed] == 0)
        var seen = Set<Int>()
        var cursor: String?
        repeat {
            let page = try await client.results(session.id, state: .finished, after: cursor, limit: 5_000)
            for result in page.items {
                #expect(seen.insert(result.record.id.index).inserted, "task \(result.record.id) listed twice")
                #expect(result.output == inputs[result.record.id.index], "wrong output for \(result.record.id)")
            }
            cursor = page.next
        } while cursor != nil
        #expect(seen.count == total, "outputs verified: \(seen.count) of \(total)")
        let runs = try await pool.stop()
        #expect(runs.values.filter { $0 > 1 }.isEmpty, "tasks run more than once: \(runs.filter { $0.value > 1 }.keys.sorted().prefix(5))")
    }

    /// `htc-server` on a Redis that persists (AOF): `/readyz` is ready, with no warning. Once the server
    /// stops persisting (`CONFIG SET appendonly no`, no snapshots), `/readyz` — still ready — says that a
    /// restart loses every session.
    @Test(.enabled(if: enabled, "redis-server is not installed (scripts/install-deps.sh installs it)"))
    func readinessSaysWhenRedisKeepsNothing() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-redis-volatile-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let redis = try await RedisServer.start(directory: directory, port: nil)
        defer { redis.kill() }
        let executable = try AgentPool.agentBinary().deletingLastPathComponent().appendingPathComponent("htc-server")
        let server = try await ServerProcess.start(
            executable: executable, arguments: ["--grid", "redis://127.0.0.1:\(redis.port)/0?prefix=volatile"])
        defer { server.kill() }

        let persisting = await server.request("GET", "/readyz")
        #expect(persisting.status == 200)
        #expect(!String(decoding: persisting.data, as: UTF8.self).contains("warnings"), "\(String(decoding: persisting.data, as: UTF8.self))")

        #expect(try redis.cli(["config", "set", "appendonly", "no"]).contains("OK"))
        let volatile = await server.request("GET", "/readyz")
        let body = String(decoding: volatile.data, as: UTF8.self)
        #expect(volatile.status == 200)
        #expect(body.contains("keeps nothing across a restart"), "\(body)")
    }
}

/// A redis-server child process with AOF persistence in a test directory.
struct RedisServer {
    let port: Int
    private let process: Process

    static var installed: Bool { FileManager.default.isExecutableFile(atPath: "/usr/bin/redis-server") }

    /// Starts redis-server on 127.0.0.1 (a free port unless given) and waits until it answers PING.
    static func start(directory: URL, port: Int?) async throws -> RedisServer {
        let port = try port ?? freePort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        process.arguments = [
            "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
            "--dir", directory.path, "--logfile", directory.appendingPathComponent("redis.log").path, "--daemonize", "no",
        ]
        try process.run()
        let server = RedisServer(port: port, process: process)
        try await waitUntil(timeout: .seconds(20), "redis-server answers PING on port \(port)") {
            guard process.isRunning else { throw GridError.unavailable("redis-server exited; see \(directory.path)/redis.log") }
            return try run("/usr/bin/redis-cli", ["-p", String(port), "ping"]).contains("PONG")
        }
        return server
    }

    /// Shuts the server down cleanly (SHUTDOWN flushes the AOF) and waits for it to exit.
    func stop() async throws {
        _ = try? Self.run("/usr/bin/redis-cli", ["-p", String(port), "shutdown"])
        try await waitUntil(timeout: .seconds(20), "redis-server exits") { !process.isRunning }
    }

    func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
    }

    /// Runs `redis-cli` against this server; its output.
    func cli(_ arguments: [String]) throws -> String {
        try Self.run("/usr/bin/redis-cli", ["-p", String(port)] + arguments)
    }

    private static func run(_ path: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw GridError.unavailable("cannot find a free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
