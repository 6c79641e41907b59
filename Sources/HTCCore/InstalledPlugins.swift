import GridAWS
import GridKernel
import GridPlugins
import GridRedis
import GridSQLite

/// The backend plugins linked into `htc` and `htc-agent`.
///
/// To add a third-party backend, depend on its package in Package.swift (target `HTCCore`) and add
/// one line here; see docs/plugins.md.
let installedPlugins: [any GridBackendPlugin] = [
    InMemoryPlugin(),
    SQLitePlugin(),
    RedisPlugin(),
    AWSPlugin(),
]

extension BackendRegistry {
    /// The registry of every installed plugin.
    public static var installed: BackendRegistry { BackendRegistry(installedPlugins) }
}
