import ArgumentParser
import Foundation
import GridKernel
import GridPlugins
import HTCCore
import Hummingbird
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// `htc-server`: the HTTP control plane of HTC Grid. Serves API v1 over the backends named by
/// `--grid` (or `--queue`/`--state`/`--payload`) and runs a reaper; SIGTERM or SIGINT shut it down
/// gracefully.
public struct ServerCommand: AsyncParsableCommand {
    /// The command's name and help.
    public static let configuration = CommandConfiguration(
        commandName: "htc-server",
        abstract: "Serve the HTC Grid HTTP API (v1) over the grid's backends.",
        discussion: "Every option also reads an HTC_* environment variable; flags win over variables."
    )

    @OptionGroup var grid: GridOptions

    @Option(help: "Address to listen on, HOST:PORT or [IPV6]:PORT (env HTC_LISTEN, default 127.0.0.1:8080).")
    var listen: String?

    @Option(help: "Authentication: none (loopback only), api-key or jwt (env HTC_AUTH; default api-key when --api-keys is given, jwt when --jwks is, else none).")
    var auth: String?

    @Option(help: "File of API keys, one tenant:key per line (env HTC_API_KEYS).")
    var apiKeys: String?

    @Option(help: "JSON Web Key Set file of the keys that sign tokens, for --auth jwt (env HTC_JWKS).")
    var jwks: String?

    @Option(help: "Required token issuer (iss), for --auth jwt (env HTC_JWT_ISSUER).")
    var jwtIssuer: String?

    @Option(help: "Required token audience (aud), e.g. a Cognito app client id, for --auth jwt (env HTC_JWT_AUDIENCE).")
    var jwtAudience: String?

    @Option(help: "Token claim naming the tenant, for --auth jwt (env HTC_JWT_TENANT_CLAIM, default sub).")
    var jwtTenantClaim: String?

    @Option(help: "Largest request body in bytes; larger ones get 413 (env HTC_MAX_BODY_BYTES, default 67108864).")
    var maxBodyBytes: Int?

    @Option(help: "Outputs up to this many bytes travel inline in results pages; larger ones as a link to GET /v1/tasks/{id}/output (env HTC_INLINE_OUTPUT_BYTES, default 1048576).")
    var inlineOutputBytes: Int?

    @Option(help: "A results page ends early once the outputs it read reach this many bytes (env HTC_RESULTS_PAGE_BYTES, default 4194304).")
    var resultsPageBytes: Int?

    @Option(help: "Seconds between reaper passes; 0 turns the server's reaper off (env HTC_REAPER_INTERVAL, default 5).")
    var reaperInterval: Double?

    @Option(help: "Seconds a submission may go without progress before the reaper repairs it as interrupted (env HTC_SUBMISSION_GRACE, default 120).")
    var submissionGrace: Double?

    @Flag(help: "Also serve HTC-Grid's REST API (POST /submit, GET /result, POST /cancel) for its Python connector; the payload URL needs ?layout=htcgrid (env HTC_HTCGRID_COMPAT=1).")
    var htcgridCompat = false

    @Option(help: "Path HTC-Grid's routes are served under, its API Gateway stage (env HTC_HTCGRID_BASE_PATH, default /v1).")
    var htcgridBasePath: String?

    @Option(help: "Largest HTC-Grid GET /result answer in bytes; a session with more terminal tasks gets 542 (env HTC_HTCGRID_MAX_RESULT_BYTES, default 8388608).")
    var htcgridMaxResultBytes: Int?

    @Option(help: "Run between MIN and MAX htc-agent processes on this machine, started and stopped by the scaling policy (env HTC_LOCAL_AGENTS, e.g. 1..4).")
    var localAgents: String?

    @Option(help: "Set the replicas of this agent Deployment from the scaling policy, through the in-cluster Kubernetes API (service-account token and CA), instead of KEDA; in the server's namespace or HTC_KUBERNETES_NAMESPACE (env HTC_SCALE_DEPLOYMENT, e.g. htc-agent).")
    var scaleDeployment: String?

