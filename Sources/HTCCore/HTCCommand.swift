import ArgumentParser

/// `htc`: the HTC Grid command line.
public struct HTCCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "htc",
        abstract: "HTC Grid: run very many small tasks on a pool of agents.",
        discussion: "Backends are chosen by URL: --grid sqlite:///path/grid.db sets all three; --queue, --state and --payload override one each. The client commands can go through htc-server instead: --server URL (HTC_SERVER) with --api-key (HTC_API_KEY). Every flag has an HTC_* variable.",
        subcommands: [
            DemoCommand.self, BenchCommand.self, SubmitCommand.self, StatusCommand.self,
            WaitCommand.self, ResultsCommand.self, CancelCommand.self, DeleteCommand.self, SessionsCommand.self, AWSCommand.self,
        ]
    )

    public init() {}
}
