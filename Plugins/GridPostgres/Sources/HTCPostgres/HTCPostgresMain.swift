import GridPostgres
import HTCCore

/// `htc-postgres`: `htc` with the PostgreSQL backend (`--grid postgres://…`).
@main
struct HTCPostgresMain {
    static func main() async {
        // The one line that adds the plugin: the installation names it and this build's agent executable.
        await HTCCommand.main(installation: HTCInstallation(plugins: [PostgresPlugin()], agentExecutable: "htc-postgres-agent"))
    }
}
