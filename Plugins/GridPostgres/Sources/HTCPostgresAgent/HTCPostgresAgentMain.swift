import GridPostgres
import HTCCore

/// `htc-postgres-agent`: `htc-agent` with the PostgreSQL backend (`--grid postgres://…`).
@main
struct HTCPostgresAgentMain {
    static func main() async {
        // The one line that adds the plugin.
        await AgentCommand.main(installation: HTCInstallation(plugins: [PostgresPlugin()], agentExecutable: "htc-postgres-agent"))
    }
}
