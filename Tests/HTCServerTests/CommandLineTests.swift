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

    @Test func scalingSettings() async throws {
        let defaults = try await settings([]).scaling
        #expect(defaults == ServerCommand.ScalingSettings(configuration: ScalingConfiguration(), interval: .seconds(5), local: false))
        let local = try await settings(["--local-agents", "1..4", "--tasks-per-agent", "16", "--scale-in-cooldown", "2", "--scale-interval", "0.5"]).scaling
        #expect(local.local && local.configuration.minimum == 1 && local.configuration.maximum == 4)
        #expect(local.configuration.tasksPerAgent == 16 && local.configuration.scaleInCooldown == .seconds(2) && local.interval == .milliseconds(500))
        let fromEnvironment = try await settings([], environment: ["HTC_MIN_AGENTS": "2", "HTC_MAX_AGENTS": "50", "HTC_TASKS_PER_AGENT": "32"]).scaling
        #expect(!fromEnvironment.local && fromEnvironment.configuration == ScalingConfiguration(tasksPerAgent: 32, minimum: 2, maximum: 50))
        for bad in [["--local-agents", "4"], ["--local-agents", "4..1"], ["--local-agents", "a..b"], ["--local-agents", "1..2", "--max-agents", "3"],
                    ["--min-agents=-1"], ["--tasks-per-agent", "0"], ["--scale-interval", "0"]] {
            await #expect(throws: GridError.self, "\(bad)") { try await settings(bad) }
        }
    }

    @Test func scaleDeploymentFromTheFlagOrTheVariableButNotWithLocalAgents() async throws {
        let flag = try await settings(["--scale-deployment", "htc-agent", "--min-agents", "1", "--max-agents", "20"]).scaling
        #expect(flag.deployment == "htc-agent" && !flag.local)
        #expect(flag.configuration.minimum == 1 && flag.configuration.maximum == 20)
        #expect(try await settings([], environment: ["HTC_SCALE_DEPLOYMENT": "agents"]).scaling.deployment == "agents")
        #expect(try await settings(["--scale-deployment", "a"], environment: ["HTC_SCALE_DEPLOYMENT": "b"]).scaling.deployment == "a")
        for (arguments, environment) in [
            (["--local-agents", "1..4", "--scale-deployment", "htc-agent"], [:]),
            (["--local-agents", "1..4"], ["HTC_SCALE_DEPLOYMENT": "htc-agent"]),
            (["--scale-deployment", "htc-agent"], ["HTC_LOCAL_AGENTS": "1..4"]),
        ] {
            do {
                _ = try await settings(arguments, environment: environment)
                Issue.record("\(arguments) \(environment) was accepted")
            } catch let error as GridError {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains("--local-agents") && error.message.contains("--scale-deployment") && error.message.contains("not both"))
            }
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
        #expect(fromEnvironment.reaper == nil)
        let flagsWin = try await settings(["--listen", "127.0.0.1:7001", "--auth", "none"], environment: ["HTC_LISTEN": "0.0.0.0:7000", "HTC_API_KEYS": file])
        #expect(flagsWin.listen.port == 7001)
        #expect(flagsWin.authName == "none")
        #expect(flagsWin.reaper?.interval == .seconds(5))
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
        await #expect(throws: GridError.self) { try await settings(["--results-page-bytes", "0"]) }
        await #expect(throws: GridError.self) { try await settings(["--inline-output-bytes=-1"]) }
        await #expect(throws: GridError.self) { try await settings(["--htcgrid-max-result-bytes", "1000"]) }
        await #expect(throws: GridError.self) { try await settings(["--htcgrid-compat", "--htcgrid-max-result-bytes", "0"]) }
    }

    @Test func responseLimitsFromFlagsOrVariables() async throws {
        let defaults = try await settings(["--htcgrid-compat"])
        #expect(defaults.configuration.resultsPageBytes == 4 * 1024 * 1024)
        #expect(defaults.configuration.inlineOutputLimit == 1024 * 1024)
        #expect(defaults.htcgrid?.maxResultBytes == 8 * 1024 * 1024)
        let flags = try await settings(["--htcgrid-compat", "--results-page-bytes", "1000", "--inline-output-bytes", "10", "--htcgrid-max-result-bytes", "500"])
        #expect(flags.configuration.resultsPageBytes == 1000)
        #expect(flags.configuration.inlineOutputLimit == 10)
        #expect(flags.htcgrid?.maxResultBytes == 500)
        let variables = try await settings(
            [], environment: ["HTC_HTCGRID_COMPAT": "1", "HTC_RESULTS_PAGE_BYTES": "2000", "HTC_INLINE_OUTPUT_BYTES": "20", "HTC_HTCGRID_MAX_RESULT_BYTES": "600"]
        )
        #expect(variables.configuration.resultsPageBytes == 2000)
        #expect(variables.configuration.inlineOutputLimit == 20)
        #expect(variables.htcgrid?.maxResultBytes == 600)
    }
}
