import Foundation
import GridKernel
import GridPlugins
import Testing
import Yams

@testable import HTCCore
@testable import HTCServer

/// The deployment artifacts (docker-compose.yml, the Kustomize overlays) run our binaries: every command
/// they run must parse with the real commands' options, every HTC_* variable they set must be one the
/// receiving binary reads, and the settings must be valid together (agents get more time to stop than
/// they take to drain). No Docker engine or cluster is needed: the files are read, and the overlays are
/// rendered with `kubectl kustomize` (scripts/install-deps.sh installs kubectl).
@Suite struct DeploymentArtifactTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// One container or service that runs one of our binaries.
    struct Invocation: CustomStringConvertible {
        var origin: String
        var arguments: [String]
        var environment: [String: String]
        /// Seconds between SIGTERM and SIGKILL, where the file sets it.
        var gracePeriod: Double?
        /// The pod's service account and its workload's replicas (Kubernetes only).
        var serviceAccount: String? = nil
        var replicas: Int? = nil
        var workload: String? = nil

        var binary: String { arguments.first ?? "" }
        var description: String { "\(origin): \(arguments.joined(separator: " "))" }
    }

    // MARK: docker-compose.yml

    @Test func composeCommandsParseAndUseVariablesTheBinariesRead() async throws {
        let text = try String(contentsOf: Self.root.appendingPathComponent("docker-compose.yml"), encoding: .utf8)
        let compose = try #require(try Yams.load(yaml: text) as? [String: Any])
        let services = try #require(compose["services"] as? [String: Any])
        var invocations: [Invocation] = []
        for (name, value) in services {
            let service = try #require(value as? [String: Any], "service \(name)")
            guard let image = service["image"] as? String, image.contains("htc-grid") else { continue }
            let command = try #require(service["command"] as? [String], "service \(name) runs our image without a command list")
            var environment: [String: String] = [:]
            for (key, value) in service["environment"] as? [String: Any] ?? [:] {
                environment[key] = Self.interpolated("\(value)")
            }
            let grace = (service["stop_grace_period"] as? String).map(Self.seconds)
            invocations.append(Invocation(origin: "docker-compose.yml service \(name)", arguments: command, environment: environment, gracePeriod: grace ?? 10))
        }
        let binaries = Set(invocations.map(\.binary))
        #expect(binaries.isSuperset(of: ["htc-server", "htc-agent", "htc"]), "compose runs \(binaries.sorted())")
        for invocation in invocations {
            try await check(invocation)
        }
    }

    // MARK: Kubernetes

    /// Every overlay in deployment/kubernetes/overlays.
    static var overlays: [String] {
        let directory = root.appendingPathComponent("deployment/kubernetes/overlays")
        return ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []).sorted()
    }

    @Test func everyOverlayIsChecked() {
        #expect(Set(Self.overlays).isSuperset(of: ["local", "aws", "aws-monitoring", "local-server-scaling"]), "overlays found: \(Self.overlays)")
    }

    @Test(arguments: overlays)
    func kustomizeOverlayCommandsParseAndUseVariablesTheBinariesRead(overlay: String) async throws {
        let directory = Self.root.appendingPathComponent("deployment/kubernetes/overlays/\(overlay)")
        let rendered = try Self.kustomize(directory)
        let objects = try Yams.load_all(yaml: rendered).compactMap { $0 as? [String: Any] }
        var configMaps: [String: [String: String]] = [:]
        for object in objects where object["kind"] as? String == "ConfigMap" {
            let name = try #require((object["metadata"] as? [String: Any])?["name"] as? String)
            configMaps[name] = (object["data"] as? [String: Any] ?? [:]).mapValues { "\($0)" }
        }
        var invocations: [Invocation] = []
        var deployments: Set<String> = []
        var namespaces: Set<String> = []
        var services: Set<String> = []
        for object in objects {
            let metadata = object["metadata"] as? [String: Any] ?? [:]
            if let namespace = metadata["namespace"] as? String { namespaces.insert(namespace) }
            if object["kind"] as? String == "Service", let name = metadata["name"] as? String { services.insert(name) }
            guard let kind = object["kind"] as? String, ["Deployment", "StatefulSet", "Job", "DaemonSet"].contains(kind),
                let name = metadata["name"] as? String,
                let pod = ((object["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any]
            else { continue }
            if kind == "Deployment" { deployments.insert(name) }
            let grace = (pod["terminationGracePeriodSeconds"] as? Int).map(Double.init) ?? 30
            for container in pod["containers"] as? [[String: Any]] ?? [] {
                guard let image = container["image"] as? String, image.contains("htc-grid") else { continue }
                let arguments = (container["command"] as? [String] ?? []) + (container["args"] as? [String] ?? [])
                var environment: [String: String] = [:]
                for source in container["envFrom"] as? [[String: Any]] ?? [] {
                    guard let reference = (source["configMapRef"] as? [String: Any])?["name"] as? String else { continue }
                    let data = try #require(configMaps[reference], "\(kind)/\(name) reads ConfigMap \(reference), which the overlay does not render")
                    environment.merge(data) { _, new in new }
                }
                for variable in container["env"] as? [[String: Any]] ?? [] {
                    let key = try #require(variable["name"] as? String)
                    environment[key] = variable["value"].map { "\($0)" } ?? "from-\(key.lowercased())"
                }
                invocations.append(
                    Invocation(
                        origin: "overlays/\(overlay) \(kind)/\(name)", arguments: arguments, environment: environment, gracePeriod: grace,
                        serviceAccount: pod["serviceAccountName"] as? String ?? "default",
                        replicas: (object["spec"] as? [String: Any])?["replicas"] as? Int ?? 1, workload: name
                    )
                )
            }
        }
        let binaries = Set(invocations.map(\.binary))
        #expect(binaries.isSuperset(of: ["htc-server", "htc-agent"]), "overlays/\(overlay) runs \(binaries.sorted())")
        for invocation in invocations {
            try await check(invocation)
        }

        // KEDA scales the agent Deployment and reads the server through its Service in this namespace.
        for object in objects where object["kind"] as? String == "ScaledObject" {
            let spec = try #require(object["spec"] as? [String: Any])
            let target = try #require((spec["scaleTargetRef"] as? [String: Any])?["name"] as? String)
            #expect(deployments.contains(target), "ScaledObject scales \(target), not a Deployment of overlays/\(overlay)")
            for trigger in spec["triggers"] as? [[String: Any]] ?? [] where trigger["type"] as? String == "metrics-api" {
                let metadata = try #require(trigger["metadata"] as? [String: Any])
                let address = try #require(metadata["url"] as? String)
                let url = try #require(URL(string: address))
                let host = (url.host ?? "").split(separator: ".").map(String.init)
                #expect(host.count >= 2 && services.contains(host[0]) && namespaces == [host[1]], "KEDA reads \(url), not htc-server in \(namespaces.sorted())")
                #expect(url.path == "/v1/scaling" && metadata["valueLocation"] as? String == "desired_agents")
            }
        }
        // Exactly one of KEDA and htc-server scales each agent Deployment.
        let scaledByServer = try checkServerDrivenScaling(overlay: overlay, objects: objects, invocations: invocations)
        let scaledByKEDA = Set(objects.filter { $0["kind"] as? String == "ScaledObject" }.compactMap {
            (($0["spec"] as? [String: Any])?["scaleTargetRef"] as? [String: Any])?["name"] as? String
        })
        for agent in Set(invocations.filter { $0.binary == "htc-agent" }.compactMap(\.workload)) {
            #expect(scaledByKEDA.contains(agent) != scaledByServer.contains(agent), "overlays/\(overlay): \(agent) must be scaled by KEDA or by htc-server, once")
        }
    }

    /// `htc-server --scale-deployment NAME` (HTC_SCALE_DEPLOYMENT): the Deployment is in the overlay, KEDA
    /// does not scale it too, a Role bound to the server's service account allows `get` and `patch` on
    /// its `deployments/scale`, and one server replica sets it (each replica has its own cool-down).
    /// Returns the Deployments the servers scale.
    func checkServerDrivenScaling(overlay: String, objects: [[String: Any]], invocations: [Invocation]) throws -> Set<String> {
        func metadata(_ object: [String: Any]) -> [String: Any] { object["metadata"] as? [String: Any] ?? [:] }
        func all(_ kind: String) -> [[String: Any]] { objects.filter { $0["kind"] as? String == kind } }
        let deployments = Set(all("Deployment").compactMap { metadata($0)["name"] as? String })
        var targets: Set<String> = []
        for invocation in invocations where invocation.binary == "htc-server" {
            let command = try ServerCommand.parse(Array(invocation.arguments.dropFirst()))
            guard let target = try command.scalingSettings(Environment(invocation.environment)).deployment else { continue }
            targets.insert(target)
            #expect(deployments.contains(target), "\(invocation) scales Deployment \(target), which overlays/\(overlay) does not have")
            #expect(invocation.replicas == 1, "\(invocation): \(invocation.replicas ?? 0) replicas would each set \(target)'s replicas")
            let account = try #require(invocation.serviceAccount)
            let roles = all("RoleBinding").filter { binding in
                (binding["subjects"] as? [[String: Any]] ?? []).contains { $0["kind"] as? String == "ServiceAccount" && $0["name"] as? String == account }
            }.compactMap { ($0["roleRef"] as? [String: Any])?["name"] as? String }
            let allowed = all("Role").filter { roles.contains(metadata($0)["name"] as? String ?? "") }.contains { role in
                (role["rules"] as? [[String: Any]] ?? []).contains { rule in
                    let names = rule["resourceNames"] as? [String]
                    return (rule["apiGroups"] as? [String] ?? []).contains("apps")
                        && (rule["resources"] as? [String] ?? []).contains("deployments/scale")
                        && Set(rule["verbs"] as? [String] ?? []).isSuperset(of: ["get", "patch"])
                        && (names == nil || names?.contains(target) == true)
                }
            }
            #expect(allowed, "overlays/\(overlay): no Role bound to service account \(account) allows get and patch on deployments/scale \(target)")
        }
        return targets
    }

    // MARK: Grafana

    @Test func dashboardQueriesOnlyExportedMetricsAndShowsTheKernels() throws {
        let data = try Data(contentsOf: Self.root.appendingPathComponent("deployment/grafana-dashboard.json"))
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        let expressions = panels.flatMap { ($0["targets"] as? [[String: Any]] ?? []).compactMap { $0["expr"] as? String } }
        #expect(expressions.count >= 8)
        // The kernel's counters come from htc-server (its client and reaper) and from the agents
        // (htc-agent --metrics-listen); the rest from htc-server alone.
        let kernel: Set<String> = [
            GridMetricName.tasksSubmitted, GridMetricName.taskOutcomes, GridMetricName.leaseExpiries, GridMetricName.retries,
            GridMetricName.deadLettered,
        ]
        let exported: Set<String> = kernel.union([
            ServerMetricName.sessionsCreated, ServerMetricName.sessionsCancelled, ServerMetricName.tasksSubmitted,
            ServerMetricName.submitDuration, ServerMetricName.resultsReturned, ServerMetricName.longPolls, ServerMetricName.queueDepth,
            ServerMetricName.tasks, ServerMetricName.tasksSessions, ServerMetricName.desiredAgents, ServerMetricName.runningAgents,
        ])
        let queried = Set(expressions.flatMap { $0.matches(of: /\b(htc_[a-z_]+)/).map { String($0.output.1) } })
        for name in kernel.union([ServerMetricName.tasks, ServerMetricName.desiredAgents, ServerMetricName.runningAgents]) {
            #expect(queried.contains(name), "the dashboard has no panel for \(name)")
        }
        for expression in expressions {
            for match in expression.matches(of: /\b(htc_[a-z_]+)/) {
                var name = String(match.output.1)
                for suffix in ["_bucket", "_count", "_sum"] where name.hasSuffix(suffix) && !exported.contains(name) {
                    name.removeLast(suffix.count)
                }
                #expect(exported.contains(name), "the dashboard queries \(name), which neither htc-server nor htc-agent exports")
            }
        }
    }

    // MARK: The checks

    /// Parses the command with the real binary's options and resolves its settings from `environment`.
    func check(_ invocation: Invocation) async throws {
        let arguments = Array(invocation.arguments.dropFirst())
        let unread = try Set(invocation.environment.keys.filter { $0.hasPrefix("HTC_") }).subtracting(Self.variablesRead(by: invocation.binary))
        #expect(unread.isEmpty, "\(invocation) sets \(unread.sorted()), which \(invocation.binary) does not read")
        let environment = Environment(invocation.environment)
        switch invocation.binary {
        case "htc-agent":
            let command = try AgentCommand.parse(arguments)
            let settings = try command.agentConfiguration(environment)
            let drain = Double(settings.agent.drainTimeout.components.seconds)
            let grace = try #require(invocation.gracePeriod)
            #expect(grace > drain, "\(invocation): \(grace) s to stop is not more than the \(drain) s drain timeout")
            try checkBackends(command.grid.urls(environment), invocation)
        case "htc-server":
            let command = try ServerCommand.parse(arguments)
            // The key file is mounted at run time; a stand-in checks that the settings are accepted.
            var values = invocation.environment
            let keys = FileManager.default.temporaryDirectory.appendingPathComponent("htc-keys-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: keys) }
            if values["HTC_API_KEYS"] != nil {
                try "dev:stand-in-key\n".write(to: keys, atomically: true, encoding: .utf8)
                values["HTC_API_KEYS"] = keys.path
            }
            let settings = try await command.settings(Environment(values))
            #expect(settings.authName != "none", "\(invocation) serves without authentication")
            try checkBackends(command.grid.urls(environment), invocation)
        case "htc":
            if arguments.first == "aws", !HTCCommand.configuration.subcommands.contains(where: { $0.configuration.commandName == "aws" }) {
                // `htc aws init` is written on branch aws; once merged, this command is parsed like the others.
                print("DeploymentArtifactTests: skipped \(invocation): this build of htc has no `aws` subcommand yet")
                return
            }
            _ = try HTCCommand.parseAsRoot(arguments)
        default:
            Issue.record("\(invocation) runs \(invocation.binary), which is not htc, htc-agent or htc-server")
        }
    }

    /// The backend URLs resolve, and name schemes this build has a plugin for (the AWS schemes once merged).
    func checkBackends(_ urls: GridURLs, _ invocation: Invocation) throws {
        let resolved = try urls.resolved()
        for url in [resolved.queue, resolved.state, resolved.payload] {
            if ["sqs", "dynamodb", "s3"].contains(url.scheme), !BackendRegistry.installed.schemes.contains(url.scheme) {
                print("DeploymentArtifactTests: \(invocation): \(url.scheme):// has no plugin in this build yet (the AWS backends)")
                continue
            }
            #expect(BackendRegistry.installed.schemes.contains(url.scheme), "\(invocation): no backend for \(url)")
        }
    }

    /// The HTC_* variables a binary reads, from the sources of its options (`environment.string("HTC_…")`,
    /// `.int(…)`, `.seconds(…)`).
    static func variablesRead(by binary: String) throws -> Set<String> {
        let files: [String]
        switch binary {
        case "htc-agent":
            files = ["Sources/HTCCore/GridOptions.swift", "Sources/HTCCore/AgentCommand.swift", "Sources/HTCCore/PodDeletionCost.swift", "Sources/HTCCore/KubernetesAPI.swift"]
        case "htc-server":
            files = [
                "Sources/HTCCore/GridOptions.swift", "Sources/HTCServer/ServerCommand.swift", "Sources/HTCCore/KubernetesDeploymentScaler.swift",
                "Sources/HTCCore/KubernetesAPI.swift",
            ]
        default:
            let directory = root.appendingPathComponent("Sources/HTCCore")
            files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".swift") }.map { "Sources/HTCCore/\($0)" }
        }
        var names: Set<String> = []
        for file in files {
            let text = try String(contentsOf: root.appendingPathComponent(file), encoding: .utf8)
            for match in text.matches(of: /\.(?:string|int|seconds)\("(HTC_[A-Z0-9_]+)"\)/) {
                names.insert(String(match.output.1))
            }
        }
        return names
    }

    /// `${NAME:-default}` replaced by its default, as compose does when NAME is unset.
    static func interpolated(_ value: String) -> String {
        value.replacing(/\$\{[A-Z0-9_]+:-([^}]*)\}/) { String($0.output.1) }
    }

    /// A compose duration (`40s`, `1m30s`) in seconds.
    static func seconds(_ text: String) -> Double {
        var total = 0.0
        for match in text.matches(of: /(\d+(?:\.\d+)?)(ms|h|m|s)/) {
            let value = Double(match.output.1) ?? 0
            switch match.output.2 {
            case "h": total += value * 3600
            case "m": total += value * 60
            case "ms": total += value / 1000
            default: total += value
            }
        }
        return total
    }

    /// `kubectl kustomize DIRECTORY`.
    static func kustomize(_ directory: URL) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["kubectl", "kustomize", directory.path]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw GridError.invalidArgument(
                "kubectl kustomize \(directory.path) exited with \(process.terminationStatus); is kubectl installed (scripts/install-deps.sh)?")
        }
        return String(decoding: data, as: UTF8.self)
    }
}
