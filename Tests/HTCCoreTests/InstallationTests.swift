import Foundation
import GridKernel
import GridPlugins
import Testing

@testable import HTCCore

/// A plugin from "outside": serves `acme://` with in-memory backends and counts what it builds.
private struct AcmePlugin: GridBackendPlugin {
    var schemes: [String] { ["acme"] }

    func makeQueue(_ url: BackendURL, context: BackendContext) async throws -> any TaskQueue {
        try await InMemoryPlugin().makeQueue(BackendURL("memory://\(url.host)"), context: context)
    }

    func makeStateStore(_ url: BackendURL, context: BackendContext) async throws -> any StateStore {
        try await InMemoryPlugin().makeStateStore(BackendURL("memory://\(url.host)"), context: context)
    }

    func makePayloadStore(_ url: BackendURL, context: BackendContext) async throws -> any PayloadStore {
        try await InMemoryPlugin().makePayloadStore(BackendURL("memory://\(url.host)"), context: context)
    }
}

/// How a plugin package builds its own `htc` and `htc-agent`: ``HTCInstallation``.
@Suite struct InstallationTests {
    @Test func anInstallationsPluginsServeTheCommandsUnderIt() async throws {
        let options = try GridOptions.parse(["--grid", "acme://x"])
        // Outside the installation the scheme is unknown…
        await #expect(throws: GridError.self) { _ = try await options.makeBackends(logger: .init(label: "test")) }
        // …inside it, the commands' own backend factory finds it, next to the built-in schemes.
        try await HTCInstallation.$current.withValue(HTCInstallation(plugins: [AcmePlugin()])) {
            #expect(BackendRegistry.installed.schemes.contains("acme"))
            #expect(BackendRegistry.installed.schemes.contains("sqlite"))
            let backends = try await options.makeBackends(logger: .init(label: "test"))
            let session = SessionRecord(id: try SessionID("s"), options: SessionOptions(), createdAt: Date())
            try await backends.state.createSession(session)
            #expect(try await backends.state.session(session.id) == session)
        }
        #expect(!BackendRegistry.installed.schemes.contains("acme"))
    }

    @Test func benchStartsTheInstallationsAgentExecutable() throws {
        try HTCInstallation.$current.withValue(HTCInstallation(agentExecutable: "htc-acme-agent")) { () throws in
            #expect {
                _ = try AgentPool.agentBinary(Environment([:]))
            } throws: { error in
                (error as? GridError)?.message.contains("htc-acme-agent not found next to") == true
            }
            // HTC_AGENT_BIN still wins.
            #expect(try AgentPool.agentBinary(Environment(["HTC_AGENT_BIN": "/opt/acme/agent"])).path == "/opt/acme/agent")
        }
        #expect(HTCInstallation.current.agentExecutable == "htc-agent")
    }
}
