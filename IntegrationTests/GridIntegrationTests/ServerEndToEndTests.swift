import Foundation
import GridKernel
import Testing

@testable import HTCCore

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `htc-server` and two `htc-agent` processes on one SQLite grid; a client submits 20,000 tasks over
/// HTTP with an API key and reads every output back.
@Suite(.serialized) struct ServerEndToEndTests {
    private func binary(_ name: String) throws -> URL {
        try AgentPool.agentBinary().deletingLastPathComponent().appendingPathComponent(name)
    }

    /// Starts `htc-server` on a free loopback port and returns it with its base URL, read from its log.
    private func startServer(grid: String, keys: String) async throws -> (Process, URL) {
        let server = try await ServerProcess.start(executable: try binary("htc-server"), arguments: ["--grid", grid, "--api-keys", keys])
        return (server.process, server.base)
    }

    private func request(_ base: URL, _ method: String, _ path: String, body: Data? = nil, key: String) async throws -> (Int, Data) {
        var request = URLRequest(url: URL(string: path, relativeTo: base)!)
        request.httpMethod = method
        request.httpBody = body
        request.timeoutInterval = 120
        request.setValue(key, forHTTPHeaderField: "x-api-key")
        if body != nil { request.setValue("application/json", forHTTPHeaderField: "content-type") }
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, data)
    }

    private func object(_ data: Data) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    @Test func twentyThousandTasksThroughHTTP() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-server-e2e-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let grid = "sqlite://" + directory.appendingPathComponent("grid.db").path
        let keys = directory.appendingPathComponent("keys").path
        try "acme:acme-secret\n".write(toFile: keys, atomically: true, encoding: .utf8)

        let (server, base) = try await startServer(grid: grid, keys: keys)
        defer { if server.isRunning { kill(server.processIdentifier, SIGKILL) } }
        var agents: [Process] = []
        defer { for agent in agents where agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }
        for _ in 0..<2 {
            let agent = Process()
            agent.executableURL = try binary("htc-agent")
            agent.arguments = ["--grid", grid, "--concurrency", "256", "--log-level", "warning"]
            try agent.run()
            agents.append(agent)
        }

        let total = 20_000
        let start = ContinuousClock.now
        let (createdStatus, created) = try await request(base, "POST", "/v1/sessions", body: Data("{}".utf8), key: "acme-secret")
        #expect(createdStatus == 201)
        let session = try #require(try object(created)["id"] as? String)
        for batch in stride(from: 0, to: total, by: 10_000) {
            let tasks = (batch..<batch + 10_000).map { #"{"payload_base64":"\#(Data("input-\($0)".utf8).base64EncodedString())"}"# }
            let body = Data(#"{"tasks":[\#(tasks.joined(separator: ","))]}"#.utf8)
            let (status, data) = try await request(base, "POST", "/v1/sessions/\(session)/tasks", body: body, key: "acme-secret")
            #expect(status == 201)
            #expect((try object(data)["task_ids"] as? [String])?.count == 10_000)
        }
        let submitted = ContinuousClock.now

        // Poll the counts until everything is done, then read every output from the start.
        try await waitUntil(timeout: .seconds(300), "all \(total) tasks finished") {
            let (_, data) = try await request(base, "GET", "/v1/sessions/\(session)", key: "acme-secret")
            let counts = try object(data)["counts"] as? [String: Int]
            #expect(counts?["failed"] == 0)
            return counts?["finished"] == total
        }
        var outputs: [String: String] = [:]
        var cursor: String?
        repeat {
            let path = "/v1/sessions/\(session)/results?limit=10000" + (cursor.map { "&after=\($0)" } ?? "")
            let (status, data) = try await request(base, "GET", path, key: "acme-secret")
            #expect(status == 200)
            let page = try object(data)
            for item in page["items"] as? [[String: Any]] ?? [] {
                let id = try #require(item["task_id"] as? String)
                let output = (item["output_base64"] as? String).flatMap { Data(base64Encoded: $0) }
                outputs[id] = output.map { String(decoding: $0, as: UTF8.self) }
            }
            cursor = page["has_more"] as? Bool == true ? page["next"] as? String : nil
        } while cursor != nil
        let finished = ContinuousClock.now

        #expect(outputs.count == total)
        for index in 0..<total where outputs["\(session)_\(index)"] != "input-\(index)" {
            Issue.record("task \(index): output \(outputs["\(session)_\(index)"] ?? "missing")")
            break
        }
        let elapsed = (finished - start).timeInterval
        print("htc-server end to end: \(total) tasks in \(elapsed) s, \(Int(Double(total) / elapsed)) tasks/s; submission \((submitted - start).timeInterval) s")

        // A missing key is refused.
        let (unauthorized, _) = try await request(base, "GET", "/v1/sessions", key: "")
        #expect(unauthorized == 401)

        server.terminate()
        server.waitUntilExit()
        #expect(server.terminationStatus == 0)
        for agent in agents {
            agent.terminate()
            agent.waitUntilExit()
        }
    }
}
