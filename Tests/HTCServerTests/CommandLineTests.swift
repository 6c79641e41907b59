import Foundation
import GridKernel
import HTCCore
import Testing

@testable import HTCServer

@Suite struct ServerCommandLineTests {
    private func settings(_ arguments: [String], environment: [String: String] = [:]) async throws -> ServerCommand.Settings {
        try await ServerCommand.parse(arguments).settings(Environment(environment))
    }

    @Test func authNoneIsAllowedOnlyOnLoopback() async throws {
        #expect(try await settings(["--listen", "127.0.0.1:9000"]).authName == "none")
        #expect(try await settings(["--listen", "[::1]:9000", "--auth", "none"]).listen == ListenAddress("::1:9000"))
        #expect(try await settings(["--listen", "localhost:9000"]).listen.port == 9000)
        for address in ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080", "127.example.com:80"] {
            await #expect(throws: GridError.self, "\(address)") { try await settings(["--listen", address, "--auth", "none"]) }
        }
        do {
            _ = try await settings(["--listen", "0.0.0.0:8080"])
            Issue.record("auth none on 0.0.0.0 was accepted")
        } catch let error as GridError {
            #expect(error.message.contains("loopback"))
        }
    }

    @Test func environmentIsTheFallback() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-server-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("keys").path
        try "acme:secret\n".write(toFile: file, atomically: true, encoding: .utf8)

        let fromEnvironment = try await settings([], environment: ["HTC_LISTEN": "0.0.0.0:7000", "HTC_API_KEYS": file, "HTC_REAPER_INTERVAL": "0"])
        #expect(fromEnvironment.listen.port == 7000)
        #expect(fromEnvironment.authName == "api-key")
        #expect(fromEnvironment.reaperInterval == nil)
        let flagsWin = try await settings(["--listen", "127.0.0.1:7001", "--auth", "none"], environment: ["HTC_LISTEN": "0.0.0.0:7000", "HTC_API_KEYS": file])
        #expect(flagsWin.listen.port == 7001)
        #expect(flagsWin.authName == "none")
        #expect(flagsWin.reaperInterval == .seconds(5))
    }

    @Test func badSettingsAreRefused() async throws {
        await #expect(throws: GridError.self) { try await settings(["--auth", "api-key"]) }
        await #expect(throws: GridError.self) { try await settings(["--auth", "api-key", "--api-keys", "/nonexistent/keys"]) }
        await #expect(throws: GridError.self) { try await settings(["--auth", "magic"]) }
        await #expect(throws: GridError.self) { try await settings(["--auth", "jwt"]) }
        await #expect(throws: GridError.self) { try await settings(["--auth", "jwt", "--jwks", "/nonexistent/jwks.json"]) }
        await #expect(throws: GridError.self) { try await settings(["--listen", "8080"]) }
        await #expect(throws: GridError.self) { try await settings(["--listen", ":8080"]) }
        await #expect(throws: GridError.self) { try await settings(["--max-body-bytes", "0"]) }
    }
}
