import GridAWS
import GridKernel
import GridPlugins
import GridRedis
import GridSQLite

/// The backend plugins built into `htc` and `htc-agent`.
///
/// An in-tree backend adds one line here (and its target to the dependencies of `HTCCore` in
/// Package.swift). A backend in a package of its own does not edit this package: it builds its own
/// `htc` and `htc-agent` executables with ``HTCInstallation`` (see docs/plugins.md).
let builtInPlugins: [any GridBackendPlugin] = [
    InMemoryPlugin(),
    SQLitePlugin(),
    RedisPlugin(),
    AWSPlugin(),
]

/// What one build of the executables is made of: the backend plugins it links beyond the built-in
/// ones, and the name of its agent executable, which `htc demo` and `htc bench` start.
///
/// An outside package that ships a backend builds its own pair of executables, each a three-line
/// `@main` that runs the command inside an installation naming its plugin:
///
/// ```swift
/// @main struct Main {
///     static func main() async {
///         await HTCCommand.main(installation: HTCInstallation(plugins: [PostgresPlugin()], agentExecutable: "htc-postgres-agent"))
///     }
/// }
/// ```
///
/// The installation is a task-local value: it holds for the command and every task it starts, with no
/// global state, and tests can run commands under different installations side by side.
public struct HTCInstallation: Sendable {
    /// Plugins added to the built-in ones (memory, SQLite, Redis). Their schemes must not clash with
    /// those of the built-in plugins.
    public var plugins: [any GridBackendPlugin]
    /// The file name of the agent executable that `htc demo` and `htc bench` start from the directory of
    /// the running executable (unless `HTC_AGENT_BIN` names a binary).
    public var agentExecutable: String

    /// Creates an installation; the defaults are those of the main package's `htc` and `htc-agent`.
    public init(plugins: [any GridBackendPlugin] = [], agentExecutable: String = "htc-agent") {
        self.plugins = plugins
        self.agentExecutable = agentExecutable
    }

    /// The installation the current task runs under; the main package's by default.
    @TaskLocal public static var current = HTCInstallation()

    /// The registry of the built-in plugins and ``plugins``.
    ///
    /// - Precondition: no two plugins claim the same scheme.
    public var registry: BackendRegistry { BackendRegistry(builtInPlugins + plugins) }
}

extension BackendRegistry {
    /// The registry of every plugin of the current ``HTCInstallation``.
    public static var installed: BackendRegistry { HTCInstallation.current.registry }
}

extension HTCCommand {
    /// Runs `htc` with the arguments of the process, under `installation`.
    public static func main(installation: HTCInstallation) async {
        await HTCInstallation.$current.withValue(installation) { await main() }
    }
}

extension AgentCommand {
    /// Runs `htc-agent` with the arguments of the process, under `installation`.
    public static func main(installation: HTCInstallation) async {
        await HTCInstallation.$current.withValue(installation) { await main() }
    }
}
