import Foundation
import GridAWS
import GridKernel
import GridPlugins
import Testing

@testable import HTCCore

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A grid for a whole-grid test, on one kind of backend, with what its processes need: the backend
/// URLs, the environment (AWS credentials and endpoint for moto), and the backends for the test itself.
/// Stops what it started (a redis-server) in ``stop()``.
struct GridUnderTest: Sendable {
    /// The kinds of grid the tests run on.
    enum Kind: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case sqlite, redis, aws
        var testDescription: String { rawValue }
    }

    let kind: Kind
    let directory: URL
    let urls: GridURLs
    let environment: [String: String]
    let backends: GridBackends
    private let redis: RedisServer?

    static let processEnvironment = ProcessInfo.processInfo.environment

    /// Whether the grid can run here: SQLite always; Redis when redis-server is installed; AWS when
    /// moto is (HTC_TEST_AWS_ENDPOINT). Under `make test` every kind must run.
    static func available(_ kind: Kind) -> Bool {
        let make = processEnvironment["HTC_TEST_SUITE"] == "make"
        switch kind {
        case .sqlite: return true
        case .redis: return RedisServer.installed || make
        case .aws: return processEnvironment["HTC_TEST_AWS_ENDPOINT"] != nil || make
        }
    }

    static func start(_ kind: Kind, name: String) async throws -> GridUnderTest {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-\(name)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var environment = processEnvironment
        let urls: GridURLs
        var redis: RedisServer?
        var registry = BackendRegistry.installed
        switch kind {
        case .sqlite:
            urls = GridURLs(grid: "sqlite://" + directory.appendingPathComponent("grid.db").path)
        case .redis:
            let server = try await RedisServer.start(directory: directory, port: nil)
            redis = server
            urls = GridURLs(grid: "redis://127.0.0.1:\(server.port)/0?prefix=\(name)")
        case .aws:
            let endpoint = try #require(processEnvironment["HTC_TEST_AWS_ENDPOINT"], "scripts/with-moto.sh should have set HTC_TEST_AWS_ENDPOINT")
            let prefix = "\(name.prefix(12))-\(UUID().uuidString.prefix(8).lowercased())"
            environment["AWS_ACCESS_KEY_ID"] = "testing"
            environment["AWS_SECRET_ACCESS_KEY"] = "testing"
            environment["AWS_ENDPOINT_URL"] = endpoint
            environment["AWS_EC2_METADATA_DISABLED"] = "true"
            urls = GridURLs(
                queue: "sqs://us-east-1/\(prefix)", state: "dynamodb://us-east-1/\(prefix)?lease_shards=1",
                payload: "s3://\(prefix)/payloads?region=us-east-1")
            try await AWSSetup(environment: environment).create(
                queue: BackendURL(urls.queue!), priorities: [0], state: BackendURL(urls.state!), payload: BackendURL(urls.payload!))
            registry = BackendRegistry([AWSPlugin(environment: environment)])
        }
        let backends = try await registry.makeBackends(urls, context: BackendContext())
        return GridUnderTest(kind: kind, directory: directory, urls: urls, environment: environment, backends: backends, redis: redis)
    }

    /// The backend options of a grid command (`--grid` or `--queue/--state/--payload`).
    var arguments: [String] {
        if let grid = urls.grid { return ["--grid", grid] }
        return ["--queue", urls.queue!, "--state", urls.state!, "--payload", urls.payload!]
    }

    /// The TCP port of the grid's server (redis-server or moto), for a proxy in front of it; `nil` for SQLite.
    var serverPort: Int? {
        switch kind {
        case .sqlite: return nil
        case .redis: return redis?.port
        case .aws: return environment["AWS_ENDPOINT_URL"].flatMap { URL(string: $0)?.port }
        }
    }

    /// The backend options and environment of a process that reaches the grid's server through a proxy
    /// on `port` (Redis and AWS only).
    func through(proxy port: Int) -> (arguments: [String], environment: [String: String]) {
        switch kind {
        case .sqlite: return (arguments, environment)
        case .redis: return (["--grid", "redis://127.0.0.1:\(port)/0?prefix=\(urls.grid!.split(separator: "=").last!)"], environment)
        case .aws:
            var environment = environment
            environment["AWS_ENDPOINT_URL"] = "http://127.0.0.1:\(port)"
            return (arguments, environment)
        }
    }

    /// Starts one of the grid's executables (`htc`, `htc-agent`, `htc-server`) with the grid's backend
    /// options after `arguments` (or `backend`, to reach it another way).
    func start(
        _ executable: String, _ arguments: [String], output: FileHandle? = nil,
        backend: (arguments: [String], environment: [String: String])? = nil
    ) throws -> Process {
        let process = Process()
        process.executableURL = try AgentPool.agentBinary().deletingLastPathComponent().appendingPathComponent(executable)
        process.environment = backend?.environment ?? environment
        process.arguments = arguments + (backend?.arguments ?? self.arguments)
        if let output {
            process.standardOutput = output
            process.standardError = output
        }
        try process.run()
        return process
    }

    func stop() {
        redis?.kill()
        try? FileManager.default.removeItem(at: directory)
    }
}

/// An `htc-server` process on a free loopback port.
struct ServerProcess {
    let process: Process
    let base: URL

    /// Starts `htc-server` with `arguments` and waits until its log says which port it listens on:
    /// a free one, or `port` (to start a server again where the last one was).
    static func start(executable: URL, arguments: [String], environment: [String: String]? = nil, port: Int = 0) async throws -> ServerProcess {
        let server = Process()
        server.executableURL = executable
        server.arguments = ["--listen", "127.0.0.1:\(port)", "--log-level", "info"] + arguments
        if let environment { server.environment = environment }
        let pipe = Pipe()
        server.standardError = pipe
        server.standardOutput = FileHandle.nullDevice
        try server.run()
        let port: Int? = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                var text = ""
                let handle = pipe.fileHandleForReading
                while true {
                    let data = handle.availableData
                    if data.isEmpty { return continuation.resume(returning: nil) }
                    text += String(decoding: data, as: UTF8.self)
                    if let line = text.split(separator: "\n").first(where: { $0.contains("listening on 127.0.0.1:") }),
                        let port = line.split(separator: ":").last.flatMap({ Int($0.trimmingCharacters(in: .whitespaces)) })
                    {
                        // Keep draining the log so the server never blocks on a full pipe.
                        DispatchQueue.global().async { while !handle.availableData.isEmpty {} }
                        return continuation.resume(returning: port)
                    }
                }
            }
        }
        guard let port else {
            server.terminate()
            throw GridError.unavailable("htc-server did not report its port")
        }
        return ServerProcess(process: server, base: URL(string: "http://127.0.0.1:\(port)")!)
    }

    /// One request; `nil` status when the connection failed.
    func request(_ method: String, _ path: String, body: Data? = nil, headers: [String: String] = [:]) async -> (status: Int?, data: Data) {
        var request = URLRequest(url: URL(string: path, relativeTo: base)!)
        request.httpMethod = method
        request.httpBody = body
        request.timeoutInterval = 120
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        if body != nil { request.setValue("application/json", forHTTPHeaderField: "content-type") }
        do {
            let (data, response) = try await URLSession.shared.data(for: request)
            return ((response as? HTTPURLResponse)?.statusCode, data)
        } catch {
            return (nil, Data())
        }
    }

    func kill() {
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}
