import GridKernel
import HummingbirdTesting
import Logging
import Testing

@testable import HTCCore

/// `htc-agent --lambda-emulator`: the mistakes that must stop the agent with a message saying what to fix.
@Suite struct LambdaEmulatorProcessTests {
    let logger = Logger(label: "test")

    @Test func anEmulatorThatExitsBeforeListeningStopsTheAgent() async throws {
        let port = try await LambdaHandlerTests.emulator(invocations: Invocations()).test(.live) { client in try #require(client.port) }
        let emulator = try LambdaEmulatorProcess(command: "printf 'no %s\\n' bootstrap >&2; exit 3", host: "127.0.0.1", port: port, logger: logger)
        let error = await #expect(throws: GridError.self) { try await emulator.run() }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains("exited with status 3 before accepting connections on 127.0.0.1:\(port)") == true, "\(String(describing: error))")
        // Its output, not its command line.
        #expect(error?.message.contains("its last output: no bootstrap") == true, "\(String(describing: error))")
        await #expect(throws: GridError.self) { try await emulator.waitUntilReady() }
    }

    @Test func aPortInUseIsRefused() async throws {
        try await LambdaHandlerTests.emulator(invocations: Invocations()).test(.live) { client in
            let port = try #require(client.port)
            let emulator = try LambdaEmulatorProcess(command: "sleep 60", host: "127.0.0.1", port: port, logger: logger)
            let error = await #expect(throws: GridError.self) { try await emulator.run() }
            #expect(error?.message.contains("something already listens on 127.0.0.1:\(port)") == true, "\(String(describing: error))")
        }
        #expect(throws: GridError.self) { try LambdaEmulatorProcess(command: "x", host: "10.0.0.1", port: 80, logger: logger) }
        #expect(throws: GridError.self) { try LambdaEmulatorProcess(command: " ", host: "127.0.0.1", port: 80, logger: logger) }
    }
}