    @Option(help: "Tasks (waiting and running) one agent is expected to take (env HTC_TASKS_PER_AGENT, default 8).")
    var tasksPerAgent: Int?

    @Option(help: "Fewest agents the policy asks for, without --local-agents (env HTC_MIN_AGENTS, default 0).")
    var minAgents: Int?

    @Option(help: "Most agents the policy asks for, without --local-agents (env HTC_MAX_AGENTS, default 100).")
    var maxAgents: Int?

    @Option(help: "Seconds after a change before the policy scales in (env HTC_SCALE_IN_COOLDOWN, default 60).")
    var scaleInCooldown: Double?

    @Option(help: "Seconds between scaling decisions (env HTC_SCALE_INTERVAL, default 5).")
    var scaleInterval: Double?

    /// Creates the command (ArgumentParser fills in the options).
    public init() {}

    /// Runs the server until SIGTERM or SIGINT.
    public func run() async throws {
        let environment = HTCCore.Environment()
        LoggingSetup.bootstrap(level: try grid.level(environment))
        let logger = Logger(label: "htc.server")
        let settings = try await settings(environment)
        let backends = try await grid.makeBackends(logger: logger)
        for warning in await backends.durabilityWarnings() { logger.warning("\(warning)") }
        if settings.htcgrid != nil, !(backends.payloads is any SharedPayloadStore) {
            throw GridError.invalidArgument(
                "--htcgrid-compat needs the data plane in HTC-Grid's layout, shared with the connector and the agents: "
                    + "add ?layout=htcgrid to the payload URL (--payload or --grid), and give the agents the same URL"
            )
        }
        let metrics = ServerMetrics()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics.registry))
        let scaling = try scaling(settings.scaling, backends: backends, environment: environment, logger: logger)
        try await Self.checkAccess(scaling, logger: logger)
        let api = GridAPI(
            client: GridClient(backends: backends, logger: logger), configuration: settings.configuration, metrics: metrics, scaling: scaling
        )
        var app = Application(
            router: api.makeRouter(auth: settings.auth, htcgrid: settings.htcgrid),
            configuration: ApplicationConfiguration(address: .hostname(settings.listen.host, port: settings.listen.port), serverName: "htc-server"),
            logger: logger
        )
        app.addServices(AutoscalerService(scaling: scaling))
        if let reaper = settings.reaper {
            app.addServices(ReaperService(reaper: Reaper(backends: backends, configuration: reaper, logger: logger)))
        }
        logger.info(
            "htc-server starting",
            metadata: ["listen": "\(settings.listen)", "auth": "\(settings.authName)", "htcgrid": "\(settings.htcgrid?.basePath ?? "off")"]
        )
        try await app.runService()
    }

    /// The settings after applying the environment and the defaults.
    struct Settings {
        var listen: ListenAddress
        var auth: AuthMode
        var authName: String
        var configuration: ServerConfiguration
        var reaper: ReaperConfiguration?
        var htcgrid: HTCGridCompatibility?
        var scaling: ScalingSettings
    }

    /// The scaling policy's settings and what, if anything, carries its decisions out.
    struct ScalingSettings: Equatable {
        var configuration: ScalingConfiguration
        var interval: Duration
        /// `--local-agents`: the server runs the agents as processes.
        var local: Bool
        /// `--scale-deployment`: the agent Deployment whose replicas the server sets.
        var deployment: String? = nil
    }

    /// The autoscaler, with a local process scaler for `--local-agents` or a Deployment scaler for
    /// `--scale-deployment`.
    private func scaling(
        _ settings: ScalingSettings, backends: GridBackends, environment: HTCCore.Environment, logger: Logger
    ) throws -> ServerScaling {
        var scaler: (any Scaler)?
        if settings.local {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("htc-server-agents-\(getpid())")
            scaler = try LocalProcessScaler(
                binary: try LocalProcessScaler.agentBinary(), arguments: LocalProcessScaler.gridArguments(grid.urls(environment)),
                directory: directory, prefix: "local", logger: logger
            )
        } else if let deployment = settings.deployment {
            scaler = try KubernetesDeploymentScaler.make(deployment: deployment, environment: environment, logger: logger)
        }
        let autoscaler = try Autoscaler(
            queue: backends.queue, scaler: scaler, configuration: settings.configuration, interval: settings.interval, logger: logger
        )
        return ServerScaling(autoscaler: autoscaler, scaler: scaler, configuration: settings.configuration)
    }

    /// Reads the agent Deployment's scale once before serving, so that a missing Role or a wrong name
    /// stops the server with the reason instead of a warning every interval. An unreachable API is only
    /// logged: the autoscaler retries at every tick.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unauthorized`` or ``GridKernel/GridError/Code/notFound``
    ///   from ``HTCCore/KubernetesDeploymentScaler/capacity()``.
    static func checkAccess(_ scaling: ServerScaling, logger: Logger) async throws {
        guard let scaler = scaling.scaler as? KubernetesDeploymentScaler else { return }
        do {
            let capacity = try await scaler.capacity()
            logger.info(
                "scaling the agent Deployment",
                metadata: ["url": "\(scaler.url)", "replicas": "\(capacity.desired)", "running": "\(capacity.current)"]
            )
        } catch let error as GridError where error.code == .unavailable {
            logger.warning("cannot read the agent Deployment's scale yet; retrying every scaling interval", metadata: ["error": "\(error)"])
        } catch {
            await scaling.shutdown()
            throw error
        }
    }

    /// Resolves flags, environment and defaults, and enforces the rules between them.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a bad address, an unknown auth mode,
    ///   `--auth none` on a non-loopback address or a missing or malformed key file.
    func settings(_ environment: HTCCore.Environment) async throws -> Settings {
        let listen = try ListenAddress(listen ?? environment.string("HTC_LISTEN") ?? "127.0.0.1:8080")
        let keyFile = apiKeys ?? environment.string("HTC_API_KEYS")
        let jwksFile = jwks ?? environment.string("HTC_JWKS")
        let authName = auth ?? environment.string("HTC_AUTH") ?? (keyFile != nil ? "api-key" : jwksFile != nil ? "jwt" : "none")
        let mode: AuthMode
        switch authName {
        case "none":
            guard listen.isLoopback else {
                throw GridError.invalidArgument(
                    "--auth none is allowed only on a loopback address (127.0.0.1, ::1, localhost), not \(listen.host): "
                        + "use --auth api-key --api-keys FILE, or listen on 127.0.0.1"
                )
            }
            mode = .none
        case "api-key":
            guard let keyFile else {
                throw GridError.invalidArgument("--auth api-key needs --api-keys FILE (or HTC_API_KEYS) with tenant:key lines")
            }
            mode = .apiKeys(try APIKeyStore(path: keyFile))
        case "jwt":
            guard let jwksFile else {
                throw GridError.invalidArgument("--auth jwt needs --jwks FILE (or HTC_JWKS), the JSON Web Key Set of the signing keys")
            }
            var configuration = JWTConfiguration(jwksPath: jwksFile)
            configuration.issuer = jwtIssuer ?? environment.string("HTC_JWT_ISSUER")
            configuration.audience = jwtAudience ?? environment.string("HTC_JWT_AUDIENCE")
            if let claim = jwtTenantClaim ?? environment.string("HTC_JWT_TENANT_CLAIM") { configuration.tenantClaim = claim }
            mode = .jwt(try await JWTVerifier(configuration: configuration))
        default:
            throw GridError.invalidArgument("--auth \(authName) is not one of none, api-key, jwt")
        }
        var configuration = ServerConfiguration()
        if let value = try maxBodyBytes ?? environment.int("HTC_MAX_BODY_BYTES") {
            guard value > 0 else { throw GridError.invalidArgument("--max-body-bytes must be positive") }
            configuration.maxBodyBytes = value
        }
        if let value = try inlineOutputBytes ?? environment.int("HTC_INLINE_OUTPUT_BYTES") {
            guard value >= 0 else { throw GridError.invalidArgument("--inline-output-bytes must be 0 or more") }
            configuration.inlineOutputLimit = value
        }
        if let value = try resultsPageBytes ?? environment.int("HTC_RESULTS_PAGE_BYTES") {
            guard value > 0 else { throw GridError.invalidArgument("--results-page-bytes must be positive") }
            configuration.resultsPageBytes = value
        }
        let reaper = try ReaperConfiguration.settings(interval: reaperInterval, submissionGrace: submissionGrace, environment)
        var htcgrid: HTCGridCompatibility?
        if try htcgridCompat || environment.bool("HTC_HTCGRID_COMPAT") {
            var compatibility = try HTCGridCompatibility(basePath: htcgridBasePath ?? environment.string("HTC_HTCGRID_BASE_PATH") ?? "/v1")
            if let bytes = try htcgridMaxResultBytes ?? environment.int("HTC_HTCGRID_MAX_RESULT_BYTES") {
                compatibility = try HTCGridCompatibility(
                    basePath: compatibility.basePath, maxTasksPerSubmission: compatibility.maxTasksPerSubmission, maxResultBytes: bytes
                )
            }
            htcgrid = compatibility
        } else if htcgridBasePath != nil || htcgridMaxResultBytes != nil {
            throw GridError.invalidArgument("--htcgrid-base-path and --htcgrid-max-result-bytes need --htcgrid-compat")
        }
        return Settings(
            listen: listen,
            auth: mode,
            authName: authName,
            configuration: configuration,
            reaper: reaper,
            htcgrid: htcgrid,
            scaling: try scalingSettings(environment)
        )
    }

    /// Resolves the scaling flags.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a malformed range, bounds given twice,
    ///   values out of range, or `--local-agents` with `--scale-deployment`.
    func scalingSettings(_ environment: HTCCore.Environment) throws -> ScalingSettings {
        var configuration = ScalingConfiguration()
        if let value = try tasksPerAgent ?? environment.int("HTC_TASKS_PER_AGENT") { configuration.tasksPerAgent = value }
        if let value = try scaleInCooldown ?? environment.seconds("HTC_SCALE_IN_COOLDOWN") {
            configuration.scaleInCooldown = Duration(timeInterval: value)
        }
        let minimum = try minAgents ?? environment.int("HTC_MIN_AGENTS")
        let maximum = try maxAgents ?? environment.int("HTC_MAX_AGENTS")
        let local = localAgents ?? environment.string("HTC_LOCAL_AGENTS")
        let deployment = scaleDeployment ?? environment.string("HTC_SCALE_DEPLOYMENT")
        if let local, let deployment {
            throw GridError.invalidArgument(
                "--local-agents \(local) and --scale-deployment \(deployment) both scale the agents: "
                    + "run them as local processes or in the Kubernetes Deployment, not both"
            )
        }
        if let local {
            guard minimum == nil, maximum == nil else {
                throw GridError.invalidArgument("--local-agents \(local) sets the bounds; leave out --min-agents and --max-agents")
            }
            let bounds = local.split(separator: ".", omittingEmptySubsequences: true)
            guard local.contains(".."), bounds.count == 2, let low = Int(bounds[0]), let high = Int(bounds[1]) else {
                throw GridError.invalidArgument("--local-agents \(local) is not MIN..MAX (e.g. 1..4)")
            }
            configuration.minimum = low
            configuration.maximum = high
        } else {
            if let minimum { configuration.minimum = minimum }
            if let maximum { configuration.maximum = maximum }
        }
        try configuration.validate()
        let seconds = try scaleInterval ?? environment.seconds("HTC_SCALE_INTERVAL") ?? 5
        guard seconds > 0 else { throw GridError.invalidArgument("--scale-interval must be positive") }
        return ScalingSettings(configuration: configuration, interval: Duration(timeInterval: seconds), local: local != nil, deployment: deployment)
    }
}
