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

    /// Runs `htc` with the process's arguments, accepting the remote options before the subcommand
    /// too (`htc --server URL --api-key K submit FILE`; see ``remoteOptionsAfterSubcommand(_:)``).
    public static func main() async {
        await main(remoteOptionsAfterSubcommand(Array(CommandLine.arguments.dropFirst())))
    }

    /// The remote options (`--server`, `--api-key`, as `--name VALUE` or `--name=VALUE`) that come
    /// before the subcommand, moved after its name, where each subcommand declares them. Everything
    /// else keeps its order; a subcommand without remote options rejects them with its usual message.
    public static func remoteOptionsAfterSubcommand(_ arguments: [String]) -> [String] {
        var leading: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if argument.hasPrefix("--server=") || argument.hasPrefix("--api-key=") {
                leading.append(argument)
                index += 1
            } else if (argument == "--server" || argument == "--api-key") && index + 1 < arguments.count {
                leading += [argument, arguments[index + 1]]
                index += 2
            } else {
                break
            }
        }
        guard !leading.isEmpty, index < arguments.count else { return arguments }
        return [arguments[index]] + leading + arguments[(index + 1)...]
    }
}
